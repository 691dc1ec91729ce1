"""fedlora.cli smoke tests through ``main([...])`` on the tiny model."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

from fedlora.cli import main

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tiny model gains nothing from threads, and on a shared CPU extra threads spin-wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = str(Path(__file__).resolve().parents[1] / "examples" / "tiny.toml")
FAST = ["--set", "run.rounds=1", "--set", "data.max_train_per_task=8", "--set", "train.local_steps=2", "--set", "eval.generate=false"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["run", TINY, "--out", str(out), "--quiet", *FAST]) == 0
    return out


def test_run_writes_the_run_folder(run_dir, capsys):
    for name in ("config.toml", "metrics.jsonl", "checkpoint.pt", "summary.json"):
        assert (run_dir / name).is_file(), name


def test_run_twice_without_resume_is_refused(run_dir, capsys):
    assert main(["run", TINY, "--out", str(run_dir), "--quiet", *FAST]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_resume_of_a_finished_run_extends_it(run_dir, capsys, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    assert main(["run", TINY, "--out", str(copy), "--quiet", "--resume", *FAST, "--set", "run.rounds=2"]) == 0
    assert "2 rounds" in capsys.readouterr().out


def test_report_prints_the_summary_and_writes_plots(run_dir, capsys, tmp_path):
    assert main(["report", str(run_dir), "--plots", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "heldout" in out and "before" in out
    assert {p.name for p in tmp_path.glob("*.png")} == {"train_loss.png", "eval.png", "communication.png"}


def test_report_compares_several_runs(run_dir, capsys, tmp_path):
    assert main(["report", str(run_dir), str(run_dir), "--plots", str(tmp_path)]) == 0
    assert "flexlora" in capsys.readouterr().out


def test_export_writes_a_peft_adapter(run_dir, tmp_path, capsys):
    assert main(["export", str(run_dir), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert "PeftModel.from_pretrained" in capsys.readouterr().out


def test_plan_prints_a_table_and_writes_a_heat_map(tmp_path, capsys):
    assert main(["plan", TINY, "--out", str(tmp_path)]) == 0
    assert "client_000" in capsys.readouterr().out
    assert (tmp_path / "plan_heatmap.png").is_file()


def test_config_errors_exit_2_with_one_clean_message(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[train]\nlrr = 1\nbatch_size = 0\n[model]\nname = "tiny"\n')
    assert main(["run", str(bad), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "invalid" in err and "train.lrr: unknown key; did you mean 'lr'?" in err and "train.batch_size = 0" in err
    assert "Traceback" not in err
    assert main(["run", TINY, "--set", "train.lr=-1", "--out", str(tmp_path / "r")]) == 2
    assert "train.lr = -1" in capsys.readouterr().err


def test_missing_run_folder_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert main(["export", str(tmp_path)]) == 2


def test_flower_and_bench_dispatch(monkeypatch, capsys):
    seen = {}
    fake = types.ModuleType("fedlora.flower.cli")
    fake.main = lambda argv: seen.setdefault("argv", argv) and 0
    monkeypatch.setitem(sys.modules, "fedlora.flower.cli", fake)
    assert main(["flower", "run", "--x", "1"]) == 0
    assert seen["argv"] == ["run", "--x", "1"]
    monkeypatch.setitem(sys.modules, "fedlora.bench", None)
    assert main(["bench"]) == 2
    assert "not available" in capsys.readouterr().err


def test_plan_of_a_fedpilot_config_shows_budgets(tmp_path, capsys):
    budgets = 'clients.budgets=["1.5MiB", "2MiB", "3MiB", "4MiB"]'
    args = ["plan", TINY, "--out", str(tmp_path), "--set", "strategy.name=fedpilot", "--set", budgets, "--set", "clients.fedpilot_rank=4"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "allocation fedpilot" in out and "MiB" in out
    assert (tmp_path / "plan_heatmap.png").is_file()


def test_data_problems_exit_2_with_the_reason(tmp_path, capsys):
    assert main(["run", TINY, "--out", str(tmp_path / "r"), "--quiet", "--set", "data.num_clients=5000"]) == 2
    err = capsys.readouterr().err
    assert "[data]" in err and "5000" in err and "Traceback" not in err


def test_quiet_resume_after_a_corrupted_checkpoint_still_warns_and_records_it(run_dir, tmp_path, capsys):
    import json
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    assert main(["run", TINY, "--out", str(copy), "--quiet", *FAST, "--set", "run.rounds=2", "--resume"]) == 0
    newest = copy / "checkpoint.pt"
    raw = bytearray(newest.read_bytes())
    raw[-100] ^= 0x01
    newest.write_bytes(bytes(raw))
    capsys.readouterr()
    assert main(["run", TINY, "--out", str(copy), "--quiet", *FAST, "--set", "run.rounds=2", "--resume"]) == 0
    err = capsys.readouterr().err
    assert "fedlora: warning: checkpoint" in err and "falling back to checkpoint.1.pt" in err
    warnings = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines() if '"warning"' in line]
    assert warnings and "falling back" in warnings[-1]["text"]


def test_resume_of_a_missing_folder_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "never-ran"
    assert main(["run", TINY, "--out", str(missing), "--quiet", "--resume", *FAST]) == 2
    assert "does not exist" in capsys.readouterr().err and not missing.exists()


def test_report_and_export_of_an_unfinished_run_warn(tmp_path, capsys):
    from fedlora.config import load_config
    from fedlora.engine.run import Engine

    overrides = [v for v in FAST if v != "--set" and not v.startswith("run.rounds")] + ["run.rounds=3"]
    run = tmp_path / "stopped"
    Engine(load_config(TINY, overrides), run).run(stop_after=1)  # killed after round 1 of 3
    capsys.readouterr()
    assert main(["report", str(run), "--plots", str(tmp_path / "plots")]) == 0
    assert "is unfinished: 1 of 3 rounds" in capsys.readouterr().err
    assert main(["export", str(run), "--out", str(tmp_path / "export")]) == 0
    assert "exported the checkpoint after round 1 of 3" in capsys.readouterr().err
    import json

    record = json.loads((tmp_path / "export" / "adapter" / "fedlora_export.json").read_text())
    assert record["local_source"] == "tiny" and (record["round"], record["rounds"]) == (1, 3)
