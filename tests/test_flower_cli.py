"""``fedlora flower ...``: the app folder is a valid Flower app, certificates and node keys are in
the formats Flower reads, bad settings fail early with a reason, ``simulate`` runs a federation."""

from __future__ import annotations

import re

import tomllib

import pytest

pytest.importorskip("flwr")

from fedlora.flower.cli import main  # noqa: E402

TINY = """
[run]
rounds = 1
[model]
name = "tiny"
target_modules = ["q_proj"]
[data]
tasks = ["rt_sentiment", "headline_source"]
heldout_tasks = []
num_clients = 2
max_train_per_task = 4
max_eval_per_task = 2
[clients]
ranks = [2, 4]
[train]
local_steps = 1
batch_size = 2
max_length = 48
[eval]
max_length = 48
generate = false
"""


def test_app_folder_is_a_valid_flower_app(tmp_path):
    from flwr.common.config import validate_config

    (tmp_path / "run.toml").write_text(TINY)
    assert main(["app", str(tmp_path / "run.toml"), "--out", str(tmp_path / "app"), "--set", "round-timeout=30", "--set", "train.lr=0.01"]) == 0
    pyproject = tomllib.loads((tmp_path / "app" / "pyproject.toml").read_text())
    valid, errors, _ = validate_config(pyproject, check_module=True, project_dir=tmp_path / "app")
    assert valid, errors
    config = pyproject["tool"]["flwr"]["app"]["config"]
    assert config["fedlora-config"] == TINY and config["round-timeout"] == 30.0 and config["fedlora-set"] == "train.lr=0.01"
    assert config["out-dir"] == ""  # no absolute path of this machine: a copied app does not write into this folder
    assert str(tmp_path) not in (tmp_path / "app" / "pyproject.toml").read_text()


def test_fedlora_set_is_always_a_known_run_config_key(tmp_path):
    # Flower refuses `--run-config` keys the app does not declare: an app written without --set must still take it
    (tmp_path / "run.toml").write_text(TINY)
    assert main(["app", str(tmp_path / "run.toml"), "--out", str(tmp_path / "app")]) == 0
    config = tomllib.loads((tmp_path / "app" / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert config["fedlora-set"] == ""


def test_a_failed_serverapp_is_detected_in_the_streamed_log():
    from fedlora.flower.deploy import serverapp_failure

    ok = "Successfully started run 7\n[fedlora] round 1 ...\n[fedlora] done: results in /x\n"
    assert serverapp_failure(ok) is None
    assert serverapp_failure("Successfully started run 7\nExit Code: 201\nServerApp raised\n") == "Exit Code: 201"
    assert "never reported" in serverapp_failure("Successfully started run 7\n")


def test_bad_settings_and_configs_fail_before_anything_runs(tmp_path, capsys):
    (tmp_path / "run.toml").write_text(TINY.replace("local_steps = 1", "local_steps = 0"))
    assert main(["app", str(tmp_path / "run.toml"), "--out", str(tmp_path / "a")]) == 1
    assert "train.local_steps" in capsys.readouterr().err
    assert main(["app", "--smoke", "--out", str(tmp_path / "b"), "--set", "round-timeout=-1"]) == 1
    assert "round-timeout" in capsys.readouterr().err


def test_certs_are_in_the_formats_flower_reads(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    assert main(["certs", str(tmp_path), "--nodes", "2"]) == 0
    cert = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    cert.verify_directly_issued_by(ca)
    for i in range(2):
        assert isinstance(load_ssh_public_key((tmp_path / f"supernode-{i}.pub").read_bytes()), ec.EllipticCurvePublicKey)
        assert isinstance(load_ssh_private_key((tmp_path / f"supernode-{i}").read_bytes(), None), ec.EllipticCurvePrivateKey)
    assert (tmp_path / "server.key").stat().st_mode & 0o077 == 0


def test_simulate_runs_a_config_in_process(tmp_path, capsys):
    (tmp_path / "run.toml").write_text(TINY)
    assert main(["simulate", str(tmp_path / "run.toml"), "--workdir", str(tmp_path / "w")]) == 0
    assert re.search(r"1\s+rounds", capsys.readouterr().out)  # the table title may wrap
    assert (tmp_path / "w" / "results" / "adapter" / "adapter_model.safetensors").exists()
