"""Sizes and durations given by people ("1GiB", "500MB", "2Gi", "250ms"), read one way everywhere.

The rule for sizes, written once:
- a unit ending in ``B`` is a byte unit and is read by pydantic's ``ByteSize`` (``500MB`` = 500 * 10^6,
  ``1GiB`` = 2^30; case does not matter);
- any other suffix is a Kubernetes quantity read by ``kubernetes.utils.parse_quantity`` (``2Gi``, ``500M``,
  ``4k``); there ``m`` means milli, so ``10m`` is a hundredth of a byte and is refused, never read as 10 MB;
- a number without a unit is refused when a person wrote it (it could be bytes, KB or MB); code may pass
  a plain ``int`` count of bytes;
- negative, non-finite and absurd sizes (beyond 1 EiB) are refused.
Every refusal is a ``ConfigError`` naming the field, the value and a spelling that works.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

from tightfit.errors import ConfigError

MAX_BYTES = 2**60
"""1 EiB: no memory, disk or bandwidth figure a person means is larger."""
_SIZE_RE = re.compile(r"^\s*([+-]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")
_KUBERNETES_SUFFIXES = ("Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E", "m")
_EXAMPLE = "write it like '1GiB', '500MB' or the Kubernetes '2Gi'"


def _where(field: str) -> str:
    """The message prefix naming the field ('' inside a pydantic validator, which names it itself)."""
    return f"{field}: " if field else ""


def _number(text: str, value: object, field: str) -> Decimal:
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise ConfigError(_where(field) + f"cannot read {value!r} as a size; {_EXAMPLE}") from None
    if not number.is_finite():
        raise ConfigError(_where(field) + f"{value!r} is not a finite size; {_EXAMPLE}")
    if number < 0:
        raise ConfigError(_where(field) + f"size must not be negative, got {value!r}")
    return number


def _checked(n_bytes: Decimal | float | int, value: object, field: str) -> int:
    if not math.isfinite(float(n_bytes)) or n_bytes > MAX_BYTES:
        raise ConfigError(_where(field) + f"{value!r} is larger than any machine (over 1 EiB); check the number and unit")
    if n_bytes != int(n_bytes):
        raise ConfigError(_where(field) + f"{value!r} is not a whole number of bytes")
    return int(n_bytes)


def parse_bytes(value: str | int | float, *, field: str = "size", require_unit: bool = False) -> int:
    """A byte count from a size with a unit ("1GiB", "500MB", "2Gi") or, from code, a plain number of bytes.

    ``require_unit``: the value came from a person (a config file, a flag), so a bare number is refused.
    """
    if isinstance(value, bool):
        raise ConfigError(_where(field) + f"expected a size; {_EXAMPLE}; got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ConfigError(_where(field) + f"{value!r} is not a finite size; {_EXAMPLE}")
        if value < 0:
            raise ConfigError(_where(field) + f"size must not be negative, got {value!r}")
        if require_unit:
            raise ConfigError(
                _where(field) + f"{value!r} has no unit; write '{value}MiB' or '{value}MB' (or '{value}B' for bytes)"
            )
        return _checked(value, value, field)
    if not isinstance(value, str):
        raise ConfigError(_where(field) + f"expected a size; {_EXAMPLE}; got {type(value).__name__}")
    match = _SIZE_RE.match(value)
    if not match:
        raise ConfigError(_where(field) + f"cannot read {value!r} as a size; {_EXAMPLE}")
    text, unit = match.groups()
    number = _number(text, value, field)
    if not unit:
        raise ConfigError(_where(field) + f"{value!r} has no unit; write '{text}B' for bytes or use MB/MiB/GB/GiB")
    if unit.lower().endswith("b"):
        return _byte_unit(number, unit, value, field)
    if unit in _KUBERNETES_SUFFIXES:
        return _kubernetes_quantity(number, unit, value, field)
    known = "B, KB, MB, GB, TB, KiB, MiB, GiB, TiB, or the Kubernetes Ki, Mi, Gi, Ti, k, M, G, T"
    raise ConfigError(_where(field) + f"unknown unit {unit!r} in {value!r}; use one of {known}")


def _byte_unit(number: Decimal, unit: str, value: object, field: str) -> int:
    from pydantic import ByteSize, TypeAdapter, ValidationError

    try:
        per_unit = int(TypeAdapter(ByteSize).validate_python(f"1{unit}"))
    except ValidationError:
        known = "B, KB, MB, GB, TB, KiB, MiB, GiB, TiB"
        raise ConfigError(_where(field) + f"unknown unit {unit!r} in {value!r}; use one of {known}") from None
    return _checked((number * per_unit).to_integral_value(), value, field)


def _kubernetes_quantity(number: Decimal, unit: str, value: object, field: str) -> int:
    from kubernetes.utils.quantity import parse_quantity

    quantity = parse_quantity(f"{number:f}{unit}")
    if unit == "m":
        raise ConfigError(
            _where(field) + f"{value!r} is {quantity} bytes: in Kubernetes quantities 'm' means milli; "
            f"write '{number}Mi' or '{number}M' (or '{number}MB')"
        )
    return _checked(quantity.to_integral_value(), value, field)


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


def parse_millis(value: str | int | float, *, field: str = "latency", require_unit: bool = False) -> float:
    """Milliseconds from a string with a unit ("250ms", "1.5s") or, from code, a number taken as ms."""
    if isinstance(value, bool):
        raise ConfigError(_where(field) + f"expected a duration like '250ms', got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ConfigError(_where(field) + f"{value!r} is not a finite duration; write it like '250ms' or '1.5s'")
        if require_unit:
            raise ConfigError(_where(field) + f"{value!r} has no unit; write '{value}ms' or '{value}s'")
        if value <= 0:
            raise ConfigError(_where(field) + f"duration must be a positive number, got {value!r}")
        return float(value)
    match = _TIME_RE.match(str(value))
    if not match:
        raise ConfigError(_where(field) + f"cannot read {value!r} as a duration; write it like '250ms' or '1.5s'")
    number, unit = match.groups()
    millis = float(number) * _TIME_UNITS[unit.lower()]
    if millis <= 0:
        raise ConfigError(_where(field) + f"duration must be positive, got {value!r}")
    return millis
