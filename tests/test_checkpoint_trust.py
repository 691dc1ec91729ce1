"""Checkpoints and run folders you can trust: hashes, fallback, locking, no lost history, torn logs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from test_engine import _assert_same_adapter, data_file, tiny_config  # noqa: F401  (fixture)

from fedlora.engine.checkpoint import CheckpointError, checkpoint_files, load_checkpoint, save_checkpoint
from fedlora.engine.lock import RunFolderLocked, RunLock
from fedlora.engine.metrics_log import read_metrics
from fedlora.engine.run import Engine, RunError


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _state(k: int) -> dict:
    return {"round": k, "weights": torch.full((3,), float(k))}


def test_the_last_k_are_kept_and_each_is_verified(tmp_path):
    for k in range(1, 5):
        save_checkpoint(tmp_path, _state(k), keep=3)
    files = checkpoint_files(tmp_path)
    assert [p.name for p in files] == ["checkpoint.pt", "checkpoint.1.pt", "checkpoint.2.pt"]
    assert load_checkpoint(tmp_path)["round"] == 4
    assert files[0].read_bytes().startswith(b"FEDLORA-CHECKPOINT sha256=")


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "garbage", "header"])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage):
    save_checkpoint(tmp_path, _state(1))
    save_checkpoint(tmp_path, _state(2))
    newest = tmp_path / "checkpoint.pt"
    raw = bytearray(newest.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0xFF
    elif damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "empty":
        raw = bytearray()
    elif damage == "garbage":
        raw = bytearray(b"not a checkpoint at all" * 10)
    else:
        raw = raw[:20]
    newest.write_bytes(bytes(raw))
    lines: list[str] = []
    state = load_checkpoint(tmp_path, warn=lines.append)
    assert state["round"] == 1 and torch.equal(state["weights"], torch.ones(3))
    assert len(lines) == 1 and str(newest) in lines[0] and "falling back to checkpoint.1.pt" in lines[0]
    assert "\n" not in lines[0] and "weights_only" not in lines[0]


def test_no_readable_checkpoint_is_one_clear_error(tmp_path):
    save_checkpoint(tmp_path, _state(1), keep=1)
    (tmp_path / "checkpoint.pt").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="no readable checkpoint") as err:
        load_checkpoint(tmp_path, warn=lambda _: None)
    assert "Traceback" not in str(err.value)


def test_checkpoints_of_fedlora_0_1_without_a_hash_still_load(tmp_path):
    torch.save({"format": 1, "round": 7}, tmp_path / "checkpoint.pt")
    assert load_checkpoint(tmp_path)["round"] == 7


def test_resume_from_a_corrupted_newest_checkpoint_equals_an_uninterrupted_run(data_file, tmp_path):  # noqa: F811
    cfg = tiny_config(data_file, run={"rounds": 3})
    reference = Engine(cfg, tmp_path / "ref").run()
    Engine(cfg, tmp_path / "run").run(stop_after=2)  # checkpoints after rounds 1 and 2
    newest = tmp_path / "run" / "checkpoint.pt"
    raw = bytearray(newest.read_bytes())
    raw[-100] ^= 0x01
    newest.write_bytes(bytes(raw))
    resumed = Engine(cfg, tmp_path / "run").run(resume=True)  # falls back to round 1: one interval lost
    _assert_same_adapter(resumed.strategy.global_adapter(), reference.strategy.global_adapter())
    assert [r["round"] for r in read_metrics(tmp_path / "run") if r["type"] == "round"] == [1, 2, 3]


def test_a_second_process_on_the_same_folder_is_refused(data_file, tmp_path):  # noqa: F811
    with RunLock(tmp_path / "run"):
        with pytest.raises(RunFolderLocked, match="in use by fedlora pid"):
            RunLock(tmp_path / "run").acquire()
        with pytest.raises(RunError, match="one run folder takes one process at a time"):
            Engine(tiny_config(data_file, run={"rounds": 1}), tmp_path / "run").run()
    code = textwrap.dedent(f"""
        from fedlora.engine.lock import RunLock, RunFolderLocked
        try:
            RunLock({str(tmp_path / 'other')!r}).acquire()
        except RunFolderLocked as err:
            print("refused", err)
    """)
    with RunLock(tmp_path / "other"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.startswith("refused") and "in use by fedlora pid" in out
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out == ""  # released: the lock does not outlive its holder


def test_a_fresh_run_never_truncates_an_existing_history(data_file, tmp_path):  # noqa: F811
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text(json.dumps({"type": "round", "round": 1}) + "\n")
    with pytest.raises(RunError, match="holds a metrics history"):
        Engine(tiny_config(data_file, run={"rounds": 1}), folder).run()
    assert (folder / "metrics.jsonl").read_text().count("\n") == 1


def test_stale_temp_files_of_an_interrupted_write_are_removed(data_file, tmp_path):  # noqa: F811
    folder = tmp_path / "run"
    folder.mkdir()
    stale = folder / ".checkpoint.pt.abc123"
    stale.write_bytes(b"half a checkpoint")
    Engine(tiny_config(data_file, run={"rounds": 1}), folder).run()
    assert not stale.exists() and (folder / "checkpoint.pt").is_file()


def test_read_metrics_tolerates_a_torn_last_line_only(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"type": "round", "round": 1}\n{"type": "ro')
    with pytest.warns(UserWarning, match="last line is torn"):
        assert read_metrics(path) == [{"type": "round", "round": 1}]
    path.write_text('{"type": "ro\n{"type": "round", "round": 1}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:1"):
        read_metrics(path)


def test_killed_during_a_checkpoint_write_then_resumed_equals_an_uninterrupted_run(data_file, tmp_path, monkeypatch):  # noqa: F811
    import os

    import fedlora.engine.checkpoint as ckpt_module

    cfg = tiny_config(data_file, run={"rounds": 3})
    reference = Engine(cfg, tmp_path / "ref").run()
    real_replace, writes = os.replace, []

    def dies_on_the_second_write(src, dst):
        if str(dst).endswith("checkpoint.pt") and str(src).startswith(str(tmp_path / "run")):
            writes.append(dst)
            if len(writes) == 2:  # round 2: the previous checkpoint was rotated, the new one never lands
                raise KeyboardInterrupt("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt_module.os, "replace", dies_on_the_second_write)
    with pytest.raises(KeyboardInterrupt):
        Engine(cfg, tmp_path / "run").run()
    monkeypatch.setattr(ckpt_module.os, "replace", real_replace)
    assert not (tmp_path / "run" / "checkpoint.pt").exists() and (tmp_path / "run" / "checkpoint.1.pt").exists()
    resumed = Engine(cfg, tmp_path / "run").run(resume=True)
    _assert_same_adapter(resumed.strategy.global_adapter(), reference.strategy.global_adapter())
    assert not list((tmp_path / "run").glob(".checkpoint.pt.*"))
