"""Write a runnable Flower app folder for a fedlora run config (what ``flwr run`` takes).

The folder holds no training code: its ``pyproject.toml`` points Flower's ``serverapp`` and
``clientapp`` components at fedlora's own apps (two one-line modules, because Flower resolves a
component inside the app folder), and embeds the fedlora TOML config as the run-config value
``fedlora-config``, next to the Flower settings (timeouts, minimum replies, output folder).
Every machine of the federation needs ``pip install 'fedlora[flower]'``: the app lists no dependency,
because Flower installs an app's ``[project].dependencies`` into a fresh environment on every run
(``uv sync``; fedlora is on no package index, and torch would be fetched again per run), while the
environment it creates keeps the machine's installed packages visible. So ``flwr run APP`` works with
Flower's defaults wherever fedlora is installed (``README.md`` in the folder says so).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import tomli_w

import fedlora
from fedlora.flower.options import FlowerOptions
from fedlora.flower.recipe import recipes_from_run_config

__all__ = ["write_app", "APP_PACKAGE"]

APP_PACKAGE = "fedlora_flower_app"

_SERVER_MODULE = '''"""fedlora's Flower ServerApp (fedlora.flower.server_app)."""

from fedlora.flower.server_app import app as _app

app = _app
'''

_CLIENT_MODULE = '''"""fedlora's Flower ClientApp (fedlora.flower.client_app)."""

from fedlora.flower.client_app import app as _app

app = _app
'''


def write_app(config_text: str, out_dir: str | os.PathLike, *, name: str = "fedlora-run", options: Mapping[str, Any] | None = None) -> Path:
    """Write the app folder and return its path.

    Args:
        config_text: the fedlora run config (TOML text), embedded as ``fedlora-config``.
        out_dir: the app folder (created; its ``pyproject.toml`` and app package are overwritten).
        name: the Flower app name (``[project].name``).
        options: Flower settings (keys of :class:`FlowerOptions` in run-config spelling, e.g.
            ``{"round-timeout": 300}``); unset ones keep their defaults. ``out-dir`` (where the
            ServerApp writes metrics, checkpoints and the adapter) defaults to ``""``, i.e.
            ``./fedlora-flower-results`` in the ServerApp's working directory (the SuperLink's), so
            an app folder carries no path of the machine that wrote it; a relative ``out-dir``
            resolves there too.

    The settings and the fedlora config are validated here (every problem in one error), so a
    bad config fails on your machine, not on the SuperLink.
    """
    root = Path(out_dir).resolve()
    package = root / APP_PACKAGE
    package.mkdir(parents=True, exist_ok=True)
    run_config = FlowerOptions().to_run_config()  # out-dir "": ./fedlora-flower-results of the ServerApp process
    run_config["fedlora-set"] = ""  # present, so `flwr run --run-config 'fedlora-set="..."'` is accepted later
    run_config.update(dict(options or {}))
    run_config["fedlora-config"] = config_text
    FlowerOptions.from_run_config(run_config)  # fail here, not on the SuperLink
    recipes_from_run_config(run_config)
    (root / "pyproject.toml").write_text(tomli_w.dumps(_pyproject(name, run_config)))
    (package / "__init__.py").write_text('"""A fedlora run packaged as a Flower app (written by `fedlora flower app`)."""\n')
    (package / "server_app.py").write_text(_SERVER_MODULE)
    (package / "client_app.py").write_text(_CLIENT_MODULE)
    (root / "README.md").write_text(_README.format(version=fedlora.__version__), encoding="utf-8")
    return root


_README = """# A fedlora run as a Flower app

Written by `fedlora flower app` (fedlora {version}). Run it as any Flower app:

    flwr run . --stream                       # Flower's local simulation
    flwr run . <federation> --stream          # a deployment: SuperNodes with --node-config "partition-id=K num-partitions=N"

fedlora {version} with its Flower extra (`pip install 'fedlora[flower]'`) must be installed on every machine
that runs the SuperLink or a SuperNode. `pyproject.toml` lists no dependency on purpose: Flower installs an
app's dependencies into a fresh environment per run, fedlora is not on a package index, and that environment
keeps the machine's installed packages (fedlora, torch, transformers, peft) visible.
"""


def _pyproject(name: str, run_config: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {
            "name": name,
            "version": "1.0.0",
            "description": "A fedlora federated LoRA run as a Flower app",
            "license": "Apache-2.0",
            "dependencies": [],  # fedlora is installed on the machines (module docstring)
        },
        "tool": {
            "hatch": {"build": {"targets": {"wheel": {"packages": ["."]}}}},
            "flwr": {
                "app": {
                    "publisher": "fedlora",
                    "components": {"serverapp": f"{APP_PACKAGE}.server_app:app", "clientapp": f"{APP_PACKAGE}.client_app:app"},
                    "config": dict(run_config),
                }
            },
        },
    }
