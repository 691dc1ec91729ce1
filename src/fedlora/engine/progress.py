"""Progress reporting of a run: silent (:class:`Progress`) or live with rich (:class:`RichProgress`).

Warnings are a separate channel: :meth:`Progress.warning` prints to standard error even in the silent
progress (``--quiet``), and the engine also records each one in ``metrics.jsonl`` (``type: warning``).

``RichProgress`` shows an overall bar over every local step of the run (with ETA), a bar for the
current client (step, loss) and one for evaluation, and prints one line per client, evaluation
and round above them; on a non-terminal console only those lines appear.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["Progress", "RichProgress", "format_bytes"]


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} GB"


class Progress:
    """Silent progress: the hooks the engine calls, doing nothing."""

    def start(self, total_steps: int, done_steps: int, rounds: int, *, evaluations: int = 0) -> None: ...
    def round_start(self, server_round: int, clients: list[str]) -> None: ...
    def client_start(self, server_round: int, client_id: str, rank: int, steps: int) -> None: ...
    def step(self, loss: float) -> None: ...
    def client_end(self, record: dict) -> None: ...
    def eval_start(self, server_round: int, split: str, total: int) -> None: ...
    def eval_advance(self, done: int, total: int) -> None: ...
    def eval_end(self, record: dict) -> None: ...
    def round_end(self, record: dict) -> None: ...
    def message(self, text: str) -> None: ...
    def close(self) -> None: ...

    def warning(self, text: str) -> None:
        """Something the user must know (a checkpoint skipped, an update rejected, clients dropped): always
        on standard error, however quiet the progress is."""
        print(f"fedlora: warning: {text}", file=sys.stderr, flush=True)


def _client_line(r: dict) -> str:
    head = f"  {r['client']} rank {r.get('rank', '?'):>3} {r.get('num_examples', 0):>5} ex"
    if r["status"] == "failed":
        return f"{head}  [bold red]FAILED[/] {r.get('error', '')}"
    if r["status"] == "straggler":
        return f"{head}  [yellow]straggler, dropped[/]: {r.get('error', '')}"
    text = (f"{head}  loss {r['loss_first']:.3f} → {r['loss_last']:.3f} (mean {r['loss']:.3f})  "
            f"{r['steps']} steps{' (partial: deadline)' if r.get('partial') else ''}  {r['seconds']:.1f} s  ↓{format_bytes(r['bytes_down'])} ↑{format_bytes(r['bytes_up'])}")  # fmt: skip
    if "predicted_peak_bytes" in r:
        text += f"  mem {format_bytes(r['predicted_peak_bytes'])}" + (f" (measured {format_bytes(r['peak_bytes'])})" if "peak_bytes" in r else " predicted")
        text += f", {r['quantization']} base" if r.get("quantization", "none") != "none" else ""
    return text + (f"  [red]rejected[/] {r.get('error', '')}" if r["status"] == "rejected" else "")


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


class RichProgress(Progress):
    """Live progress bars and log lines on a rich console (``console=None``: stderr)."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as Bars

        if console is None:
            console = Console(stderr=True)
            console = console if console.is_terminal else Console(stderr=True, width=160)  # log files: no wrapping
        self.console = console
        self.bars = Bars(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                         TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.console)  # fmt: skip
        self.rounds, self.total, self.client_task, self.eval_task = 0, None, None, None
        self.round_seconds: list[float] = []  # measured, for the ETA of the rounds left
        self.eval_seconds: dict[int, float] = {}  # evaluation seconds per evaluated round (all splits)
        self.rounds_left, self.evaluations_left = 0, 0

    def start(self, total_steps: int, done_steps: int, rounds: int, *, evaluations: int = 0) -> None:
        """``evaluations``: the evaluations (after a round, or round 0) still to come, for the ETA."""
        self.rounds, self.evaluations_left = rounds, evaluations
        self.rounds_left = round(rounds * (1 - done_steps / total_steps)) if total_steps else 0
        self.bars.start()
        self.total = self.bars.add_task("run", total=total_steps, completed=done_steps, info="")

    def round_start(self, server_round: int, clients: list[str]) -> None:
        self.console.print(f"[bold]round {server_round}/{self.rounds}[/]: {len(clients)} clients")
        self.bars.update(self.total, description=f"round {server_round}/{self.rounds}")

    def client_start(self, server_round: int, client_id: str, rank: int, steps: int) -> None:
        self.client_task = self.bars.add_task(f"  {client_id} (rank {rank})", total=steps, info="")

    def step(self, loss: float) -> None:
        if self.client_task is not None:
            self.bars.update(self.client_task, advance=1, info=f"loss {loss:.3f}")
        self.bars.update(self.total, advance=1)

    def client_end(self, record: dict) -> None:
        if self.client_task is not None:
            done = self.bars.tasks[[t.id for t in self.bars.tasks].index(self.client_task)].completed
            self.bars.update(self.total, advance=max(0, record.get("planned_steps", 0) - done))
            self.bars.remove_task(self.client_task)
            self.client_task = None
        self.console.print(_client_line(record))

    def eval_start(self, server_round: int, split: str, total: int) -> None:
        self.eval_task = self.bars.add_task(f"  eval {split} (round {server_round})", total=total, info="")

    def eval_advance(self, done: int, total: int) -> None:
        if self.eval_task is not None:
            self.bars.update(self.eval_task, completed=done, total=total)

    def eval_end(self, record: dict) -> None:
        if self.eval_task is not None:
            self.bars.remove_task(self.eval_task)
            self.eval_task = None
        from fedlora.eval.format import metric_line

        if record["round"] not in self.eval_seconds:
            self.evaluations_left = max(0, self.evaluations_left - 1)
        self.eval_seconds[record["round"]] = self.eval_seconds.get(record["round"], 0.0) + float(record["seconds"])
        self.console.print(f"  eval {record['split']:<7} round {record['round']}: {metric_line(record)}  ({record['seconds']:.1f} s)")

    def eta_seconds(self) -> float | None:
        """Seconds left: the rounds left at the mean measured round time, plus the evaluations left at the
        mean measured evaluation time (the first round's evaluation is counted once it has been measured)."""
        if not self.round_seconds:
            return None
        mean_eval = sum(self.eval_seconds.values()) / len(self.eval_seconds) if self.eval_seconds else 0.0
        return self.rounds_left * sum(self.round_seconds) / len(self.round_seconds) + self.evaluations_left * mean_eval

    def round_end(self, record: dict) -> None:
        loss = record.get("train_loss")
        self.round_seconds.append(float(record["seconds"]))
        self.rounds_left = max(0, self.rounds_left - 1)
        eta = self.eta_seconds()
        self.console.print(
            f"  round {record['round']} done in {record['seconds']:.1f} s: train loss "
            f"{'-' if loss is None else f'{loss:.4f}'}, accepted {record['accepted']}, failed {len(record['failed'])}, "
            f"rejected {len(record['rejected'])}, ↓{format_bytes(record['bytes_down'])} ↑{format_bytes(record['bytes_up'])}"
            + (f", stragglers {len(record['stragglers'])}" if record.get("stragglers") else "")
            + (f", simulated clock {record['sim_clock']:.1f} s" if record.get("sim_clock") else "")
            + ("" if eta is None else f"; ETA {_duration(eta)} (rounds and evaluations left)")
        )

    def message(self, text: str) -> None:
        self.console.print(text)

    def warning(self, text: str) -> None:
        self.console.print(f"[bold yellow]warning[/]: {text}")

    def close(self) -> None:
        self.bars.stop()
