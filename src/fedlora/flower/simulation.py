"""Run a fedlora Flower app on Flower's own simulation runtime (``flwr[simulation]``, Ray), as Flower
users simulate: ``flwr run <app> local --stream --federation-config 'num-supernodes=N'``.

``flwr`` starts a managed local SuperLink in simulation mode for a ``:local-in-memory:`` connection;
here it gets a private ``FLWR_HOME`` under ``workdir``, free ports
(``FLWR_LOCAL_SUPERLINK_HTTP_API_PORT``, ``FLWR_LOCAL_CONTROL_API_PORT``), telemetry off, and no
runtime dependency installation (the app's dependencies are this environment's). Simulated
SuperNodes get ``partition-id`` / ``num-partitions`` from Flower, as deployed nodes get them from
``--node-config``. ClientApps run in long-lived Ray actors, so the base model stays loaded across
messages. Afterwards the managed SuperLink (a detached process) is stopped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping

import psutil

from fedlora.flower.deploy import FlowerRunError, flower_binary, format_node_config, free_port, serverapp_failure

__all__ = ["simulation_available", "simulate_with_flower", "stop_local_superlink"]


def simulation_available() -> bool:
    """Whether Flower's simulation runtime (Ray) is installed."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def simulate_with_flower(app_dir: str | os.PathLike, workdir: str | os.PathLike, *, num_supernodes: int,
                         run_config: Mapping[str, object] | None = None, timeout: float = 1800.0) -> str:  # fmt: skip
    """``flwr run`` the app on ``num_supernodes`` simulated nodes; return its streamed output.

    Raises:
        FlowerRunError: Flower's simulation runtime is missing, the run did not finish in ``timeout`` s,
            or the ServerApp failed (``flwr run`` itself exits 0 then).
    """
    if not simulation_available():
        raise FlowerRunError("Flower's simulation runtime needs Ray: pip install 'fedlora[flower]' (it brings flwr[simulation]); "
                             "or run a local deployment: `fedlora flower local CONFIG.toml`")  # fmt: skip
    workdir = Path(workdir).resolve()
    home = workdir / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text('[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local-in-memory:"\n')
    http_port, control_port = free_port(), free_port()
    env = dict(os.environ)
    env.update({
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port), "FLWR_LOCAL_CONTROL_API_PORT": str(control_port),
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    })  # fmt: skip
    args = [flower_binary("flwr"), "run", str(Path(app_dir).resolve()), "local", "--stream",
            "--federation-config", f"num-supernodes={int(num_supernodes)}"]  # fmt: skip
    if run_config:
        args += ["--run-config", format_node_config(run_config)]
    log = workdir / "flwr-simulation.log"
    try:
        with log.open("wb") as fh:
            code = subprocess.run(args, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=workdir, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        raise FlowerRunError(f"the Flower simulation did not finish within {timeout:g} s; see {log}") from None
    finally:
        stop_local_superlink(http_port)
    out = log.read_text(errors="replace")
    failure = None if code == 0 else f"flwr run exited {code}"
    failure = failure or serverapp_failure(out)
    if failure:
        raise FlowerRunError(f"Flower simulation failed ({failure}); see {log}:\n" + "\n".join(out.splitlines()[-30:]))
    return out


def stop_local_superlink(http_port: int) -> None:
    """Stop the detached local SuperLink that ``flwr run`` started on ``http_port`` (and its children)."""
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if any("flower-superlink" in c for c in cmd) and str(http_port) in cmd:
            procs = [*proc.children(recursive=True), proc]
            for p in procs:
                try:
                    p.terminate()
                except psutil.Error:
                    pass
            _, alive = psutil.wait_procs(procs, timeout=10)
            for p in alive:
                try:
                    p.kill()
                except psutil.Error:
                    pass
