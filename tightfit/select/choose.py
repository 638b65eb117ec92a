"""Choose a variant: the Pareto front of measured footprints and the constraints of a ``HardwareTarget``.

Library code first, so the CLI (``tightfit compare``), the KFP ``select`` component and serving choose
the same way. A variant *fits* when its measured footprint meets every limit the target sets; a limit on a
figure that was not measured does not fit (never assume); a latency flagged noisy is judged at its p99
(``judged_latency``) and named in the selection's notes. A memory limit must also hold for the serving
replica the planner would deploy (``tightfit.memory.replica.replica_need_bytes``), and a latency SLO for
a request served at batch 1 behind one in-flight request (the planner's check), so what selection chooses,
serving can run. Failed records are reported, never chosen.

The one selection policy (``choose_best``; the serving planner chooses its primary variant with it too):
among the fitting variants whose quality is within ``QUALITY_TOLERANCE`` of the best (0.5 accuracy points,
or 0.5 % perplexity: below the noise of a test split of a few thousand rows), the one with the smallest
serving memory, then disk, latency and bandwidth, then the better quality. Every constrained figure is
also a front objective, so the chosen variant always lies on the Pareto front of all measured variants:
anything that dominated it would be as close in quality and no worse elsewhere, and would win.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tightfit import names
from tightfit.errors import ConfigError
from tightfit.footprint import Footprint
from tightfit.memory.replica import BATCHES_PER_REQUEST, replica_need_bytes
from tightfit.spec import HardwareTarget
from tightfit.units import format_bytes

Direction = Literal["max", "min"]
Objective = tuple[str, Direction]

DEFAULT_OBJECTIVES: tuple[Objective, ...] = (
    (names.ACCURACY, "max"),
    (names.DISK_BYTES, "min"),
    (names.PEAK_RSS_SERVE_BYTES, "min"),
    (names.LATENCY_MS_B1_P95, "min"),
)
"""Maximize accuracy; minimize disk, serving memory and p95 latency at batch 1."""

MEASURED_LATENCY_BATCHES = (1, 32)
QUALITY_TOLERANCE = 0.005
"""Quality this close to the best counts as equal: accuracy in absolute points, perplexity relatively."""


def _value(record: Footprint, name: str) -> float | None:
    if name == names.SERVING_REPLICA_BYTES:
        need = replica_need_bytes(record)
        return None if need is None else float(need)
    value = getattr(record, name, None)
    if value is None:
        value = record.extra.get(name)
    if value is None or isinstance(value, str | dict | list):
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _score(record: Footprint, objectives: Sequence[Objective]) -> tuple[float, ...]:
    """Objective values oriented so smaller is better; an unmeasured value is the worst possible."""
    out = []
    for name, direction in objectives:
        value = _value(record, name)
        if value is None:
            out.append(math.inf)
        else:
            out.append(-value if direction == "max" else value)
    return tuple(out)


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` is no worse than ``b`` everywhere and strictly better somewhere (smaller is better)."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def pareto_front(
    records: Iterable[Footprint], objectives: Sequence[Objective] = DEFAULT_OBJECTIVES
) -> list[Footprint]:
    """The successful records no other successful record dominates, in input order.

    ``objectives`` are (footprint field, "max" | "min") pairs; unmeasured values count as the worst.
    """
    for name, direction in objectives:
        if direction not in ("max", "min"):
            raise ConfigError(f"objective {name!r}: direction must be 'max' or 'min', got {direction!r}")
    ok = [r for r in records if r.ok]
    scores = [_score(r, objectives) for r in ok]
    return [r for r, s in zip(ok, scores, strict=True) if not any(dominates(o, s) for o in scores if o is not s)]


@dataclass
class Selection:
    """The outcome of ``select_variant``: the choice (or None), the front, and why the others do not fit."""

    target: HardwareTarget
    chosen: Footprint | None
    front: list[Footprint]
    fitting: list[Footprint]
    reasons: dict[str, list[str]]
    failed: list[Footprint]
    objectives: tuple[Objective, ...]
    notes: list[str] = field(default_factory=list)

    @property
    def front_names(self) -> list[str]:
        return [r.variant for r in self.front]

    def on_front(self, record: Footprint) -> bool:
        return any(r is record for r in self.front)

    def summary(self) -> str:
        """One paragraph for logs and the CLI."""
        head = f"target: {self.target.describe()}"
        if self.chosen is None:
            lines = [head, "no variant fits:"]
        else:
            lines = [head, f"chosen: {self.chosen.variant} ({self.chosen.chain})"]
        lines += [f"  {name}: {'; '.join(why)}" for name, why in self.reasons.items()]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready report (the KFP ``select`` component writes it)."""
        return {
            "target": self.target.model_dump(),
            "target_description": self.target.describe(),
            "chosen": self.chosen.variant if self.chosen else None,
            "chosen_record": self.chosen.to_dict() if self.chosen else None,
            "front": self.front_names,
            "fitting": [r.variant for r in self.fitting],
            "failed": {r.variant: r.error or "failed" for r in self.failed},
            "reasons": self.reasons,
            "objectives": [list(o) for o in self.objectives],
            "notes": self.notes,
        }


def quality_objective(records: Sequence[Footprint], target: HardwareTarget) -> Objective:
    """Accuracy (max) for classifiers; perplexity (min) for language models."""
    if target.max_perplexity is not None:
        return (names.PERPLEXITY, "min")
    if target.min_accuracy is None:
        ok = [r for r in records if r.ok]
        if ok and all(r.accuracy is None and r.perplexity is not None for r in ok):
            return (names.PERPLEXITY, "min")
    return (names.ACCURACY, "max")


def latency_objective(target: HardwareTarget) -> tuple[str, float]:
    """The measured latency metric that bounds the target's batch, and the factor to scale it by.

    Batch 1 reads the batch-1 p95; up to 32 reads the batch-32 p95 (an upper bound); beyond 32 scales
    the batch-32 p95 linearly.
    """
    batch = target.latency_batch
    for measured in MEASURED_LATENCY_BATCHES:
        if batch <= measured:
            return names.latency_metric(measured, 95), 1.0
    top = MEASURED_LATENCY_BATCHES[-1]
    return names.latency_metric(top, 95), batch / top


def selection_objectives(records: Sequence[Footprint], target: HardwareTarget) -> tuple[Objective, ...]:
    """Quality, disk, serving memory, latency at the target's batch (+ the serving replica's need under a
    memory limit, + bytes per forward under a bandwidth): every constrained figure is an objective."""
    objectives: list[Objective] = [
        quality_objective(records, target),
        (names.PEAK_RSS_SERVE_BYTES, "min"),
        (names.DISK_BYTES, "min"),
        (latency_objective(target)[0], "min"),
    ]
    if target.memory_bytes is not None:
        objectives.append((names.SERVING_REPLICA_BYTES, "min"))
    if target.bandwidth_bytes_per_s is not None:
        objectives.append((names.WEIGHT_BYTES_PER_FORWARD, "min"))
    return tuple(objectives)


def judged_latency(record: Footprint, metric: str) -> tuple[str, float | None]:
    """The latency figure a limit is checked against: ``metric`` itself, or, when its figure was flagged
    noisy (spread across rounds above the threshold, ``Footprint.noise``), its p99: a noisy figure may still
    be chosen, but only on the pessimistic end of what was measured. Returns (the name read, the value)."""
    if record.is_noisy(metric) and metric.endswith("_p95"):
        pessimistic = metric.removesuffix("_p95") + "_p99"
        value = _value(record, pessimistic)
        if value is not None:
            return f"{pessimistic} (noisy: judged at p99)", value
    return metric, _value(record, metric)


def noise_notes(records: Iterable[Footprint]) -> list[str]:
    """One line per record with a latency flagged noisy (spread or contention; never silently used)."""
    notes = []
    for r in records:
        if r.ok and r.noisy_figures:
            spread = ", ".join(
                f"{f} cv {getattr(r, f + '_cv', None) or 0:.2f}" for f in r.noisy_figures
            )
            share = f", cpu share {r.measure_cpu_share:.2f}" if r.measure_cpu_share is not None else ""
            other = r.extra.get("measure_other_cores")
            busy = f", other work {other:.2f} cores" if other is not None else ""
            load = f", load average {r.load_avg_1m:.2f}" if r.load_avg_1m is not None else ""
            notes.append(f"{r.variant}: noisy latency ({spread}{share}{busy}{load}); latency limits judged at p99")
    return notes


@dataclass(frozen=True)
class Miss:
    """One limit a record misses: which (``memory``, ``disk``, ``latency``, ``bandwidth``, ``quality``,
    ``failed``), a short form for tables (``RSS 780 MiB > 1 GiB``) and the full sentence."""

    limit: str
    short: str
    text: str


def fit_misses(record: Footprint, target: HardwareTarget) -> list[Miss]:
    """The limits ``record`` misses under ``target`` (empty when it fits)."""
    if not record.ok:
        error = record.error or "no error recorded"
        return [Miss("failed", error.split(":")[0][:40], f"failed: {error}")]
    why: list[Miss] = []

    def miss(limit: str, short: str, text: str) -> None:
        why.append(Miss(limit, short, f"{limit}: {text}"))

    def limit_bytes(limit: str, metric: str, label: str, budget: int | None) -> None:
        measured = _value(record, metric)
        if budget is None:
            return
        if measured is None:
            miss(limit, f"{label} not measured", f"{metric} not measured")
        elif measured > budget:
            miss(limit, f"{label} {format_bytes(measured)} > {format_bytes(budget)}",
                 f"{metric} {format_bytes(measured)} > budget {format_bytes(budget)}")

    limit_bytes("memory", names.PEAK_RSS_SERVE_BYTES, "RSS", target.memory_bytes)
    if target.memory_bytes is not None:
        need = _value(record, names.SERVING_REPLICA_BYTES)
        if need is None:
            miss("memory", "replica need unknown", f"{names.SERVING_REPLICA_BYTES} unknown (no weight bytes measured)")
        elif need > target.memory_bytes:
            miss(
                "memory",
                f"replica {format_bytes(need)} > {format_bytes(target.memory_bytes)}",
                f"a Ray Serve replica needs about {format_bytes(need)} at batch 1 (load RSS + replica "
                f"overhead + activations + headroom, as the serving planner predicts) > budget "
                f"{format_bytes(target.memory_bytes)}",
            )
    limit_bytes("disk", names.DISK_BYTES, "disk", target.disk_bytes)
    if target.latency_ms is not None:
        metric, scale = latency_objective(target)
        metric, measured = judged_latency(record, metric)
        if measured is None:
            miss("latency", "latency not measured", f"{metric} not measured")
        elif measured * scale > target.latency_ms:
            scaled = f" x {scale:g} for batch {target.latency_batch}" if scale != 1.0 else ""
            miss("latency", f"p95 {measured * scale:.1f} ms > {target.latency_ms:g} ms",
                 f"{metric} {measured:.2f} ms{scaled} > SLO {target.latency_ms:g} ms")
        b1_metric, b1 = judged_latency(record, names.LATENCY_MS_B1_P95)
        if b1 is not None and BATCHES_PER_REQUEST * b1 > target.latency_ms:
            # the serving planner's own check: a request may wait for the batch in flight, then run
            miss(
                "latency",
                f"queued {BATCHES_PER_REQUEST * b1:.1f} ms > {target.latency_ms:g} ms",
                f"served at batch 1 a request may wait for the one in flight: {BATCHES_PER_REQUEST} x "
                f"{b1_metric} {b1:.2f} ms > SLO {target.latency_ms:g} ms",
            )
    if target.bandwidth_bytes_per_s is not None:
        per_forward = _value(record, names.WEIGHT_BYTES_PER_FORWARD)
        if per_forward is None:
            miss("bandwidth", "bytes/forward not measured", f"{names.WEIGHT_BYTES_PER_FORWARD} not measured")
        elif target.latency_ms is not None:
            ms = 1000.0 * per_forward / target.bandwidth_bytes_per_s
            if ms > target.latency_ms:
                unit = "per token" if record.kind != "classifier" else "per forward"
                miss(
                    "bandwidth",
                    f"weights {ms:.1f} ms > {target.latency_ms:g} ms",
                    f"reading {format_bytes(per_forward)} of weights {unit} takes {ms:.2f} ms at "
                    f"{format_bytes(target.bandwidth_bytes_per_s)}/s > SLO {target.latency_ms:g} ms",
                )
    if target.min_accuracy is not None:
        acc = _value(record, names.ACCURACY)
        if acc is None:
            miss("quality", "accuracy not measured", "accuracy not measured")
        elif acc < target.min_accuracy:
            miss("quality", f"accuracy {acc:.3f} < {target.min_accuracy:g}",
                 f"accuracy {acc:.4f} < min {target.min_accuracy:g}")
    if target.max_perplexity is not None:
        ppl = _value(record, names.PERPLEXITY)
        if ppl is None:
            miss("quality", "perplexity not measured", "perplexity not measured")
        elif ppl > target.max_perplexity:
            miss("quality", f"perplexity {ppl:.1f} > {target.max_perplexity:g}",
                 f"perplexity {ppl:.2f} > max {target.max_perplexity:g}")
    return why


def fit_reasons(record: Footprint, target: HardwareTarget) -> list[str]:
    """Why ``record`` does not fit ``target``, one sentence per missed limit (empty when it fits)."""
    return [m.text for m in fit_misses(record, target)]


def choose_best(
    records: Sequence[Footprint], objectives: Sequence[Objective], tolerance: float = QUALITY_TOLERANCE
) -> Footprint | None:
    """The policy: quality first (``objectives[0]``), within ``tolerance`` of the best; then the rest of the
    objectives in order; then the better quality. None for no records."""
    if not records:
        return None
    quality, rest = objectives[0], objectives[1:]
    oriented = {id(r): _score(r, [quality])[0] for r in records}  # smaller is better
    best = min(oriented.values())
    if math.isinf(best):
        close = list(records)
    elif quality[1] == "max":
        close = [r for r in records if oriented[id(r)] <= best + tolerance]
    else:
        close = [r for r in records if oriented[id(r)] <= best * (1 + tolerance)]
    return min(close, key=lambda r: (*_score(r, rest), oriented[id(r)]))


def select_variant(
    records: Sequence[Footprint], target: HardwareTarget, tolerance: float = QUALITY_TOLERANCE
) -> Selection:
    """The best fitting variant under ``target`` (or ``chosen=None``), the front and per-variant reasons."""
    objectives = selection_objectives(records, target)
    front = pareto_front(records, objectives)
    reasons: dict[str, list[str]] = {}
    fitting: list[Footprint] = []
    for record in records:
        why = fit_reasons(record, target)
        if why:
            reasons.setdefault(record.variant, []).extend(why)
        else:
            fitting.append(record)
    chosen = choose_best(fitting, objectives, tolerance)
    notes = noise_notes(records)
    if target.compute_flops is not None:
        notes.append("compute_flops is not checked per variant (no FLOP count is measured); the latency SLO covers compute")
    if target.bandwidth_bytes_per_s is not None and target.latency_ms is None:
        notes.append("bandwidth limits only with a latency SLO (bytes per forward / bandwidth vs the SLO)")
    return Selection(
        target=target,
        chosen=chosen,
        front=front,
        fitting=fitting,
        reasons=reasons,
        failed=[r for r in records if not r.ok],
        objectives=objectives,
        notes=notes,
    )


def select_per_tier(
    records: Sequence[Footprint],
    target: HardwareTarget | None = None,
    tiers: Sequence[int] = names.BUDGET_TIERS_BYTES,
) -> dict[int, Footprint]:
    """For each memory tier, the variant chosen under ``target`` with that memory budget (tiers nothing fits are left out)."""
    base = target or HardwareTarget()
    out: dict[int, Footprint] = {}
    for tier in tiers:
        chosen = select_variant(records, base.model_copy(update={"memory_bytes": tier})).chosen
        if chosen is not None:
            out[tier] = chosen
    return out


def registry_aliases(
    records: Sequence[Footprint], target: HardwareTarget, tiers: Sequence[int] = names.BUDGET_TIERS_BYTES
) -> dict[str, list[str]]:
    """Registry aliases per variant: ``champion`` for the variant chosen under ``target`` and ``fits-<tier>``
    for the best fit of each memory tier (the target's other limits kept)."""
    aliases: dict[str, list[str]] = {}
    chosen = select_variant(records, target).chosen
    if chosen is not None:
        aliases.setdefault(chosen.variant, []).append(names.ALIAS_CHAMPION)
    for tier, record in select_per_tier(records, target.model_copy(update={"memory_bytes": None}), tiers).items():
        aliases.setdefault(record.variant, []).append(names.budget_alias(tier))
    return aliases


def tier_alias(record: Footprint, memory_bytes: int | None) -> str | None:
    """The memory-tier alias of a budget (the largest tier not above it), when ``record`` fits that tier
    by the same memory checks selection applies; None otherwise."""
    tier = names.tier_for_budget(int(memory_bytes)) if memory_bytes else None
    if tier is None or fit_reasons(record, HardwareTarget(memory_bytes=tier)):
        return None
    return names.budget_alias(tier)
