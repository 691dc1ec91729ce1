"""fedlora's Flower app on Flower's own simulation runtime (``flwr run APP local``, Ray) reaches the same
global adapter as the in-process engine for one seed. About a minute on 2 cores (Ray start-up)."""

from __future__ import annotations

import tomllib

import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")

from test_flower_inprocess import CONFIG, _assert_same_adapter, _checkpoint_adapter  # noqa: E402

from fedlora.config import parse_config  # noqa: E402
from fedlora.engine.run import Engine  # noqa: E402
from fedlora.flower.app_dir import write_app  # noqa: E402
from fedlora.flower.simulation import simulate_with_flower  # noqa: E402

pytestmark = pytest.mark.integration


def test_flower_simulation_runtime_equals_the_in_process_engine(tmp_path):
    text = CONFIG.replace("budgets = [1100000, 1250000, 2000000]\n", "")
    engine = Engine(parse_config(tomllib.loads(text)), tmp_path / "engine").run()
    app = write_app(text, tmp_path / "app", options={"out-dir": str(tmp_path / "results"), "eval-nodes": 1, "round-timeout": 120.0})
    out = simulate_with_flower(app, tmp_path, num_supernodes=3, timeout=600)
    assert "[fedlora] round 2: 3/3 accepted" in out
    _assert_same_adapter(_checkpoint_adapter(tmp_path / "results", "flexlora"), engine.strategy.global_adapter())


def test_a_failed_serverapp_makes_fedlora_flower_simulate_exit_non_zero(tmp_path, capsys):
    from fedlora.flower.cli import main

    # 3 simulated nodes but min-replies = 5: the ServerApp raises; `flwr run` itself would exit 0
    code = main(["simulate", "--smoke", "--nodes", "3", "--workdir", str(tmp_path), "--set", "min-replies=5", "--timeout", "600"])
    err = capsys.readouterr().err
    assert code == 1 and "Flower simulation failed" in err and "Exit Code" in err
