"""fedlora.export: the exported global adapter loads with PEFT and reproduces the engine's model."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from fedlora.config import parse_config
from fedlora.engine.run import Engine
from fedlora.export import export_run, run_global_adapter
from fedlora.testing import tiny_llama

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tiny model gains nothing from threads, and on a shared CPU extra threads spin-wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


IDS = torch.tensor([[2, 80, 90, 100, 110, 3, 70, 71]])


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    rows = [{"instruction": "Name the colour.", "input": f"item {i}", "output": ["red", "green", "blue"][i % 3],
             "task": f"t{i % 2}"} for i in range(24)]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _run(data_file, tmp_path, strategy: str) -> Engine:
    cfg = parse_config({
        "run": {"rounds": 2, "seed": 5}, "model": {"name": "tiny"},
        "data": {"source": "jsonl", "train_path": str(data_file), "num_clients": 3, "partition": "iid", "max_eval_per_task": 2},
        "clients": {"ranks": [2, 4, 8]}, "strategy": {"name": strategy},
        "train": {"local_steps": 3, "lr": 2e-2, "max_length": 32}, "eval": {"generate": False, "seen": False, "heldout": False},
    })  # fmt: skip
    engine = Engine(cfg, tmp_path / "run")
    engine.run()
    return engine


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.parametrize("strategy", ["flexlora", "flora", "hetlora"])
def test_exported_adapter_loads_with_peft_and_reproduces_the_engine(strategy, data_file, tmp_path):
    engine = _run(data_file, tmp_path, strategy)
    with engine.trainer.use_adapter(engine.strategy.global_adapter()) as model:
        expected = _logits(model)
    paths = export_run(engine.run_dir)
    assert (paths["adapter"] / "adapter_config.json").is_file()
    base, _ = tiny_llama(seed=0)
    with torch.no_grad():
        plain = _logits(base)
    peft_model = PeftModel.from_pretrained(base, str(paths["adapter"])).eval()
    got = _logits(peft_model)
    assert not torch.allclose(plain, expected, atol=1e-4)  # the adapter does something
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_merged_export_matches_the_adapter(data_file, tmp_path):
    engine = _run(data_file, tmp_path, "flexlora")
    with engine.trainer.use_adapter(engine.strategy.global_adapter()) as model:
        expected = _logits(model)
    paths = export_run(engine.run_dir, tmp_path / "out", merged=True, model_and_tokenizer=tiny_llama(seed=0))
    merged = AutoModelForCausalLM.from_pretrained(str(paths["merged"])).eval()
    torch.testing.assert_close(_logits(merged), expected, atol=1e-4, rtol=1e-4)
    assert (paths["merged"] / "tokenizer_config.json").is_file()


def test_global_adapter_of_a_run_dir(data_file, tmp_path):
    engine = _run(data_file, tmp_path, "flexlora")
    cfg, adapter, round_ = run_global_adapter(engine.run_dir)
    assert cfg == engine.cfg and round_ == 2
    assert sorted(adapter) == sorted(engine.strategy.global_adapter())


def test_export_of_a_folder_without_run_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no checkpoint.pt"):
        export_run(tmp_path)


def test_export_at_a_chosen_rank_keeps_the_best_approximation_and_reports_its_energy(data_file, tmp_path):
    from fedlora.lora.linalg import best_rank_factors

    engine = _run(data_file, tmp_path, "flexlora")
    full = engine.strategy.global_adapter()
    assert max(f.rank for f in full.values()) > 4  # the stacked rank of ranks 2, 4, 8
    paths = export_run(engine.run_dir, tmp_path / "r4", rank=4)
    assert 0 < paths["energy_min"] <= paths["energy"] < 1
    f = next(iter(full.values()))
    low, kept, total = best_rank_factors(f, 4)
    U, S, Vh = torch.linalg.svd(f.delta(torch.float64))
    torch.testing.assert_close(low.delta(torch.float64), U[:, :4] * S[:4] @ Vh[:4], rtol=1e-4, atol=1e-6)
    assert kept / total == pytest.approx(float(S[:4].square().sum() / S.square().sum()), rel=1e-6)
    config = json.loads((paths["adapter"] / "adapter_config.json").read_text())
    assert config["r"] <= 4 and all(r <= 4 for r in config.get("rank_pattern", {}).values())


@pytest.mark.parametrize("strategy", ["fedsa", "feddpa"])
def test_a_clients_personalised_adapter_exports_and_reproduces_its_model(strategy, data_file, tmp_path):
    from fedlora.cli import main

    engine = _run(data_file, tmp_path, strategy)
    personal = dict(engine.strategy.personal_adapters())
    cid = sorted(personal)[0]
    with engine.trainer.use_adapter(personal[cid]) as model:
        expected = _logits(model)
    paths = export_run(engine.run_dir, tmp_path / "out", client=cid)
    peft_model = PeftModel.from_pretrained(tiny_llama(seed=0)[0], str(paths["adapter"])).eval()
    torch.testing.assert_close(_logits(peft_model), expected, atol=1e-5, rtol=1e-5)
    assert main(["export", str(engine.run_dir), "--client", "nobody"]) == 2


def test_client_export_of_a_method_without_personal_models_is_a_clear_error(data_file, tmp_path, capsys):
    from fedlora.cli import main

    engine = _run(data_file, tmp_path, "fedit")
    assert main(["export", str(engine.run_dir), "--client", "client_000"]) == 2
    assert "keeps no per-client adapters" in capsys.readouterr().err


def _load_benchmark_script(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sample_answers_generates_from_the_runs_global_model(data_file, tmp_path, capsys):
    from fedlora.eval.generation import generate_answers

    script = _load_benchmark_script("sample_answers")
    assert script.evenly_spaced(list(range(10)), 4) == [0, 2, 5, 7] and script.evenly_spaced([1, 2], 5) == [1, 2]
    assert script.mostly("12-3a", str.isdigit) and not script.mostly("ab1", str.isdigit) and not script.mostly("", str.isdigit)
    assert script.mostly("ਸਿਤਰ x", script.is_non_latin) and not script.mostly("café", script.is_non_latin)
    engine = _run(data_file, tmp_path, "flexlora")
    rows = script.sample_answers(str(engine.run_dir), 2, split="eval", max_new_tokens=4)
    examples = script.evenly_spaced(engine.data.eval, 2)
    assert [(t, r) for t, r, _ in rows] == [(ex.task, ex.output) for ex in examples]
    with engine.trainer.use_adapter(engine.strategy.global_adapter()) as model:  # the engine's own global model
        expected = generate_answers(model, engine.trainer.tokenizer, examples, max_new_tokens=4)
    assert [a for _, _, a in rows] == expected and any(expected)
    assert script.main([str(engine.run_dir), "--n", "2", "--split", "eval", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "(eval):" in out and out.count("reference") == 2
    with pytest.raises(ValueError, match="split 'train'"):
        script.sample_answers(str(engine.run_dir), 2, split="train")


def test_eval_checkpoint_reproduces_the_runs_own_evaluation_of_each_kept_round(data_file, tmp_path, capsys):
    script = _load_benchmark_script("eval_checkpoint")
    cfg = parse_config({
        "run": {"rounds": 2, "seed": 3, "eval_every": 1, "keep_checkpoints": 2}, "model": {"name": "tiny"},
        "data": {"source": "jsonl", "train_path": str(data_file), "num_clients": 3, "partition": "iid", "max_eval_per_task": 4},
        "clients": {"ranks": [2, 4, 8]}, "strategy": {"name": "flexlora"},
        "train": {"local_steps": 3, "lr": 5e-2, "max_length": 32},
        "eval": {"max_new_tokens": 3, "seen_per_task": 3, "heldout": False},  # 3 of each task's 4 eval examples
    })  # fmt: skip
    engine = Engine(cfg, tmp_path / "run")
    engine.run()
    records = [json.loads(line) for line in (engine.run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = {r["round"]: r for r in records if r.get("type") == "eval" and r.get("split") == "eval"}
    assert logged[1]["loss"] != logged[2]["loss"]  # the two rounds' models differ, so matching each is a real check
    for age, server_round in ((0, 2), (1, 1)):
        got_round, metrics = script.evaluate_checkpoint(engine.run_dir, age, "eval")
        assert got_round == server_round
        assert metrics["n_examples"] == logged[server_round]["n_examples"] == 6
        for key in ("loss", "rougeL", "rougeL_tf"):
            assert metrics[key] == pytest.approx(logged[server_round][key], abs=1e-4), (age, key)
    assert script.main([str(engine.run_dir), "--checkpoints", "1", "--split", "eval"]) == 0
    out = capsys.readouterr().out
    assert "round 1 (checkpoint.1.pt), eval: rougeL" in out and "the run's own log, round 1" in out
    with pytest.raises(FileNotFoundError, match="checkpoint.2.pt does not exist; the run keeps checkpoint.pt, checkpoint.1.pt"):
        script.evaluate_checkpoint(engine.run_dir, 2)


def test_an_exported_adapter_names_the_hub_id_and_records_the_local_source():
    from fedlora.config import ModelSection
    from fedlora.engine.build import model_name_or_path

    assert model_name_or_path(ModelSection(name="bundled:smollm2")) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert model_name_or_path(ModelSection(name="Qwen/Qwen2.5-0.5B")) == "Qwen/Qwen2.5-0.5B"
