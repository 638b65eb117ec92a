"""How a record's figures read to a person: the runtime it ran on, a latency with its spread, the number a
variant carries in the plot and the table, and when an axis needs a log scale.

Read defensively: records written before a field existed (or by another tightfit version) still render.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tightfit import names
from tightfit.footprint import Footprint

LOG_SCALE_SPAN = 10.0
"""An axis whose values span more than this factor is drawn on a log scale."""

RUNTIME_TORCH = names.RUNTIME_TORCH
RUNTIME_COMPILE = "torch.compile"  # how a person reads a compiled torch variant (not a runtime of its own)
RUNTIME_ORT = names.RUNTIME_ONNXRUNTIME


def _field(record: Footprint, key: str) -> Any:
    """A record figure by name: a dataclass field first, then ``extra``."""
    value = getattr(record, key, None)
    if value is None:
        value = record.extra.get(key)
    return value


def runtime_of(record: Footprint) -> str:
    """The runtime a variant is served with, as a person reads it: ONNX Runtime when the record says so
    (its ``runtime`` field or ``extra``) or its chain has an ``onnx*`` step; torch.compile when it runs
    compiled; torch otherwise."""
    declared = {str(v) for v in (getattr(record, "runtime", None), record.extra.get("runtime")) if v}
    steps = [s.split(":")[0].strip() for s in (record.chain or "").split("|")]
    if RUNTIME_ORT in declared or any(s.startswith("onnx") for s in steps):
        return RUNTIME_ORT
    if "compile" in steps or record.compiled or record.backend == "compile":
        return RUNTIME_COMPILE
    return RUNTIME_TORCH


@dataclass(frozen=True)
class Interval:
    """A measured value with its spread: ``low <= value <= high``; ``source`` says what the spread is."""

    value: float
    low: float
    high: float
    source: str


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float) and math.isfinite(float(value)):
        return float(value)
    return None


def _pair(value: Any) -> tuple[float, float] | None:
    """``[lo, hi]``, ``{"min": .., "max": ..}`` or ``{"lo"/"low": .., "hi"/"high": ..}`` -> (lo, hi)."""
    if isinstance(value, list | tuple) and len(value) == 2:
        lo, hi = _number(value[0]), _number(value[1])
    elif isinstance(value, dict):
        lo = _number(next((value[k] for k in ("min", "lo", "low", "p25", "q1") if k in value), None))
        hi = _number(next((value[k] for k in ("max", "hi", "high", "p75", "q3") if k in value), None))
    else:
        return None
    return (lo, hi) if lo is not None and hi is not None else None


def latency_interval(record: Footprint, metric: str) -> Interval | None:
    """``metric`` (e.g. ``latency_ms_b1_p95``) with its spread, or None when it was not measured.

    The spread between measurement rounds when the record carries one, under any of these keys (as a
    field or in ``extra``): ``{metric}_min``/``_max``, ``{metric}_lo``/``_hi``, ``{metric}_spread``
    (``[lo, hi]``, a dict with min/max, or a half-width), ``{metric}_std``, ``{metric}_iqr``, or
    ``extra["spread"][metric]``. Otherwise the spread of the requests within the measurement: from the
    same batch's p50 to its p99.
    """
    value = _number(_field(record, metric))
    if value is None:
        return None
    lo, hi = _number(_field(record, f"{metric}_min")), _number(_field(record, f"{metric}_max"))
    if lo is None or hi is None:
        lo, hi = _number(_field(record, f"{metric}_lo")), _number(_field(record, f"{metric}_hi"))
    if lo is not None and hi is not None:
        return Interval(value, min(lo, value), max(hi, value), "rounds")
    nested = record.extra.get("spread")
    for raw in (_field(record, f"{metric}_spread"), nested.get(metric) if isinstance(nested, dict) else None):
        pair = _pair(raw)
        if pair is not None:
            return Interval(value, min(pair[0], value), max(pair[1], value), "rounds")
        half = _number(raw)
        if half is not None:
            return Interval(value, value - half, value + half, "rounds")
    for suffix, factor in (("_std", 1.0), ("_stdev", 1.0), ("_iqr", 0.5)):
        width = _number(_field(record, metric + suffix))
        if width is not None:
            return Interval(value, value - factor * width, value + factor * width, "rounds")
    stem = metric.rsplit("_p", 1)[0]
    p50, p99 = _number(_field(record, f"{stem}_p50")), _number(_field(record, f"{stem}_p99"))
    if p50 is not None and p99 is not None and metric.startswith("latency_ms_"):
        return Interval(value, min(p50, value), max(p99, value), "p50-p99")
    return Interval(value, value, value, "none")


def variant_numbers(records: Iterable[Footprint]) -> dict[str, int]:
    """The number each variant carries in the plot and the report table: 1, 2, ... in record order."""
    out: dict[str, int] = {}
    for record in records:
        out.setdefault(record.variant, len(out) + 1)
    return out


def needs_log_scale(values: Sequence[float]) -> bool:
    """True when the positive values span more than ``LOG_SCALE_SPAN`` (one slow outlier would squeeze
    a linear axis)."""
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    return len(positive) >= 2 and max(positive) / min(positive) > LOG_SCALE_SPAN
