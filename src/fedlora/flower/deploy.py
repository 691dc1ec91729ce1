"""Start a real Flower federation on this machine: one SuperLink, N SuperNodes, ``flwr run``.

Used by ``fedlora flower local`` and by the integration tests. Everything listens on loopback
(127.0.0.1) on free ports picked at start, ``FLWR_HOME`` is a private folder, telemetry is off and
the SuperLink never installs dependencies at run time. Each process starts in its own process
group, and :meth:`LocalFederation.stop` ends exactly those groups (the SuperLink's and
SuperNodes' SuperExec and app subprocesses with them).

With ``secure=True`` the SuperLink serves TLS with a fresh CA (``certs.write_credentials``) and
admits only SuperNodes whose public keys were registered with ``flwr supernode register``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import psutil
import tomli_w

from fedlora.flower.certs import Credentials, write_credentials, write_node_key

__all__ = ["LocalFederation", "FlowerRunError", "free_port", "flower_binary", "format_node_config"]

HOST = "127.0.0.1"
CONNECTION = "fedlora-local"


class FlowerRunError(RuntimeError):
    """A Flower process failed to start or a run did not finish; the message names the log to read."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def flower_binary(name: str) -> str:
    """Path of a Flower executable, preferring the one next to this Python (same virtual env)."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise FlowerRunError(f"Flower executable {name!r} not found; install Flower with: pip install 'fedlora[flower]'")
    return found


def format_node_config(config: Mapping[str, object]) -> str:
    """A ``--node-config`` string: ``key=value`` pairs, strings quoted (TOML values)."""
    parts = []
    for key, value in config.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        else:
            text = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen
    log: Path


@dataclass
class LocalFederation:
    """A SuperLink and SuperNodes on loopback, as subprocesses; use as a context manager.

    Args:
        workdir: folder for ``FLWR_HOME``, logs and credentials.
        secure: TLS plus SuperNode authentication (otherwise ``--insecure``).
        env: extra environment variables for every process.
    """

    workdir: Path
    secure: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    port: int = 0
    credentials: Credentials | None = None
    _procs: list[_Proc] = field(default_factory=list)
    _nodes: dict[int, _Proc] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).resolve()
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        self.flwr_home = self.workdir / "flwr-home"
        self.flwr_home.mkdir(exist_ok=True)

    # ------------------------------------------------------------ processes
    @property
    def environ(self) -> dict[str, str]:
        """Environment of every Flower process: private FLWR_HOME, no telemetry, this venv first on PATH."""
        env = dict(os.environ)
        env.update({"FLWR_HOME": str(self.flwr_home), "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1"})
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        env.update(self.env)
        return env

    def _spawn(self, name: str, argv: Sequence[str]) -> _Proc:
        log = self.workdir / "logs" / f"{name}.log"
        with open(log, "ab") as fh:
            popen = subprocess.Popen(list(argv), stdout=fh, stderr=subprocess.STDOUT, env=self.environ, cwd=self.workdir, start_new_session=True)
        proc = _Proc(name, popen, log)
        self._procs.append(proc)
        return proc

    def start_superlink(self, timeout: float = 60.0) -> int:
        """Start the SuperLink on a free port and wait until it accepts connections; return the port."""
        if self.secure and self.credentials is None:
            self.credentials = write_credentials(self.workdir / "certificates", num_nodes=0)
        self.port = free_port()
        argv = [flower_binary("flower-superlink"), "--host", HOST, "--port", str(self.port), "--disable-runtime-dependency-installation"]
        if self.secure:
            c = self.credentials
            argv += ["--ssl-ca-certfile", str(c.ca_cert), "--ssl-certfile", str(c.server_cert), "--ssl-keyfile", str(c.server_key), "--enable-supernode-auth"]
        else:
            argv += ["--insecure"]
        proc = self._spawn("superlink", argv)
        self._wait_for_port(proc, timeout)
        self._write_cli_config()
        return self.port

    def _wait_for_port(self, proc: _Proc, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise FlowerRunError(f"{proc.name} exited with code {proc.popen.returncode}; see {proc.log}:\n{_tail(proc.log)}")
            try:
                with socket.create_connection((HOST, self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.3)
        raise FlowerRunError(f"{proc.name} did not listen on {HOST}:{self.port} within {timeout:g} s; see {proc.log}")

    def _write_cli_config(self) -> None:
        conn: dict[str, object] = {"address": f"{HOST}:{self.port}"}
        if self.secure:
            conn["root-certificates"] = str(self.credentials.ca_cert)
        else:
            conn["insecure"] = True
        config = {"superlink": {"default": CONNECTION, CONNECTION: conn}}
        (self.flwr_home / "config.toml").write_bytes(tomli_w.dumps(config).encode())

    def new_node_key(self, name: str) -> Path:
        """A fresh SuperNode key pair under the credentials folder (not registered)."""
        return write_node_key(self.workdir / "certificates" / name)

    def register(self, private_key: Path) -> None:
        """Register a SuperNode's public key with the SuperLink (``flwr supernode register``)."""
        result = self.flwr(["supernode", "register", str(private_key) + ".pub", CONNECTION], timeout=60)
        if result.returncode != 0:
            raise FlowerRunError(f"flwr supernode register failed ({result.returncode}):\n{result.stdout[-2000:]}")

    def start_supernode(self, index: int, node_config: Mapping[str, object], *, private_key: Path | None = None, register: bool = True) -> _Proc:
        """Start SuperNode ``index``; in secure mode it authenticates with ``private_key`` (new and registered if None)."""
        argv = [flower_binary("flower-supernode"), "--superlink", f"{HOST}:{self.port}", "--port", str(free_port()), "--host", HOST]
        argv += ["--node-config", format_node_config(node_config)]
        if self.secure:
            if private_key is None:
                private_key = self.new_node_key(f"supernode-{index}")
                if register:
                    self.register(private_key)
            argv += ["--root-certificates", str(self.credentials.ca_cert), "--auth-supernode-private-key", str(private_key)]
        else:
            argv += ["--insecure"]
        proc = self._spawn(f"supernode-{index}", argv)
        self._nodes[index] = proc
        return proc

    def kill_supernode(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Kill SuperNode ``index`` and its children (a crash with ``SIGKILL``)."""
        _kill_group(self._nodes[index].popen, sig)

    def flwr(self, args: Sequence[str], *, timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess:
        """Run the ``flwr`` CLI against this federation."""
        return subprocess.run(
            [flower_binary("flwr"), *args], env=self.environ, cwd=cwd or self.workdir, capture_output=False,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
        )  # fmt: skip

    def start_app(self, app_dir: Path, *, run_config: Mapping[str, object] | None = None) -> subprocess.Popen:
        """Start ``flwr run APP --stream`` in the background (output to ``logs/flwr-run.log``)."""
        args = [flower_binary("flwr"), "run", str(Path(app_dir).resolve()), CONNECTION, "--stream"]
        if run_config:
            args += ["--run-config", format_node_config(run_config)]
        log = open(self.workdir / "logs" / "flwr-run.log", "wb")
        popen = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.environ, cwd=self.workdir, start_new_session=True)
        log.close()
        self._procs.append(_Proc("flwr-run", popen, self.workdir / "logs" / "flwr-run.log"))
        return popen

    def wait_app(self, popen: subprocess.Popen, *, timeout: float) -> str:
        """Wait for a run started by :meth:`start_app`; return its output. Raises on failure or timeout."""
        log = self.workdir / "logs" / "flwr-run.log"
        try:
            code = popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(popen, signal.SIGKILL)
            raise FlowerRunError(f"flwr run did not finish within {timeout:g} s; see {log}:\n{_tail(log, 40)}") from None
        out = log.read_text(errors="replace")
        if code != 0 or not re.search(r"Successfully started run \d+", out):
            raise FlowerRunError(f"flwr run failed (exit {code}); see {log}:\n{_tail(log, 40)}")
        failure = serverapp_failure(out)
        if failure:
            raise FlowerRunError(f"the ServerApp failed ({failure}) although flwr run exited 0; see {log}:\n{_tail(log, 40)}")
        return out

    def run_app(self, app_dir: Path, *, run_config: Mapping[str, object] | None = None, timeout: float = 600.0) -> str:
        """``flwr run APP --stream`` until the run ends; return its output. Raises on failure."""
        return self.wait_app(self.start_app(app_dir, run_config=run_config), timeout=timeout)

    def stop(self) -> None:
        """Stop every process this federation started (SIGTERM, then SIGKILL after 5 s).

        Their descendants are listed first and killed by pid at the end: Flower detaches the
        SuperLink's SuperExec into a session of its own, so a process group does not hold them all.
        """
        descendants = [d for proc in self._procs for d in _descendants(proc.popen.pid)]
        for proc in reversed(self._procs):
            _kill_group(proc.popen, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in reversed(self._procs):
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _kill_group(proc.popen, signal.SIGKILL)
            try:
                proc.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for child in descendants:
            try:
                child.kill()
            except psutil.Error:
                pass
        self._procs.clear()

    def __enter__(self) -> "LocalFederation":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serverapp_failure(output: str) -> str | None:
    """Why a streamed ``flwr run`` output shows a failed ServerApp, or None.

    ``flwr run --stream`` exits 0 whatever the ServerApp did (flwr 1.41-1.42); the streamed log
    carries Flower's ``Exit Code: N`` line (N >= 100 is an error) and fedlora's ServerApp prints
    ``[fedlora] done:`` when it finishes.
    """
    codes = [int(c) for c in re.findall(r"Exit Code: (\d+)", output)]
    errors = [c for c in codes if not 0 <= c < 100]
    if errors:
        return f"Exit Code: {errors[0]}"
    if "[fedlora] done:" not in output:
        return "the ServerApp never reported '[fedlora] done:'"
    return None


def _kill_group(popen: subprocess.Popen, sig: int) -> None:
    """Signal the process group led by ``popen`` (it was started with its own session)."""
    try:
        os.killpg(popen.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _descendants(pid: int) -> list["psutil.Process"]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
