"""Parse and format byte sizes and durations given by users ("1GiB", "500MB", "250ms")."""

from __future__ import annotations

import re

from tightfit.errors import ConfigError

_SIZE_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    # Kubernetes quantity spellings, so values from a pod spec parse too.
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")


def parse_bytes(value: str | int | float, *, field: str = "size") -> int:
    """Return a byte count from an int or a string with a unit ("1GiB", "500MB", "2Gi").

    Plain numbers count as bytes only when given as numbers; a unitless string is ambiguous and refused.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{field}: expected a size like '1GiB' or '500MB', got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ConfigError(f"{field}: size must not be negative, got {value!r}")
        return int(value)
    if not isinstance(value, str):
        raise ConfigError(f"{field}: expected a size like '1GiB' or '500MB', got {type(value).__name__}")
    text = value.strip()
    if text.startswith("-"):
        raise ConfigError(f"{field}: size must not be negative, got {value!r}")
    match = _SIZE_RE.match(text)
    if not match:
        raise ConfigError(f"{field}: cannot read {value!r} as a size; write it like '1GiB', '500MB' or '2048KiB'")
    number, unit = match.groups()
    if not unit:
        raise ConfigError(
            f"{field}: {value!r} has no unit; write '{number}B' for bytes or use MB/MiB/GB/GiB"
        )
    factor = _SIZE_UNITS.get(unit.lower())
    if factor is None:
        known = "B, KB, MB, GB, TB, KiB, MiB, GiB, TiB"
        raise ConfigError(f"{field}: unknown unit {unit!r} in {value!r}; use one of {known}")
    return int(float(number) * factor)


def format_bytes(n: float) -> str:
    """Human-readable binary size ("87.3 MiB")."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}
_TIME_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(us|ms|s)\s*$", re.IGNORECASE)


def parse_millis(value: str | int | float, *, field: str = "latency") -> float:
    """Return milliseconds from a number (taken as ms) or a string with a unit ("250ms", "1.5s")."""
    if isinstance(value, bool):
        raise ConfigError(f"{field}: expected a duration like '250ms', got {value!r}")
    if isinstance(value, int | float):
        if value <= 0:
            raise ConfigError(f"{field}: duration must be positive, got {value!r}")
        return float(value)
    match = _TIME_RE.match(str(value))
    if not match:
        raise ConfigError(f"{field}: cannot read {value!r} as a duration; write it like '250ms' or '1.5s'")
    number, unit = match.groups()
    millis = float(number) * _TIME_UNITS[unit.lower()]
    if millis <= 0:
        raise ConfigError(f"{field}: duration must be positive, got {value!r}")
    return millis
