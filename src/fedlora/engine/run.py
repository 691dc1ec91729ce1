"""The in-process federation: one base model, many simulated clients, rounds read top to bottom.

``Engine(cfg, run_dir).run()`` builds the data, plans, strategy and local trainer, evaluates the
global adapter before training (round 0), then each round: samples clients (seeded by
``(seed, round)``), ``strategy.configure``, trains every sampled client with its own seed
``(seed, round, client)`` (a client that raises is logged and skipped; the round goes on),
``strategy.aggregate`` (rejected updates are logged), evaluates every ``eval_every`` rounds and
checkpoints every ``checkpoint_every`` rounds. ``run(resume=True)`` continues from the checkpoint
exactly: all per-round randomness is derived, never carried.
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from fedlora.errors import RunError  # re-exported: defined without heavy imports for the CLI
from fedlora.config import Config, config_to_dict, dumps_toml
from fedlora.engine import build
from fedlora.engine.asynchronous import AsyncState, InFlight, rebase_update, staleness_weight
from fedlora.engine.clock import ClientWork, client_clocks, schedule_round
from fedlora.engine.checkpoint import (CheckpointError, config_differences, load_checkpoint, remove_stale_temp_files,
                                      rng_state, save_checkpoint, set_rng_state)
from fedlora.engine.lock import RunFolderLocked, RunLock
from fedlora.engine.evaluation import evaluation_adapters, mean_over_models
from fedlora.engine.preflight import preflight, preflight_data_and_output
from fedlora.strategies.guard import guarded_aggregate
from fedlora.engine.data import FederatedData, build_data
from fedlora.engine.metrics_log import METRICS_FILE, MetricsLog
from fedlora.engine.plans import Planner, client_speeds, memory_model_kwargs
from fedlora.engine.progress import Progress
from fedlora.engine.sampling import client_seed, clients_per_round, sample_clients

__all__ = ["RunError", "RunResult", "Engine", "run_dir_for", "adapter_bytes", "payload_bytes", "update_bytes",
           "evaluation_adapters", "mean_over_models"]

CONFIG_FILE = "config.toml"
SUMMARY_FILE = "summary.json"
ERRORS_FILE = "client_errors.log"


@dataclass
class RunResult:
    """Outcome of :meth:`Engine.run`: the run folder, the records, the strategy, the last completed round."""

    run_dir: Path
    records: list[dict]
    strategy: Any
    completed_rounds: int
    summary: dict = field(default_factory=dict)


def run_dir_for(cfg: Config, out: str | Path | None = None) -> Path:
    """``out`` when given, else ``run.out_dir / run.name``."""
    return Path(out) if out is not None else Path(cfg.run.out_dir) / cfg.run.name


def adapter_bytes(adapter: Mapping[str, Any] | None) -> int:
    """Bytes of the factor tensors of an adapter (what travels on the wire, without framing)."""
    if not adapter:
        return 0
    return sum(t.numel() * t.element_size() for f in adapter.values() for t in (f.A, f.B))


def payload_bytes(payload: Any) -> int:
    """Bytes a client downloads: its starting factors plus any frozen base delta (FLoRA)."""
    return adapter_bytes(payload.init) + adapter_bytes(payload.base_delta)


def planned_upload_bytes(payload: Any, shapes: Mapping[str, tuple[int, int]], bytes_per_value: int = 4) -> int:
    """Bytes a client will upload per its plan: the trained factors of its trainable modules (fp32)."""
    plan, total = payload.plan, 0
    for m in plan.trainable_modules:
        d_out, d_in = shapes[m]
        r = int(plan.ranks[m])
        total += (r * d_in if payload.train_A else 0) + (d_out * r if payload.train_B else 0)
    return total * bytes_per_value


def update_bytes(update: Any, payload: Any) -> int:
    """Bytes a client uploads: the factors it trained (FFA-LoRA's frozen ``A`` stays home)."""
    parts = [name for name, trained in (("A", payload.train_A), ("B", payload.train_B)) if trained]
    return sum(getattr(f, p).numel() * getattr(f, p).element_size() for f in update.factors.values() for p in parts)


def _error_summary(err: BaseException) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
    return f"{type(err).__name__}: {err}{where}"


def _set_threads(n: int) -> int:
    """Set torch's CPU threads to ``n``; returns the previous count."""
    import torch

    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    return before


def first_per_task(examples: list, limit: int) -> list:
    """The first ``limit`` examples of each task (all when ``limit`` is 0), order kept."""
    if not limit:
        return examples
    counts: dict[str, int] = {}
    kept = []
    for ex in examples:
        counts[ex.task] = counts.get(ex.task, 0) + 1
        if counts[ex.task] <= limit:
            kept.append(ex)
    return kept


def _due(server_round: int, every: int, last: int) -> bool:
    return server_round == last or (every > 0 and server_round % every == 0)


class Engine:
    """One run of a config in one process.

    Args:
        cfg: the validated config. run_dir: where the run's files go (default ``run_dir_for(cfg)``).
        model_and_tokenizer: an already loaded ``(model, tokenizer)`` to use instead of ``[model]``.
        progress: a :class:`~fedlora.engine.progress.Progress` (default: silent).
    """

    def __init__(self, cfg: Config, run_dir: str | Path | None = None, *, model_and_tokenizer: tuple | None = None,
                 progress: Progress | None = None) -> None:  # fmt: skip
        self.cfg = cfg
        self.run_dir = run_dir_for(cfg) if run_dir is None else Path(run_dir)
        self.progress = progress or Progress()
        self._model_and_tokenizer = model_and_tokenizer
        self.data: FederatedData | None = None
        self.log: MetricsLog | None = None  # opened by run()
        self._pending_warnings: list[dict] = []  # warnings before the log is open (a checkpoint fallback)

    # ------------------------------------------------------------------ setup

    def check(self) -> None:
        """Errors before work (:mod:`fedlora.engine.preflight`): model, data paths and run folder, in one message."""
        if getattr(self, "_checked", False):
            return
        self._checked = True
        if self._model_and_tokenizer is not None or self.data is not None:
            problems = preflight_data_and_output(self.cfg, self.run_dir)
        else:
            problems = preflight(self.cfg, self.run_dir)
        if problems:
            raise RunError("cannot start: " + "; ".join(problems))

    def setup(self) -> None:
        """Build data, model, spec, planner, strategy and trainer (idempotent)."""
        if self.data is not None:
            return
        self.check()
        from fedlora.client.trainer import LocalTrainer

        t0 = time.perf_counter()
        threads, why = build.choose_threads(self.cfg.run.threads)
        self._threads_before = _set_threads(threads)
        try:
            data = build_data(self.cfg)
        except ValueError as err:
            raise RunError(f"[data]: {err}") from err
        self.model, self.tokenizer = self._model_and_tokenizer or build.load_base_model(self.cfg.model)
        try:
            self.spec = build.build_spec(self.model, self.cfg.model)
            self.planner = Planner(self.cfg, self.spec, data.client_ids)
            self.strategy = build.build_strategy(self.cfg, self.spec)
        except ValueError as err:
            raise RunError(f"cannot build the federation: {err}") from err
        self.data = data
        self.trainer = LocalTrainer(self.model, self.tokenizer, build.build_train_config(self.cfg))
        self.per_round = clients_per_round(self.cfg.clients.clients_per_round, len(self.data.client_ids))
        self.clocks = client_clocks(self.data.client_ids, client_speeds(self.cfg), self.cfg.clients.link_mb_per_s)
        self.async_state = AsyncState() if self.cfg.run.mode == "async" else None
        self.buffer_size = self.cfg.run.buffer_size or max(1, self.per_round // 2)
        attach = getattr(self.strategy, "attach_client_store", None)  # personalised methods keep per-client state on disk
        if attach is not None:
            attach(self.run_dir / "client_state", keep=self.cfg.run.keep_checkpoints * self.cfg.run.checkpoint_every + 1)
        self.shapes = {m.name: (m.d_out, m.d_in) for m in self.spec.modules}
        self._other_bases: dict[str, Any] = {}  # precision -> LocalTrainer over that base, loaded on first use
        self._memory_models: dict[str, Any] = {}  # precision -> MemoryModel of a client's step, built once
        self.progress.message(f"model {self.cfg.model.name}: {self.spec.num_parameters / 1e6:.1f}M parameters, "
                              f"{len(self.spec.modules)} LoRA modules; set up in {time.perf_counter() - t0:.1f} s; "
                              f"{threads} CPU threads ({why})")  # fmt: skip
        self.progress.message(f"data: {self.data.describe()}")
        self.progress.message(f"strategy {self.cfg.strategy.name}, allocation {self.planner.allocation}, client ranks "
                              f"{self.planner.ranks if self.planner.allocation != 'fedpilot' else 'by memory budget'}")  # fmt: skip

    def _prepare(self, resume: bool) -> dict | None:
        try:
            ckpt = load_checkpoint(self.run_dir, warn=self.warn)
        except CheckpointError as err:
            raise RunError(str(err)) from None
        history = self.run_dir / METRICS_FILE
        if ckpt is None and history.is_file() and history.stat().st_size > 0:
            raise RunError(f"{self.run_dir} holds a metrics history ({history}) but no checkpoint to continue from; a new run "
                           "would overwrite it. Choose another run.name or --out DIR, or move the folder away")  # fmt: skip
        if resume and ckpt is None:
            raise RunError(f"--resume: {self.run_dir} holds no checkpoint ({self.run_dir / 'checkpoint.pt'}); "
                           "run without --resume to start it, or point --out at the run folder to continue")  # fmt: skip
        if not resume and ckpt is not None:
            raise RunError(f"{self.run_dir} already holds a run (checkpoint after round {ckpt['round']}); pass --resume to "
                           "continue it, or choose another run.name or --out DIR for a new run")  # fmt: skip
        if ckpt is not None:
            diffs = config_differences(ckpt["config"], config_to_dict(self.cfg))
            if diffs:
                raise RunError(f"the config differs from the one that wrote {self.run_dir}'s checkpoint: " + "; ".join(diffs)
                               + f". Resume with the run's own config ({self.run_dir / CONFIG_FILE}) or start a new run")  # fmt: skip
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / CONFIG_FILE).write_text(dumps_toml(config_to_dict(self.cfg)), encoding="utf-8")
        return ckpt

    def _attach_trackers(self) -> list:
        """The ``run.log_to`` trackers (:mod:`fedlora.engine.tracking`), fed every record appended to the metrics log;
        a tracker new to this run folder first receives the records written before it (a run resumed with it)."""
        if not self.cfg.run.log_to:
            return []
        from fedlora.engine.tracking import make_trackers

        fresh = {name: not (self.run_dir / "tracking" / name).exists() for name in self.cfg.run.log_to}
        config = config_to_dict(self.cfg)
        try:
            trackers = make_trackers(self.cfg.run.log_to, self.run_dir, config, dumps_toml(config), self.cfg.run.name)
        except ValueError as err:
            raise RunError(str(err)) from None
        for name, tracker in zip(self.cfg.run.log_to, trackers):
            if fresh[name]:
                for record in self.log.records:
                    tracker.log(record)
            self.log.listeners.append(tracker.log)
        return trackers

    def warn(self, text: str, server_round: int | None = None) -> None:
        """A warning: on standard error whatever the progress (``--quiet`` too), and a ``warning`` record in
        ``metrics.jsonl`` (kept until the log is open when it comes before, as a checkpoint fallback does)."""
        self.progress.warning(text)
        record = {"type": "warning", "round": server_round, "text": text}
        if getattr(self, "log", None) is None:
            self._pending_warnings.append(record)
        else:
            self.log.append(record)

    def _restore(self, ckpt: dict | None) -> int:
        """Load a checkpoint's state (or start fresh); the first round to run."""
        self.log = MetricsLog(self.run_dir / METRICS_FILE, ckpt["records"] if ckpt else ())
        for record in self._pending_warnings:
            self.log.append(record)
        self._pending_warnings.clear()
        self._elapsed_before = float(ckpt["elapsed"]) if ckpt else 0.0
        if ckpt is None:
            return 1
        self.strategy.load_state_dict(ckpt["strategy"])
        self.planner.load_state_dict(ckpt["planner"])
        if self.async_state is not None:
            self.async_state = AsyncState.from_state(ckpt["async"])
        set_rng_state(ckpt["rng"])
        self.progress.message(f"resuming {self.run_dir} after round {ckpt['round']}")
        return int(ckpt["round"]) + 1

    # ------------------------------------------------------------------ the run

    def run(self, *, resume: bool = False, stop_after: int | None = None) -> RunResult:
        """Run (or resume) every round; ``stop_after=k`` stops after round ``k`` as if killed there
        (``stop_after=0``: evaluate the untrained base model only). The run folder is locked meanwhile."""
        self.check()
        if resume and not self.run_dir.is_dir():
            raise RunError(f"--resume: {self.run_dir} does not exist, so there is no run to continue; run without --resume "
                           "to start it, or point --out at the folder of the run to continue")  # fmt: skip
        lock = RunLock(self.run_dir)
        try:
            lock.acquire()
        except RunFolderLocked as err:
            raise RunError(str(err)) from None
        try:
            return self._run_locked(resume, stop_after)
        finally:
            lock.release()

    def _run_locked(self, resume: bool, stop_after: int | None) -> RunResult:
        remove_stale_temp_files(self.run_dir)
        ckpt = self._prepare(resume)
        self.setup()
        first = self._restore(ckpt)
        trackers = self._attach_trackers()
        self._started = time.perf_counter()
        rounds = self.cfg.run.rounds
        if self.planner.needs_importance:
            self.progress.message("fed-pilot: scoring module importance on each client's data")
            self.planner.score_clients(self.model, self.tokenizer, self.data.clients)
        steps = (self.per_round if self.async_state is None else self.buffer_size) * self.cfg.train.local_steps
        in_flight = 0 if self.async_state is None else self.per_round * self.cfg.train.local_steps  # async: the first dispatches
        evaluations = sum(1 for r in range(first, rounds + 1) if _due(r, self.cfg.run.eval_every, rounds) or r > rounds - self.cfg.run.eval_last)
        evaluations += int(first == 1 and (self.cfg.eval.at_start or stop_after == 0))
        self.progress.start(rounds * steps + in_flight, (first - 1) * steps + (in_flight if first > 1 else 0), rounds,
                            evaluations=evaluations)  # fmt: skip
        last = first - 1
        try:
            if first == 1 and (self.cfg.eval.at_start or stop_after == 0):
                self._evaluate(0)
            for server_round in range(first, rounds + 1 if stop_after != 0 else first):
                self._async_round(server_round) if self.async_state is not None else self._round(server_round)
                if _due(server_round, self.cfg.run.eval_every, rounds) or server_round > rounds - self.cfg.run.eval_last:
                    self._evaluate(server_round)
                if _due(server_round, self.cfg.run.checkpoint_every, rounds):
                    self._checkpoint(server_round)
                last = server_round
                if stop_after is not None and server_round >= stop_after:
                    break
        finally:
            self.progress.close()
            for tracker in trackers:
                tracker.close()
            _set_threads(self._threads_before)  # the caller's setting comes back (library use, notebooks)
        return self._finish(last)

    def _round(self, server_round: int) -> None:
        started = time.perf_counter()
        ids = sample_clients(self.data.client_ids, server_round, self.per_round, self.cfg.run.seed)
        self.progress.round_start(server_round, ids)
        plans = self.planner.plans(server_round, ids, self.strategy)
        payloads = self.strategy.configure(server_round, [plans[c] for c in ids])
        moved = {c: payload_bytes(payloads[c]) + planned_upload_bytes(payloads[c], self.shapes) for c in ids}
        work, sim_seconds = schedule_round({c: self.clocks[c] for c in ids}, self.trainer.config.local_steps, moved,
                                           self.cfg.run.deadline, self.cfg.run.stragglers)  # fmt: skip
        trained = self._train_lockstep(server_round, ids, payloads, work) if self.cfg.train.lockstep else {}
        records, updates = [], []
        for cid in ids:
            record, update = trained.get(cid) or self._train_client(server_round, cid, payloads[cid], work[cid])
            records.append(record)
            if update is not None:
                updates.append(update)
        result = guarded_aggregate(self.strategy, server_round, updates, norm_bound=self.cfg.strategy.norm_bound) if updates else None
        rejected = dict(result.rejected) if result else {}
        for record in records:
            if record["client"] in rejected:
                record.update(status="rejected", error=rejected[record["client"]])
            self.log.append(record)
        self._log_round(server_round, records, result, time.perf_counter() - started, sim_seconds)

    def _clock(self) -> float:
        last = next((r for r in reversed(self.log.records) if r.get("type") == "round"), None)
        return float((last or {}).get("sim_clock", 0.0))

    def _async_round(self, version: int) -> None:
        """Collect ``buffer_size`` arrivals on the simulated clock, then aggregate them (global version ``version``)."""
        started, st, before = time.perf_counter(), self.async_state, self._clock()
        now = before
        self._dispatch(version, now, exclude=set())
        self.progress.round_start(version, sorted(f.client_id for f in st.in_flight))  # the clients in flight
        arrived = []
        while len(arrived) < self.buffer_size and st.in_flight:
            flight = st.pop_next()
            now = flight.arrival
            arrived.append(flight)
            self._dispatch(version, now, exclude={f.client_id for f in arrived})
        ok = [f for f in arrived if f.update is not None]
        result = None
        if ok:
            now_payloads = self.strategy.configure(version, [f.payload.plan for f in ok])
            rebased = [rebase_update(f.update, f.payload, now_payloads[f.client_id],
                                     staleness_weight(version - 1 - f.version, self.cfg.run.staleness_exponent)) for f in ok]  # fmt: skip
            result = guarded_aggregate(self.strategy, version, rebased, norm_bound=self.cfg.strategy.norm_bound)
        rejected = dict(result.rejected) if result else {}
        records = []
        for f in arrived:
            record = f.record | {"round": version, "dispatched_version": f.version, "staleness": version - 1 - f.version,
                                 "sim_arrival": f.arrival}  # fmt: skip
            if f.client_id in rejected:
                record.update(status="rejected", error=rejected[f.client_id])
            records.append(self.log.append(record))
        self._log_round(version, records, result, time.perf_counter() - started, now - before)

    def _dispatch(self, version: int, now: float, exclude: set[str]) -> None:
        """Keep ``clients_per_round`` clients in flight: each idle pick is sent the current global adapter and
        trains now; its update arrives after its simulated time."""
        st = self.async_state
        while len(st.in_flight) < self.per_round:
            number = st.dispatched
            cid = st.pick(self.data.client_ids, st.busy() | exclude, self.cfg.run.seed)
            if cid is None:
                return
            plan = self.planner.plans(version, [cid], self.strategy)[cid]
            payload = self.strategy.configure(version, [plan])[cid]
            clock = self.clocks[cid]
            steps = self.trainer.config.local_steps
            seconds = clock.seconds(steps, payload_bytes(payload) + planned_upload_bytes(payload, self.shapes))
            record, update = self._train_client(version, cid, payload, ClientWork(steps, seconds, False), seed_round=f"async-{number}")
            st.in_flight.append(InFlight(now + seconds, cid, version - 1, payload, update, record))

    def _precision(self, cid: str) -> str:
        """The client's base precision (``clients.quantization`` or the Fed-pilot plan's; else ``model.quantization``)."""
        return (getattr(self.planner, "precisions", None) or {}).get(cid, self.cfg.model.quantization)

    def _trainer_for(self, cid: str) -> Any:
        """The trainer over the client's base: the run's own, or one more base loaded once per other precision."""
        precision = self._precision(cid)
        if precision == self.cfg.model.quantization:
            return self.trainer
        if precision not in self._other_bases:
            from dataclasses import replace

            from fedlora.client.trainer import LocalTrainer

            self.progress.message(f"loading the base at precision {precision!r} for the clients that train over it")
            model, tokenizer = build.load_base_model(replace(self.cfg.model, quantization=precision))
            self._other_bases[precision] = LocalTrainer(model, tokenizer, build.build_train_config(self.cfg))
        return self._other_bases[precision]

    def _memory_model(self, precision: str) -> Any:
        if precision not in self._memory_models:
            from fedlora.allocation.memory import MemoryModel

            self._memory_models[precision] = MemoryModel(self.spec, **{**memory_model_kwargs(self.cfg, self.spec), "quantization": precision})
        return self._memory_models[precision]

    def _client_record(self, server_round: int, cid: str, payload: Any, work: Any) -> dict:
        plan, precision = payload.plan, self._precision(cid)
        trained = {m: r for m, r in plan.ranks.items() if m in plan.trainable_modules}
        frozen = {m: r for m, r in plan.ranks.items() if m not in trained}
        memory = self._memory_model(precision)
        return {"type": "client", "round": server_round, "client": cid, "rank": max(plan.ranks.values()),
                "trained_modules": len(plan.trainable_modules), "num_examples": len(self.data.clients[cid]),
                "bytes_down": payload_bytes(payload), "bytes_up": 0, "sim_seconds": work.seconds,
                "speed": self.clocks[cid].speed, "quantization": precision,
                "predicted_peak_bytes": memory.peak_bytes(trained, frozen=frozen)}  # fmt: skip

    def _train_lockstep(self, server_round: int, ids: Sequence[str], payloads: Mapping[str, Any], work: Mapping[str, Any]) -> dict[str, tuple[dict, Any]]:
        """``train.lockstep``: clients with the same number of steps train together (:mod:`fedlora.client.lockstep`).
        Groups it cannot cover, or that fail, are left to sequential training (returned empty), with a message."""
        from fedlora.client.lockstep import lockstep_unsupported

        groups: dict[int, list[str]] = {}
        for cid in ids:  # a client over another base precision trains sequentially, on its own base
            if work[cid].steps > 0 and self._precision(cid) == self.cfg.model.quantization:
                groups.setdefault(work[cid].steps, []).append(cid)
        out: dict[str, tuple[dict, Any]] = {}
        for steps, group in groups.items():
            reason = lockstep_unsupported(self.trainer, [payloads[c] for c in group])
            if reason:
                self.progress.message(f"round {server_round}: {len(group)} clients train sequentially ({reason})")
                continue
            records = {c: self._client_record(server_round, c, payloads[c], work[c]) | {"lockstep": True} for c in group}
            for c in group:
                self.progress.client_start(server_round, c, records[c]["rank"], steps)
            jobs = [(payloads[c], self.data.clients[c], client_seed(self.cfg.run.seed, server_round, c)) for c in group]
            try:
                updates = self.trainer.train_lockstep(jobs, steps=steps, on_step=self.progress.step)
            except Exception as err:  # the group trains sequentially instead; nothing is lost
                self.warn(f"round {server_round}: lockstep training failed ({_error_summary(err)}); training sequentially")
                continue
            for c, update in zip(group, updates):
                m = update.metrics
                records[c].update(status="ok", loss=m["train_loss"], loss_first=m["train_loss_first"], loss_last=m["train_loss_last"],
                                  steps=int(m["steps"]), seconds=m["seconds"], bytes_up=update_bytes(update, payloads[c]))  # fmt: skip
                if work[c].straggler:
                    records[c]["partial"] = True
                self.progress.client_end(records[c] | {"planned_steps": self.cfg.train.local_steps})
                out[c] = (records[c], update)
        return out

    def _train_client(self, server_round: int, cid: str, payload: Any, work: Any, seed_round: Any = None) -> tuple[dict, Any]:
        examples = self.data.clients[cid]
        record = self._client_record(server_round, cid, payload, work)
        if work.steps == 0:  # a straggler dropped by the deadline: not trained, reported
            record.update(status="straggler", error=f"cannot finish {self.trainer.config.local_steps} steps by the deadline "
                          f"({self.cfg.run.deadline:g} simulated s) at {self.clocks[cid].speed:g} steps/s", bytes_down=0)  # fmt: skip
            self.progress.client_end(record | {"planned_steps": work.steps})
            return record, None
        if work.straggler:
            record["partial"] = True
        self.progress.client_start(server_round, cid, record["rank"], work.steps)
        started = time.perf_counter()
        try:
            trainer = self._trainer_for(cid)
            device = next(trainer.model.parameters()).device
            if device.type == "cuda":  # the measured peak of this client's training, beside the prediction
                import torch

                torch.cuda.reset_peak_memory_stats(device)
            seed = client_seed(self.cfg.run.seed, server_round if seed_round is None else seed_round, cid)
            update = trainer.train(payload, examples, client_seed=seed, on_step=self.progress.step, steps=work.steps)
        except Exception as err:  # a failing client is reported and skipped; the round goes on
            record.update(status="failed", error=_error_summary(err), seconds=time.perf_counter() - started)
            with (self.run_dir / ERRORS_FILE).open("a", encoding="utf-8") as f:
                f.write(f"round {server_round} client {cid}:\n{traceback.format_exc()}\n")
            self.progress.client_end(record | {"planned_steps": self.cfg.train.local_steps})
            return record, None
        m = update.metrics
        record.update(status="ok", loss=m["train_loss"], loss_first=m["train_loss_first"], loss_last=m["train_loss_last"],
                      steps=int(m["steps"]), seconds=m["seconds"], bytes_up=update_bytes(update, payload))  # fmt: skip
        if "trained_modules" in m:  # a client-side rule chose fewer modules than the plan allowed (Fed-HeLLo)
            record["trained_modules"] = int(m["trained_modules"])
        if device.type == "cuda":
            import torch

            record["peak_bytes"] = int(torch.cuda.max_memory_allocated(device))
        self.progress.client_end(record | {"planned_steps": self.cfg.train.local_steps})
        return record, update

    def _log_round(self, server_round: int, records: list[dict], result: Any, seconds: float, sim_seconds: float) -> None:
        ok = [r for r in records if r["status"] == "ok"]
        for r in records:
            if r["status"] in ("failed", "rejected", "straggler"):
                what = {"failed": "failed", "rejected": "update rejected", "straggler": "dropped (straggler)"}[r["status"]]
                self.warn(f"round {server_round}: client {r['client']} {what}: {r.get('error', '')}", server_round)
        previous = next((r for r in reversed(self.log.records) if r.get("type") == "round"), None)
        record = {
            "type": "round", "round": server_round, "clients": [r["client"] for r in records], "accepted": len(ok),
            "failed": {r["client"]: r["error"] for r in records if r["status"] == "failed"},
            "rejected": {r["client"]: r["error"] for r in records if r["status"] == "rejected"},
            "train_loss": sum(r["loss"] for r in ok) / len(ok) if ok else None, "seconds": seconds,
            "bytes_down": sum(r["bytes_down"] for r in records), "bytes_up": sum(r["bytes_up"] for r in records),
            "stragglers": sorted(r["client"] for r in records if r["status"] == "straggler" or r.get("partial")),
            "sim_seconds": sim_seconds, "sim_clock": float((previous or {}).get("sim_clock", 0.0)) + sim_seconds,
        }  # fmt: skip
        if result is not None:
            record.update({(k if k.startswith("privacy/") else f"strategy/{k}"): v for k, v in result.metrics.items()})
        self.progress.round_end(self.log.append(record))

    def _evaluate(self, server_round: int) -> None:
        from fedlora.eval import evaluate

        seen = first_per_task(self.data.eval, self.cfg.eval.seen_per_task)
        wanted = (("eval", seen, self.cfg.eval.seen), ("heldout", self.data.heldout, self.cfg.eval.heldout))
        splits = [(split, examples) for split, examples, on in wanted if on and examples]
        if not splits:
            return
        kwargs = build.eval_kwargs(self.cfg)
        adapters = evaluation_adapters(self.strategy)
        for split, examples in splits:
            self.progress.eval_start(server_round, split, len(examples) * len(adapters))
            started, per_model, done = time.perf_counter(), [], 0
            for adapter in adapters.values():
                with self.trainer.use_adapter(adapter or None) as model:
                    tick = (lambda d, t, base=done: self.progress.eval_advance(base + d, len(examples) * len(adapters)))
                    per_model.append(evaluate(model, self.tokenizer, examples, progress=tick, **kwargs))
                done += len(examples)
            metrics = mean_over_models(per_model)
            record = {"type": "eval", "round": server_round, "split": split, "seconds": time.perf_counter() - started, **metrics}
            self.progress.eval_end(self.log.append(record))
        if self.cfg.eval.seen and seen:
            self._evaluate_personal(server_round, seen, kwargs)

    def _evaluate_personal(self, server_round: int, seen: list, kwargs: dict) -> None:
        """Split ``personal``: each client's personalised model on the eval examples of its own tasks,
        the mean over clients (methods with ``personal_adapters()``, e.g. FedSA-LoRA)."""
        from fedlora.eval import evaluate

        personal = getattr(self.strategy, "personal_adapters", None)
        if personal is None:
            return
        started, per_client, n_examples = time.perf_counter(), [], 0
        self.progress.eval_start(server_round, "personal", len(self.data.client_ids))
        for k, (cid, adapter) in enumerate(personal()):
            tasks = {ex.task for ex in self.data.clients.get(cid, [])}
            own = [ex for ex in seen if ex.task in tasks]
            if not own or not adapter:
                continue
            with self.trainer.use_adapter(adapter) as model:
                per_client.append(evaluate(model, self.tokenizer, own, **kwargs))
            n_examples += len(own)
            self.progress.eval_advance(k + 1, len(self.data.client_ids))
        if per_client:
            metrics = mean_over_models(per_client) | {"n_examples": n_examples, "n_clients": len(per_client)}
            record = {"type": "eval", "round": server_round, "split": "personal", "seconds": time.perf_counter() - started, **metrics}
            self.progress.eval_end(self.log.append(record))

    def _checkpoint(self, server_round: int) -> None:
        save_checkpoint(self.run_dir, keep=self.cfg.run.keep_checkpoints, state={
            "round": server_round, "config": config_to_dict(self.cfg), "strategy": self.strategy.state_dict(),
            "planner": self.planner.state_dict(), "rng": rng_state(), "records": self.log.records,
            "elapsed": self._elapsed_before + time.perf_counter() - self._started, "client_ids": list(self.data.client_ids),
            **({"async": self.async_state.to_state()} if self.async_state is not None else {}),
        })  # fmt: skip

    def _finish(self, last: int) -> RunResult:
        from fedlora.report import related_map, run_summary

        summary = run_summary(self.log.records) | {"seconds": self._elapsed_before + time.perf_counter() - self._started,
                                                   "heldout_related": related_map(self.cfg.data.heldout_related)}  # fmt: skip
        (self.run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2), encoding="utf-8")
        return RunResult(self.run_dir, list(self.log.records), self.strategy, last, summary)
