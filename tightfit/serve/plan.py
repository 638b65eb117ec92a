"""The serving planner: which variant, batch size, token cap, concurrency and replica memory fit a budget.

Pure code: footprint records + a per-replica memory budget + ``ServeOptions`` (latency SLO, minimum
accuracy, token caps, pool size, replicas) + the calibrated serving memory model in, a `ServePlan` out. The
plan is the one source of every Ray Serve setting: the application (`tightfit.serve.app`) configures itself
from it, `to_serve_config()` is the Serve config v2 dict the CLI deploys and the KubeRay RayService embeds.

The steps, each a function below: resolve the records to candidates; fit each candidate (the largest batch
whose predicted peak and latency fit); choose the primary with the one selection policy
(``tightfit.select.choose_best``, as the pipeline's ``select`` step does); fill the multiplexed pool; size
concurrency and backpressure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tightfit import names
from tightfit.errors import BudgetError, ConfigError
from tightfit.footprint import Footprint
from tightfit.memory.replica import (
    BATCHES_PER_REQUEST,
    DEFAULT_HEADROOM,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_MAX_TOKENS,
    Candidate,
    resolve_candidates,
)
from tightfit.memory.serving import Prediction, ServingMemoryModel, activation_dtype_bytes
from tightfit.select.choose import QUALITY_TOLERANCE, judged_latency, select_variant
from tightfit.serve.schema import PlannedVariant, ServePlan
from tightfit.spec import HardwareTarget
from tightfit.units import format_bytes

BATCH_LADDER = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128)
OPTION_LIMITS = {
    "max_batch": 4096, "pool_size": 64, "num_replicas": 10_000, "max_replicas": 10_000, "max_new_tokens": 32_768,
    "max_tokens": 32_768, "cpus_per_replica": 1024,
}
"""The most a person can mean for each serving option; beyond is a typo, refused in one line."""
BYTES_PER_TOKEN = 32
"""Request bytes one token may take: UTF-8 (up to 4 bytes a character) inside JSON, where a non-ASCII
character may be escaped as ``\\uXXXX`` (6 bytes, 12 for a surrogate pair), several characters a token."""
REQUEST_OVERHEAD_BYTES = 4096
"""JSON keys, quotes, a variant name and the generation settings around the texts."""


@dataclass(frozen=True)
class ServeOptions:
    """What a user may set besides the budget (the CLI flags of ``tightfit serve``)."""

    latency_slo_ms: float | None = None
    min_accuracy: float | None = None
    accuracy_tolerance: float = QUALITY_TOLERANCE
    max_tokens: int | None = None  # per-text token cap; default per model kind
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    max_batch: int = 64
    headroom: float = DEFAULT_HEADROOM
    pool_size: int = 3
    num_replicas: int = 1
    max_replicas: int | None = None
    cpus_per_replica: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.headroom < 0.5:
            raise ConfigError(f"headroom is a fraction in [0, 0.5), got {self.headroom}")
        for key, most in OPTION_LIMITS.items():
            value = getattr(self, key)
            if value is None:
                continue
            if not math.isfinite(value) or not 0 < value <= most:
                raise ConfigError(f"{key} must be in 1..{most:,}, got {value}")
        if not math.isfinite(self.accuracy_tolerance) or not 0 <= self.accuracy_tolerance < 1:
            raise ConfigError(
                f"accuracy_tolerance is a fraction in [0, 1) (0.01: 1 point), got {self.accuracy_tolerance}"
            )
        if self.cpus_per_replica <= 0 or not math.isfinite(self.cpus_per_replica):
            raise ConfigError(f"cpus_per_replica must be positive, got {self.cpus_per_replica}")

    def tokens_for(self, kind: str) -> int:
        return self.max_tokens or DEFAULT_MAX_TOKENS.get(kind, 64)


@dataclass(frozen=True)
class Fit:
    """The outcome of fitting one candidate: its plan, or why not and what batch 1 would need."""

    planned: PlannedVariant | None
    reason: str = ""
    need_bytes: int = 0


def estimate_batch_latency_ms(record: Footprint, batch: int) -> float | None:
    """Latency of one batch, interpolated linearly between the measured batch-1 and batch-32 p95 (p99 for a
    figure flagged noisy, as selection judges it)."""
    b1 = judged_latency(record, names.LATENCY_MS_B1_P95)[1] or record.latency_ms_b1_p50
    b32 = judged_latency(record, names.LATENCY_MS_B32_P95)[1] or record.latency_ms_b32_p50
    if b1 is None and b32 is None:
        return None
    if b32 is None:
        return float(b1) * batch  # type: ignore[arg-type]
    if b1 is None:
        return float(b32) * batch / 32
    return float(b1) + (float(b32) - float(b1)) * (batch - 1) / 31


def _predict(cand: Candidate, model: ServingMemoryModel, options: ServeOptions, batch: int) -> Prediction:
    new = options.max_new_tokens if cand.arch.kind == "causal_lm" else 0
    return model.predict(
        cand.weight_bytes, cand.arch, batch=batch, seq_len=options.tokens_for(cand.arch.kind),
        dtype_bytes=activation_dtype_bytes(cand.record.chain), new_tokens=new, load_rss_bytes=cand.load_rss_bytes,
        runtime=cand.record.runtime, measured=cand.measured, settled_rss_bytes=cand.settled_rss_bytes,
    )


def fit_variant(
    cand: Candidate, model: ServingMemoryModel, usable: int, options: ServeOptions, activation_cap: int | None = None,
) -> Fit:
    """The largest batch on the ladder whose predicted peak fits ``usable`` bytes, whose activations stay
    under ``activation_cap`` (pool members) and whose latency meets the SLO; or the reason none does."""
    tokens = options.tokens_for(cand.arch.kind)
    positions = cand.arch.max_positions
    longest = tokens + (options.max_new_tokens if cand.arch.kind == "causal_lm" else 0)
    if positions and longest > positions:
        return Fit(None, f"the token cap {longest} is over the {positions} positions the model reads; lower --max-tokens")
    best: PlannedVariant | None = None
    for batch in [b for b in BATCH_LADDER if b <= options.max_batch]:
        pred = _predict(cand, model, options, batch)
        if pred.total > usable:
            if best is None:
                return Fit(None, (
                    f"needs {format_bytes(pred.total)} at batch 1 x {tokens} tokens (runtime "
                    f"{format_bytes(pred.runtime)} + weights {format_bytes(pred.weights)} + activations "
                    f"{format_bytes(pred.activations + pred.kv_cache)}), over the usable {format_bytes(usable)}"
                ), pred.total)
            break
        if activation_cap is not None and pred.activations + pred.kv_cache > activation_cap:
            break
        latency = estimate_batch_latency_ms(cand.record, batch)
        # a request may wait for the batch in flight and then run in its own: two batch times
        slo = options.latency_slo_ms
        if slo is not None and latency is not None and BATCHES_PER_REQUEST * latency > slo:
            if best is None:
                return Fit(None, f"batch-1 latency ~{latency:.0f} ms cannot meet the {slo:g} ms SLO", pred.total)
            break
        best = PlannedVariant(
            name=cand.record.variant, kind=cand.arch.kind, source=cand.source, chain=cand.record.chain,
            weight_bytes=cand.weight_bytes, resident_bytes=pred.weights, max_batch_size=batch, max_tokens=tokens,
            max_new_tokens=options.max_new_tokens if cand.arch.kind == "causal_lm" else 0,
            predicted_peak_bytes=pred.total, activation_bytes=pred.activations, kv_cache_bytes=pred.kv_cache,
            accuracy=cand.record.accuracy, perplexity=cand.record.perplexity, latency_ms_batch=latency,
            runtime=cand.record.runtime,
        )
    if best is None:  # only an activation cap below batch 1 gets here
        return Fit(None, "its batch-1 activations exceed what the replica leaves for them")
    return Fit(best)


def _candidates(
    records: Sequence[Footprint], kind: str | None, variant: str | None, base_dir: Path | None,
    sources: dict[str, str] | None,
) -> tuple[list[Candidate], dict[str, str]]:
    """The servable records (resolved to dirs and shapes), narrowed to ``kind`` / ``variant``."""
    candidates, rejected = resolve_candidates(records, base_dir=base_dir, sources=sources)
    if kind:
        candidates = [c for c in candidates if c.arch.kind == kind]
    if variant:
        candidates = [c for c in candidates if variant in (c.record.variant, c.source)]
        if not candidates:
            known = ", ".join(r.variant for r in records) or "none"
            raise ConfigError(f"variant {variant!r} is not among the footprint records ({known})")
    if not candidates:
        raise ConfigError(
            "no servable variant in the footprint records" + (f": {rejected}" if rejected else "")
            + "; profile variants first (`tightfit profile`) or pass --variant DIR"
        )
    return candidates, rejected


def choose_primary(
    fits: dict[str, PlannedVariant], candidates: Sequence[Candidate], options: ServeOptions,
    rejected: dict[str, str],
) -> PlannedVariant:
    """The primary variant among those that fit, by the one selection policy under the SLO and accuracy
    floor (memory is already judged by the planner's own model). Losers get their reason in ``rejected``."""
    records = [c.record for c in candidates if c.record.variant in fits]
    target = HardwareTarget(latency_ms=options.latency_slo_ms, min_accuracy=options.min_accuracy)
    selection = select_variant(records, target, tolerance=options.accuracy_tolerance)
    for name, why in selection.reasons.items():
        rejected[name] = "; ".join(why)
    if selection.chosen is None:
        raise BudgetError(f"no variant meets the constraints: {rejected}")
    primary = fits[selection.chosen.variant]
    best = max((r.accuracy for r in selection.fitting if r.accuracy is not None), default=None)
    for record in selection.fitting:
        name = record.variant
        if name == primary.name or name in rejected:
            continue
        if best is not None and record.accuracy is not None and record.accuracy < best - options.accuracy_tolerance:
            rejected[name] = (f"fits, but accuracy {record.accuracy:.4f} is more than {options.accuracy_tolerance:g} "
                              f"below the best {best:.4f} (--accuracy-tolerance)")
        else:
            rejected[name] = f"fits, but {primary.name} ranks first (quality within tolerance, then memory, disk, latency)"
    return primary


def _runtime_bytes(v: PlannedVariant) -> int:
    """The runtime share of a variant's predicted peak (interpreter, torch or ONNX Runtime, libraries)."""
    return v.predicted_peak_bytes - v.resident_bytes - v.activation_bytes - v.kv_cache_bytes


def pool_runtime_bytes(members: Sequence[PlannedVariant]) -> int:
    """The runtime share of a pool: per runtime the largest share among its members, summed over the
    runtimes the pool mixes (a replica that loaded a torch variant keeps torch imported beside ONNX
    Runtime; counting the interpreter once per runtime errs on the safe side)."""
    largest: dict[str, int] = {}
    for v in members:
        largest[v.runtime] = max(largest.get(v.runtime, 0), _runtime_bytes(v))
    return sum(largest.values())


def fill_pool(
    primary: PlannedVariant, fits: dict[str, PlannedVariant], candidates: Sequence[Candidate],
    model: ServingMemoryModel, usable: int, options: ServeOptions,
) -> tuple[list[PlannedVariant], int]:
    """Pool members after the primary (best quality first), each re-planned so its activations never exceed
    the primary's (one batch runs at a time) and fitting alone beside the runtimes the members bring (the
    largest per runtime, e.g. torchao's import for int8 variants, summed when torch and ONNX Runtime
    variants mix). Returns (pool, runtime bytes)."""
    runtime = pool_runtime_bytes([primary])
    act_set = primary.activation_bytes + primary.kv_cache_bytes
    pool = [primary]
    by_name = {c.record.variant: c for c in candidates}
    others = sorted((v for v in fits.values() if v is not primary), key=_quality_key, reverse=True)
    for v in others:
        if len(pool) >= options.pool_size:
            break
        member = fit_variant(by_name[v.name], model, usable, options, activation_cap=act_set).planned
        if member is None:
            continue
        joint_runtime = pool_runtime_bytes([*pool, member])
        if max(m.resident_bytes for m in [*pool, member]) <= usable - joint_runtime - act_set:
            pool.append(member)
            runtime = joint_runtime
    return pool, runtime


def _quality_key(v: PlannedVariant) -> float:
    if v.accuracy is not None:
        return v.accuracy
    if v.perplexity is not None:
        return -v.perplexity
    return -math.inf


def plan_serving(
    records: Sequence[Footprint],
    budget_bytes: int,
    options: ServeOptions | None = None,
    *,
    model: ServingMemoryModel | None = None,
    kind: str | None = None,
    variant: str | None = None,
    base_dir: Path | None = None,
    sources: dict[str, str] | None = None,
) -> ServePlan:
    """The `ServePlan` for a per-replica ``budget_bytes``: the primary variant chosen by the selection
    policy among those that fit, its pool, batch, token caps, concurrency and replica memory.

    Raises BudgetError naming the smallest variant's need when nothing fits.
    """
    if budget_bytes <= 0:
        raise ConfigError(f"memory budget must be positive, got {budget_bytes}")
    options = options or ServeOptions()
    model = model or ServingMemoryModel()
    usable = int(budget_bytes * (1 - options.headroom))
    candidates, rejected = _candidates(records, kind, variant, base_dir, sources)
    fits: dict[str, PlannedVariant] = {}
    needs: list[tuple[int, str]] = []
    for cand in candidates:
        fit = fit_variant(cand, model, usable, options)
        if fit.planned is None:
            rejected[cand.record.variant] = fit.reason
            needs.append((fit.need_bytes, cand.record.variant))
        else:
            fits[cand.record.variant] = fit.planned
    if not fits:
        if needs:
            need, name = min(needs)
            raise BudgetError(
                f"no variant fits a replica budget of {format_bytes(budget_bytes)}: the smallest, {name!r}, needs "
                f"about {format_bytes(need / (1 - options.headroom))} (predicted peak {format_bytes(need)} plus "
                f"{options.headroom:.0%} headroom); raise --memory-budget or compress further. Details: {rejected}"
            )
        raise BudgetError(f"no variant meets the constraints: {rejected}")
    primary = choose_primary(fits, candidates, options, rejected)
    pool, runtime = fill_pool(primary, fits, candidates, model, usable, options)
    return _size_settings(budget_bytes, usable, primary, pool, runtime, model, options, rejected)


def _size_settings(
    budget_bytes: int, usable: int, primary: PlannedVariant, pool: list[PlannedVariant], runtime: int,
    model: ServingMemoryModel, options: ServeOptions, rejected: dict[str, str],
) -> ServePlan:
    """Concurrency, backpressure and replica memory from the primary's batch and latency."""
    act_set = primary.activation_bytes + primary.kv_cache_bytes
    pool_bytes = usable - runtime - act_set
    held = min(pool_bytes, sum(v.resident_bytes for v in pool))
    batch = primary.max_batch_size
    max_queued = max(4, 2 * batch)
    batch_ms = primary.latency_ms_batch or 50.0
    max_ongoing = max(2, 2 * batch)
    # The slowest answer a client can wait for: the requests ahead of it (ongoing + queued) in batches.
    slowest_s = (max_ongoing + max_queued) / batch * max(batch_ms, 50.0) / 1000
    return ServePlan(
        budget_bytes=int(budget_bytes),
        usable_bytes=usable,
        primary=primary,
        pool=pool,
        pool_bytes=int(pool_bytes),
        predicted_peak_bytes=int(runtime + held + act_set),
        runtime_bytes=int(runtime),
        max_ongoing_requests=max_ongoing,
        max_queued_requests=max_queued,
        retry_after_s=float(max(1, math.ceil((max_queued / batch + 1) * batch_ms / 1000))),
        batch_wait_timeout_s=batch_wait_s(batch, batch_ms),
        num_replicas=options.num_replicas,
        max_replicas=max(options.num_replicas, options.max_replicas or options.num_replicas),
        cpus_per_replica=options.cpus_per_replica,
        max_request_bytes=max_request_bytes(pool),
        request_timeout_s=float(max(60, math.ceil(10 * slowest_s))),
        latency_slo_ms=options.latency_slo_ms,
        min_accuracy=options.min_accuracy,
        memory_model={k: v for k, v in model.to_dict().items() if k != "calibration_points"},
        rejected=rejected,
    )


def batch_wait_s(batch: int, batch_ms: float) -> float:
    """``@serve.batch``'s wait: about one sequence's share of a full batch, 1-10 ms (10 ms is Ray's default).

    Ray's batcher holds every batch that is not full for the whole wait while the model thread idles, so a
    long wait delays every request at any load short of full batches. Under load, requests queue while the
    batch in flight runs (one batch at a time) and batches grow without waiting. Until 2026-11-27 the wait was
    a quarter of a full batch's time (50 ms for the ONNX student at batch 48): its batches of 5-8 each
    waited the full 50 ms at 80-90 requests/s."""
    if batch <= 1:
        return 0.0
    return round(min(0.010, max(0.001, batch_ms / batch / 1000)), 4)


def max_request_bytes(pool: Sequence[PlannedVariant]) -> int:
    """The largest request body any pool member can need: its texts per request x token cap x bytes per
    token, plus the JSON around them. The app refuses a larger body (413) before reading it."""
    tokens = max(v.max_batch_size * v.max_tokens for v in pool)
    return int(tokens * BYTES_PER_TOKEN + REQUEST_OVERHEAD_BYTES)
