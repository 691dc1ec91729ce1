"""Memory sizes as configs write them (``4096``, ``"512MiB"``, ``"1.5 GiB"``, ``"2GB"``), read without torch."""

from __future__ import annotations

import math
import re

__all__ = ["parse_bytes"]

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(value: int | float | str) -> int:
    """``4096``, ``"512MiB"``, ``"1.5 GiB"``, ``"2GB"`` -> bytes (int, > 0)."""
    if isinstance(value, bool):
        raise ValueError(f"memory size must be a number of bytes or a string like '6GiB', got {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(f"cannot read memory size {value!r}; write e.g. 4096, '512MiB', '1.5GiB' or '2GB'")
        number = float(match.group(1)) * _UNITS[unit]
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"memory size must be positive and finite, got {value!r}")
    return int(number)
