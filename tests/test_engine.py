"""fedlora.engine on the tiny model: every strategy runs and learns, resume is exact, a failing
client does not stop its round, runs refuse to clobber each other, traffic is counted."""

from __future__ import annotations

import json

import pytest
import torch

from fedlora.config import parse_config
from fedlora.engine.metrics_log import read_metrics
from fedlora.engine.run import Engine, RunError, adapter_bytes
from fedlora.engine.sampling import client_seed, clients_per_round, sample_clients

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tiny model gains nothing from threads, and on a shared CPU extra threads spin-wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TASKS = {
    "colour": ("Name the colour of this item.", lambda i: f"item {i}", lambda i: ["red", "green", "blue"][i % 3]),
    "parity": ("Is this number even or odd?", lambda i: str(i), lambda i: "even" if i % 2 == 0 else "odd"),
    "echo": ("Repeat the word.", lambda i: ["cat", "dog", "sun"][i % 3], lambda i: ["cat", "dog", "sun"][i % 3]),
}


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    rows = [{"instruction": ins, "input": inp(i), "output": out(i), "task": t} for t, (ins, inp, out) in TASKS.items() for i in range(16)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def tiny_config(data_file, **sections) -> "Config":  # noqa: F821
    raw = {
        "run": {"rounds": 3, "seed": 3},
        "model": {"name": "tiny"},
        "data": {"source": "jsonl", "train_path": str(data_file), "heldout_tasks": ["echo"], "num_clients": 4,
                 "partition": "iid", "max_eval_per_task": 3},
        "clients": {"ranks": [2, 4, 8, 4]},
        "train": {"local_steps": 4, "batch_size": 4, "lr": 1e-2, "max_length": 48},
        "eval": {"generate": False, "max_length": 48, "batch_size": 8},
    }  # fmt: skip
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return parse_config(raw)


def _train_losses(records) -> list[float]:
    return [r["train_loss"] for r in records if r["type"] == "round"]


def _assert_same_adapter(a, b) -> None:
    assert sorted(a) == sorted(b)
    for m in a:
        assert torch.equal(a[m].A, b[m].A) and torch.equal(a[m].B, b[m].B) and a[m].alpha == b[m].alpha, m


# ----------------------------------------------------------------------------- every strategy

STRATEGIES = {
    "fedit": {},
    "flexlora": {},
    "hetlora": {},
    "flora": {},
    "ffa": {},
    "fedpilot": {"clients": {"budgets": ["1.5MiB", "2MiB", "3MiB", "4MiB"], "fedpilot_rank": 4}},
    "fedex": {},
    "rolora": {},
    "fedsvd": {},
    "lorafair": {},
    "fedmomentum": {},
    "slora": {"strategy": {"name": "slora", "sparse_rounds": 1, "density": 0.25}},
    "fedsa": {},
    "feddpa": {"strategy": {"name": "feddpa", "global_rank": 2}},
    "fedra": {"strategy": {"name": "fedra", "layer_fraction": 0.5}},
    "fedhello": {"strategy": {"name": "fedhello", "layer_fraction": 0.5}},
    "fedrot": {},
    "fedprox": {"strategy": {"name": "fedprox", "mu": 0.01, "base": "flexlora"}},
    "local": {},
}


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_each_strategy_runs_three_rounds_and_the_loss_goes_down(name, data_file, tmp_path):
    cfg = tiny_config(data_file, **{"strategy": {"name": name}, **STRATEGIES[name]})
    result = Engine(cfg, tmp_path / name).run()
    losses = _train_losses(result.records)
    assert result.completed_rounds == 3 and len(losses) == 3
    assert losses[-1] < losses[0], losses
    evals = [r for r in result.records if r["type"] == "eval" and r["split"] == "eval"]
    assert [r["round"] for r in evals] == [0, 1, 2, 3]
    assert evals[-1]["loss"] < evals[0]["loss"]
    assert result.strategy.global_adapter() or result.strategy.evaluation_adapters()
    assert all(r["status"] == "ok" for r in result.records if r["type"] == "client")
    if name == "fedhello":  # each client trained one of the tiny model's two layers: its 7 projections of 14
        assert {r["trained_modules"] for r in result.records if r["type"] == "client"} == {7}


def test_engine_with_lockstep_gives_the_sequential_run(data_file, tmp_path):
    seq = Engine(tiny_config(data_file, run={"rounds": 2}), tmp_path / "seq").run()
    lock = Engine(tiny_config(data_file, run={"rounds": 2}, train={"lockstep": True}), tmp_path / "lock").run()
    a, b = seq.strategy.global_adapter(), lock.strategy.global_adapter()
    assert sorted(a) == sorted(b)
    for m in a:
        torch.testing.assert_close(b[m].B @ b[m].A, a[m].B @ a[m].A, rtol=1e-3, atol=1e-5)
    clients = [r for r in lock.records if r["type"] == "client"]
    assert clients and all(r.get("lockstep") and r["status"] == "ok" for r in clients)


def test_heterogeneous_ranks_reach_the_clients(data_file, tmp_path):
    engine = Engine(tiny_config(data_file, run={"rounds": 1}), tmp_path)
    result = engine.run()
    clients = {r["client"]: r for r in result.records if r["type"] == "client"}
    assert [clients[c]["rank"] for c in sorted(clients)] == [2, 4, 8, 4]
    # uploads are the real tensors: rank r_k factors of every module
    per_rank = {r: sum(r * (m.d_in + m.d_out) * 4 for m in engine.spec.modules) for r in (2, 4, 8)}
    assert [clients[c]["bytes_up"] for c in sorted(clients)] == [per_rank[2], per_rank[4], per_rank[8], per_rank[4]]


def test_fedit_baseline_puts_everyone_at_the_minimum_rank(data_file, tmp_path):
    result = Engine(tiny_config(data_file, run={"rounds": 1}, strategy={"name": "fedit"}), tmp_path).run()
    assert {r["rank"] for r in result.records if r["type"] == "client"} == {2}


# ----------------------------------------------------------------------------- resume


@pytest.mark.parametrize(("name", "every", "stop"), [("flexlora", 1, 2), ("flora", 2, 3), ("hetlora", 1, 1)])
def test_kill_and_resume_gives_the_uninterrupted_result(name, every, stop, data_file, tmp_path):
    cfg = tiny_config(data_file, strategy={"name": name}, run={"rounds": 4, "checkpoint_every": every},
                      clients={"clients_per_round": 0.75})  # fmt: skip
    full = Engine(cfg, tmp_path / "full").run()
    Engine(cfg, tmp_path / "cut").run(stop_after=stop)  # "killed" after round `stop`
    resumed = Engine(cfg, tmp_path / "cut").run(resume=True)
    _assert_same_adapter(full.strategy.global_adapter(), resumed.strategy.global_adapter())
    assert _train_losses(resumed.records) == _train_losses(full.records)
    logged = read_metrics(tmp_path / "cut")  # rounds past the checkpoint were dropped and redone once
    assert [r["round"] for r in logged if r["type"] == "round"] == [1, 2, 3, 4]


def test_resume_refuses_a_different_federation(data_file, tmp_path):
    cfg = tiny_config(data_file, run={"rounds": 1})
    Engine(cfg, tmp_path).run()
    with pytest.raises(RunError, match="already holds a run"):
        Engine(cfg, tmp_path).run()
    with pytest.raises(RunError, match="train.lr: checkpoint 0.01, now 0.02"):
        Engine(tiny_config(data_file, run={"rounds": 2}, train={"lr": 2e-2}), tmp_path).run(resume=True)
    with pytest.raises(RunError, match="holds no checkpoint|does not exist"):
        Engine(cfg, tmp_path / "empty").run(resume=True)


def test_resume_can_extend_a_finished_run(data_file, tmp_path):
    Engine(tiny_config(data_file, run={"rounds": 1}), tmp_path).run()
    longer = Engine(tiny_config(data_file, run={"rounds": 2}), tmp_path).run(resume=True)
    assert longer.completed_rounds == 2 and len(_train_losses(longer.records)) == 2


# ----------------------------------------------------------------------------- failures


def test_a_failing_client_is_reported_and_the_round_completes(data_file, tmp_path):
    engine = Engine(tiny_config(data_file, run={"rounds": 2}), tmp_path)
    engine.setup()
    real_train = engine.trainer.train

    def flaky(payload, examples, *, client_seed, **kwargs):
        if payload.plan.client_id == "client_001":
            raise RuntimeError("out of memory on this phone")
        return real_train(payload, examples, client_seed=client_seed, **kwargs)

    engine.trainer.train = flaky
    result = engine.run()
    rounds = [r for r in result.records if r["type"] == "round"]
    assert [r["accepted"] for r in rounds] == [3, 3]
    assert all("client_001" in r["failed"] and "out of memory on this phone" in r["failed"]["client_001"] for r in rounds)
    failed = [r for r in result.records if r["type"] == "client" and r["status"] == "failed"]
    assert len(failed) == 2 and "RuntimeError" in failed[0]["error"] and "(at " in failed[0]["error"]
    assert "Traceback" in (tmp_path / "client_errors.log").read_text()
    assert result.summary["failed_clients"] == 2


# ----------------------------------------------------------------------------- sampling and bytes


def test_sampling_is_a_function_of_seed_and_round():
    ids = [f"c{i}" for i in range(10)]
    assert clients_per_round(0.3, 10) == 3 and clients_per_round(4, 10) == 4 and clients_per_round(0.01, 10) == 1
    a = sample_clients(ids, 5, 3, seed=1)
    assert a == sample_clients(ids, 5, 3, seed=1) and len(a) == 3 and a == sorted(a, key=ids.index)
    assert {tuple(sample_clients(ids, r, 3, seed=1)) for r in range(1, 20)} != {tuple(a)}
    assert client_seed(1, 2, "c0") == client_seed(1, 2, "c0") != client_seed(1, 3, "c0")


def test_adapter_bytes_counts_tensor_storage():
    from fedlora.lora.factors import LoraFactors

    f = LoraFactors(torch.zeros(4, 10), torch.zeros(6, 4, dtype=torch.float64), 8.0)
    assert adapter_bytes({"m": f}) == 4 * 10 * 4 + 6 * 4 * 8 and adapter_bytes(None) == 0


def test_ffa_uploads_only_b(data_file, tmp_path):
    engine = Engine(tiny_config(data_file, run={"rounds": 1}, strategy={"name": "ffa"}), tmp_path)
    result = engine.run()
    b_only = sum(2 * m.d_out * 4 for m in engine.spec.modules)  # rank 2 (the minimum), B is [d_out, r], fp32
    assert {r["bytes_up"] for r in result.records if r["type"] == "client"} == {b_only}


def test_local_only_is_evaluated_as_the_mean_over_the_clients_own_models(data_file, tmp_path):
    from fedlora.eval import evaluate

    engine = Engine(tiny_config(data_file, run={"rounds": 2}, strategy={"name": "local"}), tmp_path)
    result = engine.run()
    adapters = result.strategy.evaluation_adapters()
    assert sorted(adapters) == list(engine.data.client_ids) and not result.strategy.global_adapter()
    (last,) = [r for r in result.records if r["type"] == "eval" and r["split"] == "eval" and r["round"] == 2]
    by_hand = []
    for adapter in adapters.values():
        with engine.trainer.use_adapter(adapter) as model:
            by_hand.append(evaluate(model, engine.tokenizer, engine.data.eval, generate=False, max_length=48, batch_size=8))
    assert last["n_models"] == 4
    for key in ("loss", "rougeL_tf"):
        assert last[key] == pytest.approx(sum(r[key] for r in by_hand) / 4, rel=1e-6)
    assert last["n_examples"] == by_hand[0]["n_examples"] and "loss_se" in last


def test_eval_at_start_false_skips_round_zero(data_file, tmp_path):
    result = Engine(tiny_config(data_file, run={"rounds": 1}, eval={"at_start": False}), tmp_path).run()
    assert [r["round"] for r in result.records if r["type"] == "eval"] == [1, 1]
    base = Engine(tiny_config(data_file, run={"rounds": 1}), tmp_path / "base").run(stop_after=0)
    assert base.completed_rounds == 0 and [r["round"] for r in base.records if r["type"] == "eval"] == [0, 0]
    assert not [r for r in base.records if r["type"] == "round"]


def test_eval_last_evaluates_exactly_the_last_rounds_and_round_zero(data_file, tmp_path):
    cfg = tiny_config(data_file, run={"rounds": 4, "eval_every": 0, "eval_last": 2})
    result = Engine(cfg, tmp_path).run()
    assert sorted({r["round"] for r in result.records if r["type"] == "eval"}) == [0, 3, 4]


def test_a_client_ten_times_slower_is_dropped_or_cut_by_the_deadline_and_reported(data_file, tmp_path):
    # 4 clients, all sampled; client speeds 10, 10, 10, 1 steps per simulated second; 4 local steps
    speeds = {"clients": {"speeds": [10.0, 10.0, 10.0, 1.0]}}
    for policy, want_steps in (("drop", None), ("partial", 2)):
        cfg = tiny_config(data_file, run={"rounds": 2, "deadline": 2.0, "stragglers": policy}, **speeds)
        result = Engine(cfg, tmp_path / policy).run()
        clients = [r for r in result.records if r["type"] == "client"]
        slow = [r for r in clients if r["speed"] == 1.0]
        rounds = [r for r in result.records if r["type"] == "round"]
        assert result.completed_rounds == 2 and len(slow) == 2
        assert all(r["stragglers"] == [slow[0]["client"]] for r in rounds)
        assert [r["sim_seconds"] for r in rounds] == [2.0, 2.0] and rounds[-1]["sim_clock"] == 4.0
        if want_steps is None:
            assert all(r["status"] == "straggler" and "deadline" in r["error"] for r in slow)
            assert all(r["accepted"] == 3 for r in rounds)
        else:
            assert all(r["status"] == "ok" and r["partial"] and r["steps"] == want_steps for r in slow)
        assert all(r["steps"] == 4 for r in clients if r["speed"] == 10.0)
    # without a deadline the round lasts as long as the slowest client: 4 steps at 1 step/s
    plain = Engine(tiny_config(data_file, run={"rounds": 1}, **speeds), tmp_path / "plain").run()
    (rnd,) = [r for r in plain.records if r["type"] == "round"]
    assert rnd["sim_seconds"] == 4.0 and rnd["stragglers"] == [] and plain.summary["sim_clock"] == 4.0


def test_speed_distribution_draws_levels_and_speeds_length_is_checked(data_file):
    from fedlora.config import ConfigError
    from fedlora.engine.plans import client_speeds

    cfg = tiny_config(data_file, clients={"speed_levels": [1.0, 8.0], "speed_distribution": "heavy-tail-light"})
    assert sorted(client_speeds(cfg)) == [1.0, 1.0, 1.0, 8.0]  # 85 % of 4 at the slowest level, by quota
    with pytest.raises(ConfigError, match="clients.speeds has 2 values"):
        tiny_config(data_file, clients={"speeds": [1.0, 2.0]})


def test_personalised_method_reports_each_clients_own_model_and_keeps_state_on_disk(data_file, tmp_path):
    cfg = tiny_config(data_file, run={"rounds": 2}, strategy={"name": "fedsa"}, data={"partition": "task"})
    result = Engine(cfg, tmp_path / "run").run()
    personal = [r for r in result.records if r["type"] == "eval" and r["split"] == "personal"]
    assert [r["round"] for r in personal] == [0, 1, 2][-len(personal):] and personal[-1]["n_clients"] >= 2
    assert "accuracy" in personal[-1] or "loss" in personal[-1]
    files = sorted((tmp_path / "run" / "client_state").glob("*/v*.pt"))
    assert files and all(f.stat().st_size > 0 for f in files)
    # resume after round 1 reaches the same final personal models as the uninterrupted run
    Engine(cfg, tmp_path / "split").run(stop_after=1)
    resumed = Engine(cfg, tmp_path / "split").run(resume=True)
    for (c1, a1), (c2, a2) in zip(result.strategy.personal_adapters(), resumed.strategy.personal_adapters(), strict=True):
        assert c1 == c2 and all(torch.equal(a1[m].B, a2[m].B) and torch.equal(a1[m].A, a2[m].A) for m in a1)


# ----------------------------------------------------------------------------- asynchronous (FedBuff) mode


def test_rebase_moves_a_stale_change_onto_the_current_factors():
    from fedlora.allocation.plan import ClientPlan
    from fedlora.engine.asynchronous import rebase_update, staleness_weight
    from fedlora.lora.factors import LoraFactors, Update
    from fedlora.strategies.base import Payload

    plan = ClientPlan("c", {"m": 2}, {"m": 4.0})
    then = Payload(plan, init={"m": LoraFactors(torch.ones(2, 3), torch.zeros(5, 2), 4.0)})
    now = Payload(plan, init={"m": LoraFactors(2 * torch.ones(2, 3), torch.ones(5, 2), 4.0)})
    sent = Update("c", {"m": LoraFactors(torch.full((2, 3), 1.5), torch.full((5, 2), 0.25), 4.0)}, 10)
    out = rebase_update(sent, then, now, staleness_weight(3, 0.5))
    torch.testing.assert_close(out.factors["m"].A, torch.full((2, 3), 2.5))   # 2 + (1.5 - 1)
    torch.testing.assert_close(out.factors["m"].B, torch.full((5, 2), 1.25))  # 1 + (0.25 - 0)
    assert out.num_examples == round(1000 * 10 * 0.5)                         # (1 + 3)^-0.5


def _async_config(data_file, rounds=4, per_round=2, **run):
    return tiny_config(data_file, run={"rounds": rounds, "mode": "async", "buffer_size": 1, **run},
                       clients={"speeds": [10.0, 10.0, 10.0, 1.0], "clients_per_round": per_round})


def test_async_mode_a_ten_times_slower_client_never_blocks_and_arrives_stale(data_file, tmp_path):
    # all 4 clients in flight, one update per aggregation: the slow client (4 steps at 1 step/s) arrives at t = 4 s
    result = Engine(_async_config(data_file, rounds=32, per_round=4), tmp_path / "a").run()
    rounds = [r for r in result.records if r["type"] == "round"]
    clients = [r for r in result.records if r["type"] == "client"]
    assert result.completed_rounds == 32 and all(r["accepted"] == 1 for r in rounds)
    assert max(r["sim_seconds"] for r in rounds) <= 0.4 + 1e-9  # no aggregation ever waits for the slow client
    (slow,) = [c for c in clients if c["speed"] == 1.0]
    assert slow["sim_arrival"] == pytest.approx(4.0) and slow["staleness"] >= 20 and slow["status"] == "ok"
    assert rounds[-1]["sim_clock"] == pytest.approx(sum(r["sim_seconds"] for r in rounds))
    # the same seed gives the same run
    again = Engine(_async_config(data_file, rounds=32, per_round=4), tmp_path / "b").run()
    _assert_same_adapter(result.strategy.global_adapter(), again.strategy.global_adapter())
    assert [c["client"] for c in clients] == [c["client"] for c in again.records if c["type"] == "client"]


def test_async_resume_equals_the_uninterrupted_run(data_file, tmp_path):
    full = Engine(_async_config(data_file), tmp_path / "full").run()
    Engine(_async_config(data_file), tmp_path / "split").run(stop_after=2)
    resumed = Engine(_async_config(data_file), tmp_path / "split").run(resume=True)
    _assert_same_adapter(full.strategy.global_adapter(), resumed.strategy.global_adapter())


def test_async_refuses_methods_that_cannot_rebase(data_file):
    from fedlora.config import ConfigError

    with pytest.raises(ConfigError, match="run.mode = 'async' works with strategies"):
        tiny_config(data_file, run={"mode": "async"}, strategy={"name": "flora"})
    with pytest.raises(ConfigError, match="train.lockstep"):
        tiny_config(data_file, run={"mode": "async"}, train={"lockstep": True})
