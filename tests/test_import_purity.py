"""The math, strategy and allocation packages must not import transformers, peft or flwr (DESIGN.md §1).

Every module under ``fedlora.lora``, ``fedlora.strategies`` and ``fedlora.allocation`` is imported
(found with pkgutil, so new modules are covered), plus ``fedlora.modelspec``, in a fresh interpreter.
"""

from __future__ import annotations

import subprocess
import sys

PACKAGES = ("fedlora.lora", "fedlora.strategies", "fedlora.allocation")
EXTRA = ("fedlora.modelspec",)
HEAVY = ("transformers", "peft", "flwr")

CODE = f"""
import importlib, pkgutil, sys
names = list({EXTRA!r})
for pkg in {PACKAGES!r}:
    module = importlib.import_module(pkg)
    names += [m.name for m in pkgutil.walk_packages(module.__path__, pkg + ".")]
for name in names:
    importlib.import_module(name)
print(len(names), sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r}))
"""


def test_torch_only_packages_stay_free_of_transformers_peft_and_flwr():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    count, heavy = out.stdout.strip().split(" ", 1)
    assert int(count) >= 12, f"expected every strategy and lora module, imported {count}"
    assert heavy == "[]", f"heavy packages imported: {heavy}"
