"""The custom Flower example runs as a Flower user runs it: ``flwr run APP --stream`` with Flower's defaults
(a fresh FLWR_HOME: the local SuperLink, its simulation with 2 SuperNodes, runtime dependency installation on)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")

from fedlora.flower.deploy import free_port  # noqa: E402
from fedlora.flower.simulation import stop_local_superlink  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "flower_custom_app"


@pytest.mark.integration
def test_flwr_run_of_the_custom_example_with_flowers_defaults(tmp_path):
    http_port, control_port = free_port(), free_port()
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"), "FLWR_TELEMETRY_ENABLED": "0",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port), "FLWR_LOCAL_CONTROL_API_PORT": str(control_port)}  # fmt: skip
    env.pop("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", None)  # Flower's default: install the app's dependencies
    out = tmp_path / "out"
    cmd = ["flwr", "run", str(EXAMPLE), "--stream", "--run-config", f'model="tiny" out-dir="{out}"']
    try:
        proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    finally:
        stop_local_superlink(http_port)  # flwr leaves its local SuperLink running
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Exit Code" not in log, log[-3000:]
    assert "uv sync took" in log  # the runtime dependency installation ran, and found nothing to fetch
    history = json.loads((out / "history.json").read_text())
    assert [len(r["accepted"]) for r in history["rounds"]] == [2, 2]  # both default SuperNodes, both rounds
    assert (out / "adapter" / "adapter_config.json").is_file()
