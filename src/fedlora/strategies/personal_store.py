"""Per-client adapter state that personalised methods keep (FedSA-LoRA's local ``B``), with memory
flat in the number of clients.

In memory by default (tests, library use). The engine attaches a folder of the run
(:meth:`PersonalStore.attach`); then every client's state is one file per version,
``<folder>/<client>/v<version>.pt`` (written to a temporary name and renamed, so a kill never leaves
half a file), and only the index ``{client: version}`` stays in memory and in the strategy's
checkpoint. A resumed run reads exactly the versions its checkpoint names; the newest ``keep``
versions of each client are kept on disk so that the older kept checkpoints still find theirs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator, Mapping

import torch

from fedlora.lora.factors import Adapter
from fedlora.strategies import _common as C

__all__ = ["PersonalStore"]

_SAFE = re.compile(r"^[A-Za-z0-9_.-]+$")


class PersonalStore:
    """Client id -> its adapter, versioned by round."""

    def __init__(self) -> None:
        self._index: dict[str, int] = {}
        self._memory: dict[str, Adapter] = {}
        self._root: Path | None = None
        self._keep = 3

    def attach(self, folder: str | os.PathLike, keep: int = 3) -> None:
        """Keep states in ``folder`` from now on (states already in memory are written there)."""
        self._root, self._keep = Path(folder), max(1, int(keep))
        self._root.mkdir(parents=True, exist_ok=True)
        for cid, adapter in self._memory.items():
            self._write(cid, adapter, self._index[cid])
        self._memory.clear()

    def __contains__(self, cid: str) -> bool:
        return cid in self._index

    def __len__(self) -> int:
        return len(self._index)

    def clients(self) -> list[str]:
        return sorted(self._index)

    def get(self, cid: str) -> Adapter | None:
        """The client's newest state, or None."""
        if cid not in self._index:
            return None
        if self._root is None:
            return dict(self._memory[cid])
        path = self._path(cid, self._index[cid])
        if not path.is_file():
            raise FileNotFoundError(f"personal state of client {cid!r} (version {self._index[cid]}) is missing: {path}; "
                                    "the run folder lost it, so this run cannot continue from that checkpoint")  # fmt: skip
        return C.adapter_from_state(torch.load(path, map_location="cpu", weights_only=True))

    def put(self, cid: str, adapter: Adapter, version: int) -> None:
        """Store ``adapter`` as the client's state at ``version`` (the round)."""
        if not _SAFE.match(cid):
            raise ValueError(f"client id {cid!r} cannot name a file; use letters, digits, '_', '-' and '.'")
        self._index[cid] = int(version)
        if self._root is None:
            self._memory[cid] = {m: f for m, f in adapter.items()}
        else:
            self._write(cid, adapter, int(version))

    def items(self) -> Iterator[tuple[str, Adapter]]:
        """Every client's state, one at a time (sorted by client id)."""
        for cid in self.clients():
            yield cid, self.get(cid)

    def state_dict(self) -> dict:
        """The index, plus the states themselves while they live in memory."""
        if self._root is None:
            return {"index": dict(self._index), "memory": {c: C.adapter_to_state(a) for c, a in sorted(self._memory.items())}}
        return {"index": dict(self._index)}

    def load_state_dict(self, state: Mapping) -> None:
        self._index = {str(c): int(v) for c, v in state["index"].items()}
        memory = {c: C.adapter_from_state(a) for c, a in state.get("memory", {}).items()}
        if self._root is None:
            self._memory = memory
        else:
            for cid, adapter in memory.items():
                self._write(cid, adapter, self._index[cid])

    def _path(self, cid: str, version: int) -> Path:
        return self._root / cid / f"v{version}.pt"

    def _write(self, cid: str, adapter: Adapter, version: int) -> None:
        path = self._path(cid, version)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(C.adapter_to_state(adapter), tmp)
        os.replace(tmp, path)
        versions = sorted(int(p.stem[1:]) for p in path.parent.glob("v*.pt") if p.stem[1:].isdigit())
        for old in versions[: -self._keep]:
            if old != version:
                self._path(cid, old).unlink(missing_ok=True)
