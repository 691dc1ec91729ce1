"""An exclusive lock on a run folder, so that two processes never write one run at once.

``fcntl.flock`` on ``run_dir/.fedlora.lock`` (released by the kernel when the process dies, so a
killed run never leaves a stale lock); the file records the holder's pid and host for the message
the second process gets. On systems without ``fcntl`` the lock is a no-op.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from types import TracebackType

__all__ = ["LOCK_FILE", "RunFolderLocked", "RunLock"]

LOCK_FILE = ".fedlora.lock"


class RunFolderLocked(RuntimeError):
    """Another process holds the run folder's lock."""


class RunLock:
    """``with RunLock(run_dir): ...`` holds the folder's lock for the block; raises :class:`RunFolderLocked` if taken."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise RunFolderLocked(f"{self.path.parent} is in use by {holder}: one run folder takes one process at a time; "
                                  "wait for it to finish, or choose another run.name or --out") from None  # fmt: skip
        os.ftruncate(fd, 0)
        os.write(fd, f"fedlora pid {os.getpid()} on {socket.gethostname()}".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __del__(self) -> None:  # an object dropped without release() must not keep the folder locked
        self.release()

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
