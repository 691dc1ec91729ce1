"""Errors a command reports in one line, defined where importing them costs nothing (no torch), so the
command line can name them before it loads the training stack."""

from __future__ import annotations

__all__ = ["RunError"]


class RunError(RuntimeError):
    """A run cannot start or continue as asked (the message says why and what to do)."""
