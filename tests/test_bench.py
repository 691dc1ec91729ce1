"""fedlora bench: grid parsing, baselines, a 2 x 2 x 1 grid on the tiny model that resumes, tables,
plots and communication volume checked against the tensor sizes of the plans."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from fedlora.bench import BenchError, cell_dir, cell_state, load_bench, run_cell, run_grid
from fedlora.bench.baselines import (
    BaselinePlanner,
    drop_small_by_budget,
    drop_small_by_rank,
    full_lora_fits,
    select_last_layers,
    select_random_modules,
)
from fedlora.bench.cli import main as bench_main
from fedlora.bench.cli import write_report
from fedlora.bench.doc import compare, write_results_doc
from fedlora.bench.plots import PLOT_FILES
from fedlora.bench.results import CellRow, collect, estimate_seconds

REPO = Path(__file__).resolve().parents[1]

TINY_BASE = """
[base.run]
rounds = 2
[base.model]
name = "tiny"
[base.data]
tasks = ["rt_sentiment", "headline_source", "word_sentiment"]
heldout_tasks = ["word_sentiment"]
num_clients = 4
max_train_per_task = 4
max_eval_per_task = 2
[base.clients]
rank_levels = [2, 4]
[base.train]
local_steps = 1
batch_size = 2
max_length = 32
[base.eval]
max_new_tokens = 2
max_length = 32
generate = false
"""

RANK_BENCH = """
[bench]
name = "tiny"
seeds = [0]
primary_metric = "heldout/accuracy"
metrics = ["heldout/loss", "eval/loss", "train/loss"]
[bench.claim]
text = "FlexLoRA beats FedIT."
method = "flexlora"
""" + TINY_BASE + """
[methods.flexlora]
label = "FlexLoRA"
strategy.name = "flexlora"
[methods.fedit-max-drop]
strategy.name = "fedit"
plan = "drop-small-fraction"
[distributions.uniform]
clients.rank_distribution = "uniform"
[distributions.light]
clients.rank_distribution = "heavy-tail-light"
"""

TINY_BYTES_PER_RANK = 2 * (128 + 96 + 96 + 128 + 192 + 192 + 192) * 4
"""fp32 bytes of one rank of every LoRA factor pair of the tiny Llama: 2 layers x sum of (d_in + d_out)
over q (64->64), k and v (64->32), o (64->64), gate and up (64->128), down (128->64)."""


def _write(tmp_path: Path, text: str, name: str = "bench.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture
def tiny_spec(tiny_model):
    from fedlora.models import DEFAULT_TARGETS, model_spec

    return model_spec(tiny_model[0], DEFAULT_TARGETS)


# ----------------------------------------------------------------------------- grid


def test_grid_expands_methods_distributions_seeds(tmp_path):
    bench = load_bench(_write(tmp_path, RANK_BENCH.replace("seeds = [0]", "seeds = [0, 1]")))
    assert [c.id for c in bench.cells][:3] == ["flexlora__uniform__seed0", "flexlora__uniform__seed1", "fedit-max-drop__uniform__seed0"]
    assert len(bench.cells) == 2 * 2 * 2
    cell = bench.cells[-1]
    assert (cell.config.run.seed, cell.config.run.name) == (1, "fedit-max-drop__light__seed1")
    assert cell.config.strategy.name == "fedit" and cell.method.plan == "drop-small-fraction"
    assert cell.config.clients.rank_distribution == "heavy-tail-light"
    assert bench.metrics[0] == "heldout/accuracy" and bench.claim.baselines == ("fedit-max-drop",)


def test_grid_reports_every_problem_at_once(tmp_path):
    text = RANK_BENCH.replace('plan = "drop-small-fraction"', 'plan = "drop-smal"').replace('primary_metric = "heldout/accuracy"', 'primary_metric = "rougeL"')
    text += '\n[methods.bad]\nstrategy.name = "fedavg"\ntrain.lrr = 1\n'
    with pytest.raises(BenchError) as err:
        load_bench(_write(tmp_path, text))
    message = str(err.value)
    assert "plan = 'drop-smal'" in message and "did you mean 'drop-small'" in message
    assert "metric 'rougeL'" in message
    assert len(err.value.errors) >= 3


def test_cell_config_errors_name_the_cell(tmp_path):
    text = RANK_BENCH + '\n[methods.hetlora]\nstrategy.name = "hetlora"\nstrategy.gama = 0.9\n'
    with pytest.raises(BenchError, match=r"cells hetlora under uniform, hetlora under light: strategy.gama"):
        load_bench(_write(tmp_path, text))


def test_strategy_change_replaces_the_strategy_table(tmp_path):
    text = RANK_BENCH.replace("[base.train]", '[base.strategy]\nname = "hetlora"\ngamma = 0.9\n[base.train]')
    bench = load_bench(_write(tmp_path, text))
    assert bench.cells[0].config.strategy.params == {}


def test_quick_variant_extends_its_parent(tmp_path):
    _write(tmp_path, RANK_BENCH)
    _write(tmp_path, '[bench]\nextends = "bench.toml"\nmethods = ["flexlora"]\n[base.run]\nrounds = 1\n', "bench_quick.toml")
    quick = load_bench(tmp_path / "bench.toml", quick=True)
    assert quick.name == "bench_quick" and [m.name for m in quick.methods] == ["flexlora"]
    assert {c.config.run.rounds for c in quick.cells} == {1} and quick.cells[0].config.model.name == "tiny"


@pytest.mark.parametrize("name,cells", [("bucket_effect", (5 + 3) * 5), ("bucket_effect_quick", 4 * 2),
                                        ("memory_constrained", (4 * 2 + 1) * 5), ("memory_constrained_quick", 4 * 2),
                                        ("bucket_effect_ni", (5 + 2) * 5), ("task_learnability", 2),
                                        ("dp_cost", 3 * 4), ("compute_heterogeneity", 4 * 2 * 5)])  # fmt: skip
def test_bundled_bench_files_are_valid(name, cells):
    bench = load_bench(REPO / "benchmarks" / f"{name}.toml")
    assert len(bench.cells) == cells
    if name != "task_learnability":  # a table of tasks, not a claim
        assert bench.claim is not None and bench.claim.method in {m.name for m in bench.methods}


# ----------------------------------------------------------------------------- baselines


def test_last_layers_is_the_longest_fitting_suffix(tiny_spec):
    from fedlora.allocation.memory import MemoryModel

    kwargs = {"batch_size": 2, "seq_len": 32}
    mm, budget = MemoryModel(tiny_spec, **kwargs), 1_000_000
    sel = select_last_layers(tiny_spec, budget, kwargs, 4)
    order = [m.name for m in sorted(tiny_spec.modules, key=lambda m: m.layer)]
    assert "model.layers.1.mlp.down_proj" in sel.modules and sel.predicted_bytes <= budget
    frozen = {m.name: 4 for m in tiny_spec.modules}
    assert mm.peak_bytes(sel.modules, frozen=frozen) == sel.predicted_bytes
    assert 0 < len(sel.modules) < len(order)
    assert all(tiny_spec.module(m).layer >= sel.shallowest_layer for m in sel.modules)


def test_random_modules_fit_and_follow_the_seed(tiny_spec):
    kwargs = {"batch_size": 2, "seq_len": 32}
    picks = [select_random_modules(tiny_spec, 1_000_000, kwargs, 4, seed) for seed in (0, 0, 1, 2, 3)]
    assert picks[0].modules == picks[1].modules
    assert len({tuple(p.modules) for p in picks}) > 1
    assert all(p.predicted_bytes <= 1_000_000 for p in picks)


def test_drop_small_keeps_only_full_clients(tiny_spec):
    kwargs = {"batch_size": 2, "seq_len": 32}
    plans = drop_small_by_rank(tiny_spec, ["a", "b", "c"], [2, 4, 4], alpha_ratio=2.0)
    assert [p.client_id for p in plans] == ["b", "c"] and {r for p in plans for r in p.ranks.values()} == {4}
    assert not full_lora_fits(tiny_spec, 800_000, kwargs, 4) and full_lora_fits(tiny_spec, 1_300_000, kwargs, 4)
    plans = drop_small_by_budget(tiny_spec, ["a", "b"], [800_000, 1_300_000], kwargs, 4, 2.0)
    assert [p.client_id for p in plans] == ["b"] and plans[0].trainable is None


def test_baseline_planner_modes(tiny_spec):
    kwargs = {"batch_size": 2, "seq_len": 32}
    common = dict(ranks=[4, 4], budgets=[800_000, 1_300_000], mm_kwargs=kwargs, rank=4, alpha_ratio=2.0, seed=0)
    random_planner = BaselinePlanner("random-modules", tiny_spec, ["a", "b"], **common)
    r1, r2 = random_planner.plans(1, ["a", "b"]), random_planner.plans(2, ["a", "b"])
    assert set(r1["a"].ranks) == set(tiny_spec.module_names)  # every module carries an adapter, the selection trains
    assert r1 == random_planner.plans(1, ["a", "b"]) and r1["a"].trainable != r2["a"].trainable
    assert len(r1["b"].trainable) == len(tiny_spec.modules)
    assert BaselinePlanner("drop-small", tiny_spec, ["a", "b"], **common).ids == ("b",)
    with pytest.raises(ValueError, match="memory budgets"):
        BaselinePlanner("last-layers", tiny_spec, ["a"], **{**common, "ranks": [4], "budgets": None})


# ----------------------------------------------------------------------------- the grid, for real


def _expected_bytes(cell, spec_ranks: list[int]) -> int:
    """Bytes sent over the run: every client's factors up each round, down from round 2 (round 1 starts fresh)."""
    rounds = cell.config.run.rounds
    if cell.method.plan == "drop-small-fraction":
        spec_ranks = [r for r in spec_ranks if r == max(spec_ranks)]
    elif cell.config.strategy.name == "fedit":
        spec_ranks = [min(spec_ranks)] * len(spec_ranks)
    return rounds * sum(spec_ranks) * TINY_BYTES_PER_RANK


@pytest.mark.integration
def test_grid_runs_resumes_and_reports(tmp_path, monkeypatch, capsys):
    from fedlora.bench import runner
    from fedlora.engine.plans import client_ranks

    bench = load_bench(_write(tmp_path, RANK_BENCH))
    out = tmp_path / "out"
    first = run_grid(bench, out, max_cells=1, verbose=False, log=lambda s: None)
    assert [o.status for o in first.outcomes] == ["done"]
    assert bench_main([str(bench.path), "--out", str(out), "--list"]) == 0
    assert "1 of 4 cells done; 3 left: about " in capsys.readouterr().out
    partial = bench.cells[1]
    assert run_cell(partial, cell_dir(out, partial), metrics=bench.metrics, stop_after=1) is None  # "killed" after round 1
    assert cell_state(cell_dir(out, partial)) == "partial"
    with pytest.raises(FileExistsError, match="--resume"):
        run_grid(bench, out, verbose=False, log=lambda s: None)

    done_mtime = (cell_dir(out, bench.cells[0]) / "result.json").stat().st_mtime_ns
    calls: list[str] = []
    real = runner.run_cell
    monkeypatch.setattr(runner, "run_cell", lambda cell, *a, **k: calls.append(cell.id) or real(cell, *a, **k))
    second = run_grid(bench, out, resume=True, verbose=False, log=lambda s: None)
    assert calls == [c.id for c in bench.cells[1:]]  # the finished cell is not run again
    assert [o.status for o in second.outcomes] == ["skipped", "done", "done", "done"]
    assert second.outcomes[1].resumed_from == 1
    assert (cell_dir(out, bench.cells[0]) / "result.json").stat().st_mtime_ns == done_mtime
    resumed = [json.loads(line) for line in (cell_dir(out, partial) / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in resumed if r["type"] == "round"] == [1, 2]  # round 1 not trained twice

    paths = write_report(bench, out)
    rows = collect(out, [c.id for c in bench.cells])
    assert len(rows) == 4 and all(r.rounds == 2 for r in rows)
    csv_text, md_text = paths["cells_csv"].read_text(), paths["markdown"].read_text()
    for cell in bench.cells:
        assert cell.id in csv_text and cell.id in md_text
    for name in PLOT_FILES:
        png = out / "plots" / name
        assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size < 300_000
    for row, cell in zip(rows, bench.cells):  # communication = the factor tensors of the plans, fp32
        ranks = client_ranks(cell.config)
        assert row.bytes_up == _expected_bytes(cell, ranks), cell.id
        assert row.bytes_down == row.bytes_up // cell.config.run.rounds * (cell.config.run.rounds - 1), cell.id

    assert bench_main([str(bench.path), "--out", str(out), "--report"]) == 0
    doc = write_results_doc([out], tmp_path / "docs" / "results.md")
    text = doc.read_text()
    assert "![metric_per_round](results/tiny/plots/metric_per_round.png)" in text and "one seed" in text
    assert "| seeds for ±0.02 |" in text
    assert (tmp_path / "docs" / "results" / "tiny" / "plots" / "final_metric.png").is_file()
    intro = tmp_path / "intro.md"
    intro.write_text("**Status.** Three cells of four.\n", encoding="utf-8")
    assert bench_main(["doc", str(out), "--doc", str(tmp_path / "r.md"), "--intro-file", str(intro)]) == 0
    assert "**Status.** Three cells of four." in (tmp_path / "r.md").read_text()
    assert bench_main(["doc", str(out), "--doc", str(tmp_path / "r.md"), "--intro", str(intro)]) == 2  # a file name as text


MEMORY_BENCH = """
[bench]
name = "tiny_memory"
seeds = [0]
primary_metric = "eval/loss"
""" + TINY_BASE.replace("num_clients = 4", "num_clients = 2").replace(
    "rank_levels = [2, 4]", "fedpilot_rank = 4\nbudgets = [800000, 1300000]\n[base.strategy]\nname = \"fedpilot\""
) + """
[methods.fedpilot]
strategy.name = "fedpilot"
[methods.exclude-small]
plan = "drop-small-fraction"
[methods.last-layers]
plan = "last-layers"
[methods.random-modules]
plan = "random-modules"
[distributions.half-small]
"""


@pytest.mark.integration
def test_memory_baselines_train_what_fits(tmp_path, tiny_spec):
    """Budgets 800 kB (too small for full LoRA on the tiny model at batch 2 x 32) and 1.3 MB (fits):
    each baseline trains what its planner picks, and the bytes up and down are those modules' factors."""
    bench = load_bench(_write(tmp_path, MEMORY_BENCH))
    out = tmp_path / "out"
    report = run_grid(bench, out, verbose=False, log=lambda s: None)
    assert [o.status for o in report.outcomes] == ["done"] * 4, [o.error for o in report.outcomes]
    assert not full_lora_fits(tiny_spec, 800_000, {"batch_size": 2, "seq_len": 32}, 4)
    size = {m.name: 4 * (m.d_in + m.d_out) * 4 for m in tiny_spec.modules}  # rank 4, fp32
    common = dict(ranks=[4, 4], budgets=[800_000, 1_300_000], mm_kwargs={"batch_size": 2, "seq_len": 32}, rank=4, alpha_ratio=2.0, seed=0)
    for cell in bench.cells:
        records = [json.loads(line) for line in (cell_dir(out, cell) / "metrics.jsonl").read_text().splitlines()]
        clients = [r for r in records if r["type"] == "client"]
        assert clients and all(r["status"] == "ok" for r in clients), cell.id
        small = [r for r in clients if r["client"] == "client_000"]
        if cell.method.plan is None:  # Fed-pilot: the small client trains a subset, the large one more
            assert small and all(r["trained_modules"] < len(size) for r in small)
            continue
        planner = BaselinePlanner(cell.method.plan, tiny_spec, ["client_000", "client_001"], **common)
        trained_before: set[str] = set()
        for rnd in (1, 2):
            plans = planner.plans(rnd, list(planner.ids))
            for r in (r for r in clients if r["round"] == rnd):
                plan = plans[r["client"]]
                assert r["trained_modules"] == len(plan.trainable_modules)
                assert r["bytes_up"] == sum(size[m] for m in plan.trainable_modules), (cell.id, rnd)
                assert r["bytes_down"] == sum(size[m] for m in plan.ranks if m in trained_before), (cell.id, rnd)
            trained_before |= {m for p in plans.values() for m in p.trainable_modules}
        if cell.method.plan == "drop-small-fraction":
            assert not small
        else:
            assert small and all(r["trained_modules"] < len(size) for r in small)


# ----------------------------------------------------------------------------- claim check


def _rows(metric: str, values: dict[str, list[float]]) -> list:

    return [CellRow(f"{m}__d__seed{i}", m, "d", i, {metric: v}, 0, 0, 0.0, 1, 1) for m, vs in values.items() for i, v in enumerate(vs)]


def test_compare_pairs_seeds_and_stays_conservative():
    (one,) = compare(_rows("m", {"a": [0.5], "b": [0.4]}), "a", ["b"], "m")
    assert one.verdict == "one seed" and one.diff == pytest.approx(0.1) and one.relative == pytest.approx(0.25)
    # seeds differ a lot, the paired differences hardly: +0.10, +0.11, +0.09 -> clearly better
    (paired,) = compare(_rows("m", {"a": [0.3, 0.61, 0.49], "b": [0.2, 0.5, 0.4]}), "a", ["b", "missing"], "m")
    assert paired.verdict == "better" and paired.seeds == 3 and paired.diff == pytest.approx(0.1)
    # sd of the differences 0.01: t(.975, 2) 0.01 / sqrt(3) = 0.0248 > 0.02, t(.975, 3) 0.01 / 2 = 0.0159 <= 0.02
    assert paired.seeds_for_2pt == 4 and one.seeds_for_2pt is None
    (noisy,) = compare(_rows("m", {"a": [0.5, 0.4, 0.6], "b": [0.4, 0.5, 0.55]}), "a", ["b"], "m")
    assert noisy.verdict == "no difference detected"  # differences +0.1, -0.1, +0.05
    assert noisy.ci_low < 0 < noisy.ci_high


def test_compare_counts_lower_loss_as_better():
    (c,) = compare(_rows("eval/loss", {"a": [1.0], "b": [1.5]}), "a", ["b"], "eval/loss")
    assert c.diff == pytest.approx(0.5) and c.relative == pytest.approx(1 / 3)


def test_base_config_error_is_reported_once(tmp_path):
    with pytest.raises(BenchError) as err:
        load_bench(_write(tmp_path, RANK_BENCH.replace("local_steps = 1", "local_steps = 0")))
    assert err.value.errors == ["every cell: train.local_steps = 0: must be >= 1"]


def test_fedlora_cli_dispatches_bench(tmp_path, capsys):
    from fedlora.cli import main as fedlora_main

    path = _write(tmp_path, RANK_BENCH)
    assert fedlora_main(["bench", str(path), "--out", str(tmp_path / "out"), "--seeds", "3,4", "--list"]) == 0
    listed = capsys.readouterr().out.split("\n")
    assert sum("new" in line for line in listed) == 8 and "flexlora__uniform__seed4" in listed[1]
    assert "0 of 8 cells done; 8 left: no finished cell to estimate the time from" in listed
    assert fedlora_main(["bench", str(path), "--seeds", "x"]) == 2


BASELINES_BENCH = """
[bench]
name = "tiny_baselines"
seeds = [0, 1]
primary_metric = "eval/loss"
metrics = ["heldout/loss", "eval/accuracy"]
[bench.claim]
text = "FlexLoRA beats the floor."
method = "flexlora"
baselines = ["no-train", "local", "centralized"]
""" + TINY_BASE + """
[methods.flexlora]
strategy.name = "flexlora"
[methods.no-train]
strategy.name = "fedit"
clients.allocation = "uniform"
plan = "no-train"
distributions = ["uniform"]
[methods.centralized]
strategy.name = "fedit"
clients.allocation = "uniform"
plan = "centralized"
distributions = ["uniform"]
[methods.local]
strategy.name = "local"
distributions = ["uniform"]
[distributions.uniform]
clients.rank_distribution = "uniform"
[distributions.light]
clients.rank_distribution = "heavy-tail-light"
"""


def test_reference_baselines_and_published_cells(tmp_path):
    from fedlora.engine.plans import client_ranks

    bench = load_bench(_write(tmp_path, BASELINES_BENCH))
    out, publish = tmp_path / "out", tmp_path / "docs" / "results" / "tiny_baselines"
    assert len(bench.cells) == 10  # the references run under "uniform" only
    report = run_grid(bench, out, verbose=False, log=lambda s: None, publish=publish)
    assert [o.status for o in report.outcomes] == ["done"] * 10
    rows = {(r.method, r.seed): r for r in collect(publish, [c.id for c in bench.cells]) if r.distribution == "uniform"}
    assert len(rows) == 8 and all((publish / "cells" / f"{c.id}.json").is_file() for c in bench.cells)
    # no-train: the base model at round 0 only, no training
    nt = rows[("no-train", 0)]
    assert nt.rounds == 0 and not [r for r in nt.records if r["type"] == "round"]
    assert {r["round"] for r in nt.records if r["type"] == "eval"} == {0}
    # centralized: one pooled client per round with every client's steps; local: one model per client
    central = next(c for c in bench.cells if c.method.name == "centralized")
    records = [json.loads(x) for x in (cell_dir(out, central) / "metrics.jsonl").read_text().splitlines()]
    clients = [r for r in records if r["type"] == "client"]
    assert {c["client"] for c in clients} == {"pooled"} and all(c["steps"] == 4 for c in clients)  # 4 clients x 1 step
    assert all(c["num_examples"] == 8 and c["rank"] == max(client_ranks(central.config)) for c in clients)  # 2 tasks x 4
    local_eval = [r for r in rows[("local", 1)].records if r["type"] == "eval"][-1]
    assert local_eval["n_models"] == 4
    # comparisons.json: every comparison with its interval and verdict
    comps = json.loads((publish / "comparisons.json").read_text())
    keys = {"claim", "method", "baseline", "distribution", "metric", "seeds", "n_eval", "diff", "ci_low", "ci_high", "verdict",
            "seeds_for_2pt"}
    assert comps and all(keys <= set(c) for c in comps)
    assert {c["baseline"] for c in comps} == {"no-train", "local", "centralized"} and all(c["seeds"] == 2 for c in comps)
    # the references pair with every distribution; local-only (its ranks are the distribution's) only with its own
    assert {(c["distribution"], c["baseline"]) for c in comps} == {("uniform", "local")} | {
        (d, b) for d in ("uniform", "light") for b in ("no-train", "centralized")}
    acc = [c for c in comps if c["metric"] == "eval/accuracy"]
    assert acc and all(c["n_eval"] == 4 and c["ci_low"] <= c["diff"] <= c["ci_high"] for c in acc)
    # a fresh output folder continues from what was published: nothing runs again
    again = run_grid(bench, tmp_path / "fresh", verbose=False, log=lambda s: None, publish=publish)
    assert [o.status for o in again.outcomes] == ["skipped"] * 10


def test_task_table_marks_tasks_the_trained_model_beats_beyond_the_interval():
    from fedlora.bench.doc import task_table

    def row(method, acc, rouge):
        ev = {"type": "eval", "split": "eval", "round": 1, "task/a/accuracy": acc, "task/a/accuracy_se": 0.02,
              "task/a/majority": 0.5, "task/g/rougeL": rouge, "task/g/rougeL_se": 0.01}
        return CellRow(f"{method}__d__seed0", method, "d", 0, {}, 0, 0, 0.0, 1, 1, [ev])

    text = task_table([row("no-train", 0.50, 0.20), row("centralized", 0.60, 0.21)], {})
    lines = text.splitlines()
    assert lines[0] == "| split | task | metric | majority | no-train | centralized | difference | learnable |"
    assert lines[2].startswith("| eval | a | accuracy | 0.500 | 0.500 ± 0.020 | 0.600 ± 0.020 | +0.100") and lines[2].endswith("| yes |")
    assert lines[3].startswith("| eval | g | rougeL | - |") and lines[3].endswith("| no |")  # +0.01 < 1.96 x 0.014


def test_every_registered_method_runs_as_a_bench_cell(tmp_path):
    """Each method of the registry is a bench cell that trains one round on the tiny model."""
    from fedlora.strategies import STRATEGY_NAMES

    extra = {"fedpilot": 'clients.budgets = [1500000, 2000000, 3000000, 3000000]\nclients.fedpilot_rank = 2\n',
             "feddpa": "strategy.global_rank = 1\n", "slora": "strategy.sparse_rounds = 1\n"}
    methods = "".join(f'[methods.{n}]\nstrategy.name = "{n}"\n{extra.get(n, "")}' for n in STRATEGY_NAMES)
    text = ('[bench]\nname = "zoo"\nseeds = [0]\nprimary_metric = "eval/loss"\nmetrics = ["train/loss"]\n'
            + TINY_BASE.replace("rounds = 2", "rounds = 1") + methods + '[distributions.uniform]\nclients.rank_distribution = "uniform"\n')
    bench = load_bench(_write(tmp_path, text))
    report = run_grid(bench, tmp_path / "out", verbose=False, log=lambda s: None)
    assert [o.status for o in report.outcomes] == ["done"] * len(STRATEGY_NAMES)
    rows = collect(tmp_path / "out", [c.id for c in bench.cells])
    assert sorted(r.method for r in rows) == sorted(STRATEGY_NAMES)
    assert all(r.rounds == 1 for r in rows)


@pytest.mark.parametrize("path", sorted((REPO / "benchmarks").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_bench_file_parses_into_cells(path):
    bench = load_bench(path)
    assert bench.cells and len({c.id for c in bench.cells}) == len(bench.cells)
    assert all(c.config.strategy.name for c in bench.cells)


def test_estimate_seconds_uses_the_method_mean_then_the_overall_mean():
    rows = [CellRow("a0", "a", "d", 0, {}, 0, 0, 100.0, 1, 1), CellRow("a1", "a", "d", 1, {}, 0, 0, 300.0, 1, 1),
            CellRow("b0", "b", "d", 0, {}, 0, 0, 50.0, 1, 1), CellRow("c0", "c", "d", 0, {}, 0, 0, 0.0, 1, 1)]
    # a: mean 200; b: 50; c has only an untimed row and z none, so both count the timed mean 150
    assert estimate_seconds(["a", "a", "b", "c", "z"], rows) == pytest.approx(200 + 200 + 50 + 150 + 150)
    assert estimate_seconds([], rows) == 0
    assert estimate_seconds(["a"], rows[3:]) is None


# ----------------------------------------------------------------------------- baselines train as much as the methods


def _drop_engine(tmp_path, per_round):
    from fedlora.config import parse_config
    from fedlora.engine.run import Engine

    raw = load_bench(_write(tmp_path, RANK_BENCH)).cells[0].raw
    raw = {**raw, "clients": {"ranks": [2, 2, 4, 4], "clients_per_round": per_round}, "run": {**raw["run"], "rounds": 1}}
    engine = Engine(parse_config(raw), tmp_path / f"run{per_round}")
    engine.setup()
    return engine


@pytest.mark.integration
def test_drop_small_samples_as_many_clients_per_round_as_the_full_federation(tmp_path):
    from fedlora.bench.baselines import install_plan_mode

    full = _drop_engine(tmp_path, 0.5)
    assert full.per_round == 2
    install_plan_mode(full, "drop-small")
    assert full.per_round == 2 and set(full.data.client_ids) == {"client_002", "client_003"}
    trained = [r for r in full.run().records if r["type"] == "client"]
    assert len(trained) == 2 and {r["rank"] for r in trained} == {4}

    fewer = _drop_engine(tmp_path, 0.5)
    install_plan_mode(fewer, "drop-small-fraction")  # the old behaviour: the fraction of the kept clients
    assert fewer.per_round == 1

    with pytest.raises(ValueError, match="fewer than the 3 clients per round.*drop-small-fraction"):
        install_plan_mode(_drop_engine(tmp_path, 3), "drop-small")


def test_a_distribution_without_every_rank_level_is_refused(tmp_path):
    text = RANK_BENCH.replace("num_clients = 4", "num_clients = 3")  # heavy-tail-light over 3: all at rank 2
    with pytest.raises(BenchError, match=r"distributions.light: 'heavy-tail-light' over 3 clients gives no client rank \[4\]"):
        load_bench(_write(tmp_path, text))
    assert load_bench(_write(tmp_path, RANK_BENCH)).cells  # over 4 clients: three at rank 2, one at rank 4


CLAIMS_BENCH = RANK_BENCH.replace("seeds = [0]", "seeds = [0, 1]").replace("[base.run]\nrounds = 2", "[base.run]\nrounds = 2\neval_last = 2") + """
[methods.fedit-min]
strategy.name = "fedit"
clients.allocation = "uniform"
[claims.tiny]
text = "FlexLoRA beats FedIT at the minimum rank."
method = "flexlora"
family = ["fedit-min"]
distributions = ["uniform"]
endpoint = "heldout/accuracy"
last_rounds = 2
looks = [2]
exploratory = ["fedit-max-drop"]
"""


def test_a_claim_whose_endpoint_rounds_are_not_evaluated_is_refused(tmp_path):
    with pytest.raises(BenchError, match=r"claims.tiny: its endpoint averages rounds \[1, 2\].*set run.eval_last = 2"):
        load_bench(_write(tmp_path, CLAIMS_BENCH.replace("eval_last = 2", "eval_every = 0")))


@pytest.mark.integration
def test_preregistered_claims_are_written_analysed_and_drawn(tmp_path, capsys):
    path = _write(tmp_path, CLAIMS_BENCH)
    bench = load_bench(path)
    publish = tmp_path / "published"
    assert bench_main([str(path), "--preregister", "--publish", str(publish)]) == 0
    prereg = json.loads((publish / "preregistration.json").read_text())
    assert prereg["design"]["claims"][0]["family"] == ["fedit-min"] and len(prereg["design_sha256"]) == 64
    only = lambda c: c.distribution.name == "uniform"  # noqa: E731
    run_grid(bench, tmp_path / "out", verbose=False, log=lambda s: None, publish=publish, only=only)
    rows = json.loads((publish / "comparisons.json").read_text())
    primary = [r for r in rows if r["family"] == "tiny"]
    assert len(primary) == 1 and primary[0]["seeds"] == 2 and primary[0]["adjusted_p"] is not None
    assert primary[0]["verdict"] in ("better", "worse", "equivalent within δ", "no difference detected")
    assert {r["baseline"] for r in rows if r["exploratory"]} >= {"fedit-max-drop"}
    (status,) = json.loads((publish / "verdicts.json").read_text())
    assert status["claim"] == "tiny" and status["status"] in ("decided", "cap reached") and status["looks_done"] == [2]
    # the design is locked once cells have finished: a change is a new experiment
    changed = _write(tmp_path, CLAIMS_BENCH.replace("looks = [2]", "looks = [2]\ndelta = 0.05"))
    assert bench_main([str(changed), "--preregister", "--publish", str(publish)]) == 2
    assert "new experiment" in capsys.readouterr().err
    doc = write_results_doc([publish], tmp_path / "docs" / "results.md").read_text()
    assert "### Claim `tiny` (pre-registered)" in doc and "forest_tiny.png" in doc
    assert (tmp_path / "docs" / "results" / "tiny" / "plots" / "forest_tiny.png").read_bytes()[:4] == b"\x89PNG"
