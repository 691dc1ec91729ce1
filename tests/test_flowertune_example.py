"""The FlowerTune entry (examples/flowertune_llm) runs as a FlowerTune user runs it: ``flwr run`` with the
template's config, here on the tiny model and a local Alpaca-style file, three SuperNodes at three ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")

from fedlora.flower.deploy import free_port  # noqa: E402
from fedlora.flower.simulation import stop_local_superlink  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "flowertune_llm"


def test_the_entry_keeps_the_flowertune_template_layout():
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    flwr = project["tool"]["flwr"]
    config = flwr["app"]["config"]
    assert config["static"] == {"dataset": {"name": "vicgalle/alpaca-gpt4"}}  # the GeneralNLP challenge's, untouched
    assert "federations" not in flwr  # flwr 1.42 would move it out of the file on the first run
    assert "--federation-config 'num-supernodes=20 " in (EXAMPLE / "pyproject.toml").read_text()  # the template's 20 nodes
    assert config["model"]["quantization"] == 4 and config["strategy"]["fraction-evaluate"] == 0.0
    levels = [int(r) for r in config["fedlora"]["rank-levels"].split(",")]
    assert len(set(levels)) > 1 and max(levels) == config["model"]["lora"]["peft-lora-r"]  # heterogeneous ranks


@pytest.mark.integration
def test_flwr_run_of_the_flowertune_entry_writes_a_plain_peft_adapter_and_its_communication(tmp_path):
    peft = pytest.importorskip("peft")
    data = tmp_path / "alpaca.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Repeat the number {i}.", "input": "" if i % 2 else f"n={i}",
                                        "output": f"{i} {i}"}) + "\n" for i in range(60)))  # fmt: skip
    http_port, control_port = free_port(), free_port()
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"), "FLWR_TELEMETRY_ENABLED": "0",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port), "FLWR_LOCAL_CONTROL_API_PORT": str(control_port)}  # fmt: skip
    results = tmp_path / "results"
    overrides = (f'model.name="tiny" model.quantization=0 num-server-rounds=2 static.dataset.name="{data}" '
                 f'fedlora.results-dir="{results}" train.training-arguments.max-steps=2 '
                 "train.training-arguments.per-device-train-batch-size=2 train.seq-length=64 strategy.fraction-fit=1.0")  # fmt: skip
    cmd = ["flwr", "run", str(EXAMPLE), "--stream", "--run-config", overrides, "--federation-config", "num-supernodes=3"]
    try:
        proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    finally:
        stop_local_superlink(http_port)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Exit Code" not in log, log[-3000:]
    assert "3 SuperNodes: not a leaderboard run" in log
    [run] = list(results.iterdir())
    comm = json.loads((run / "communication.json").read_text())
    assert [r["nodes"] for r in comm["rounds"]] == [3, 3]
    assert comm["rounds"][0]["bytes_sent"] == 0 < comm["rounds"][1]["bytes_sent"]  # FlexLoRA sends no factors in round 1
    assert comm["total_bytes"] == sum(r["bytes_sent"] + r["bytes_received"] for r in comm["rounds"])
    config = json.loads((run / "peft_2" / "adapter_config.json").read_text())
    assert config["r"] == 8 + 16 + 32  # FlexLoRA's global update exactly: the round's factors side by side
    from fedlora.testing import tiny_llama

    model = peft.PeftModel.from_pretrained(tiny_llama(seed=0)[0], str(run / "peft_2"))
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.abs().sum()) > 0 for p in lora_b)  # trained, not the zero init
