"""The serving planner: which variant, batch size, token cap, concurrency and replica memory fit a budget.

Pure code: footprint records + a per-replica memory budget (+ optional latency SLO / minimum accuracy)
+ the calibrated serving memory model in, a `ServePlan` out. The plan is the one source of every Ray
Serve setting: the application (`ray_jobs/serve.py`) configures itself from it, `to_serve_config()` is
the Serve config v2 dict the CLI deploys and the KubeRay RayService embeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

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
from tightfit.memory.serving import ServingMemoryModel, activation_dtype_bytes
from tightfit.serve.schema import (
    PlannedVariant,
    ServePlan,
)
from tightfit.units import format_bytes

BATCH_LADDER = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128)


def estimate_batch_latency_ms(record: Footprint, batch: int) -> float | None:
    """Latency of one batch, interpolated linearly between the measured batch-1 and batch-32 p95."""
    b1 = record.latency_ms_b1_p95 or record.latency_ms_b1_p50
    b32 = record.latency_ms_b32_p95 or record.latency_ms_b32_p50
    if b1 is None and b32 is None:
        return None
    if b32 is None:
        return float(b1) * batch  # type: ignore[arg-type]
    if b1 is None:
        return float(b32) * batch / 32
    return float(b1) + (float(b32) - float(b1)) * (batch - 1) / 31


def plan_variant(
    cand: Candidate,
    model: ServingMemoryModel,
    usable: int,
    *,
    max_tokens: int,
    max_new_tokens: int,
    latency_slo_ms: float | None,
    max_batch: int,
    activation_cap: int | None = None,
) -> PlannedVariant | str:
    """The largest batch whose predicted peak (and latency) fits, or the reason none does."""
    dtype = activation_dtype_bytes(cand.record.chain)
    new = max_new_tokens if cand.arch.kind == "causal_lm" else 0
    best = None
    for batch in [b for b in BATCH_LADDER if b <= max_batch]:
        pred = model.predict(
            cand.weight_bytes, cand.arch, batch=batch, seq_len=max_tokens, dtype_bytes=dtype, new_tokens=new,
            load_rss_bytes=cand.load_rss_bytes,
        )
        if pred.total > usable:
            if best is None:
                return (
                    f"needs {format_bytes(pred.total)} at batch 1 x {max_tokens} tokens "
                    f"(runtime {format_bytes(pred.runtime)} + weights {format_bytes(pred.weights)} + activations "
                    f"{format_bytes(pred.activations + pred.kv_cache)}), over the usable {format_bytes(usable)}"
                )
            break
        if activation_cap is not None and pred.activations + pred.kv_cache > activation_cap and best is not None:
            break
        latency = estimate_batch_latency_ms(cand.record, batch)
        # a request may wait for the batch in flight and then run in its own: two batch times
        if latency_slo_ms is not None and latency is not None and BATCHES_PER_REQUEST * latency > latency_slo_ms:
            if best is None:
                return f"batch-1 latency ~{latency:.0f} ms cannot meet the {latency_slo_ms:g} ms SLO"
            break
        best = PlannedVariant(
            name=cand.record.variant,
            kind=cand.arch.kind,
            source=cand.source,
            chain=cand.record.chain,
            weight_bytes=cand.weight_bytes,
            resident_bytes=pred.weights,
            max_batch_size=batch,
            max_tokens=max_tokens,
            max_new_tokens=new,
            predicted_peak_bytes=pred.total,
            activation_bytes=pred.activations,
            kv_cache_bytes=pred.kv_cache,
            accuracy=cand.record.accuracy,
            perplexity=cand.record.perplexity,
            latency_ms_batch=latency,
        )
    assert best is not None
    return best


def _quality_key(v: PlannedVariant) -> float:
    if v.accuracy is not None:
        return v.accuracy
    if v.perplexity is not None:
        return -v.perplexity / 1000.0
    return -1.0


def _speed_key(v: PlannedVariant) -> float:
    """Throughput proxy: sequences per ms at the planned batch (higher is better)."""
    if v.latency_ms_batch:
        return v.max_batch_size / v.latency_ms_batch
    return v.max_batch_size / max(1.0, v.weight_bytes / 2**20)


def plan_serving(
    records: Sequence[Footprint],
    budget_bytes: int,
    *,
    model: ServingMemoryModel | None = None,
    kind: str | None = None,
    variant: str | None = None,
    latency_slo_ms: float | None = None,
    min_accuracy: float | None = None,
    accuracy_tolerance: float = 0.005,
    max_tokens: int | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    max_batch: int = 64,
    headroom: float = DEFAULT_HEADROOM,
    pool_size: int = 3,
    num_replicas: int = 1,
    max_replicas: int | None = None,
    cpus_per_replica: float = 1.0,
    base_dir: Path | None = None,
    sources: dict[str, str] | None = None,
) -> ServePlan:
    """Choose the best-quality variant that fits ``budget_bytes`` per replica and size every Serve knob.

    Among fitting variants within ``accuracy_tolerance`` of the best accuracy, the fastest at its batch
    wins. Raises BudgetError naming the smallest variant's need when nothing fits.
    """
    if budget_bytes <= 0:
        raise ConfigError(f"memory budget must be positive, got {budget_bytes}")
    if not 0 <= headroom < 0.5:
        raise ConfigError(f"headroom is a fraction in [0, 0.5), got {headroom}")
    model = model or ServingMemoryModel()
    usable = int(budget_bytes * (1 - headroom))
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
    planned: list[PlannedVariant] = []
    needs: list[tuple[int, str]] = []
    for cand in candidates:
        tokens = max_tokens or DEFAULT_MAX_TOKENS.get(cand.arch.kind, 64)
        if min_accuracy is not None and cand.record.accuracy is not None and cand.record.accuracy < min_accuracy:
            rejected[cand.record.variant] = f"accuracy {cand.record.accuracy:.3f} below the minimum {min_accuracy:g}"
            continue
        result = plan_variant(
            cand, model, usable, max_tokens=tokens, max_new_tokens=max_new_tokens,
            latency_slo_ms=latency_slo_ms, max_batch=max_batch,
        )
        if isinstance(result, str):
            rejected[cand.record.variant] = result
            need = model.predict(
                cand.weight_bytes, cand.arch, batch=1, seq_len=tokens,
                dtype_bytes=activation_dtype_bytes(cand.record.chain),
                new_tokens=max_new_tokens if cand.arch.kind == "causal_lm" else 0,
                load_rss_bytes=cand.load_rss_bytes,
            ).total
            needs.append((need, cand.record.variant))
        else:
            planned.append(result)
    if not planned:
        if needs:
            need, name = min(needs)
            raise BudgetError(
                f"no variant fits a replica budget of {format_bytes(budget_bytes)}: the smallest, {name!r}, needs "
                f"about {format_bytes(need / (1 - headroom))} (predicted peak {format_bytes(need)} plus "
                f"{headroom:.0%} headroom); raise --memory-budget or compress further. Details: {rejected}"
            )
        raise BudgetError(f"no variant meets the constraints: {rejected}")
    best_quality = max(_quality_key(v) for v in planned)
    close = [v for v in planned if _quality_key(v) >= best_quality - accuracy_tolerance]
    primary = max(close, key=lambda v: (_speed_key(v), _quality_key(v)))
    for v in planned:
        if v is not primary and v.name not in rejected:
            rejected[v.name] = (
                f"fits, but {'slower' if _quality_key(v) >= best_quality - accuracy_tolerance else 'less accurate'} "
                f"than {primary.name}"
            )
    runtime = _runtime_bytes(primary)
    act_set = primary.activation_bytes + primary.kv_cache_bytes
    pool = [primary]
    others = sorted((v for v in planned if v is not primary), key=_quality_key, reverse=True)
    for v in others:
        if len(pool) >= pool_size:
            break
        replanned = _fit_under(v, candidates, model, usable, act_set, max_new_tokens, latency_slo_ms, max_batch)
        if replanned is None:
            continue
        # the replica's runtime is the largest any member brings (e.g. torchao's import for int8 variants);
        # each member must fit alone beside it; together they are evicted by bytes (LRU)
        joint_runtime = max(runtime, _runtime_bytes(replanned))
        if max(m.resident_bytes for m in [*pool, replanned]) <= usable - joint_runtime - act_set:
            pool.append(replanned)
            runtime = joint_runtime
    pool_bytes = usable - runtime - act_set
    held = min(pool_bytes, sum(v.resident_bytes for v in pool))
    peak = runtime + held + act_set
    batch = primary.max_batch_size
    max_ongoing = max(2, 2 * batch)
    max_queued = max(4, 2 * batch)
    batch_ms = primary.latency_ms_batch or 50.0
    retry_after = float(max(1, math.ceil((max_queued / batch + 1) * batch_ms / 1000)))
    wait = min(0.05, max(0.005, batch_ms / 4000)) if batch > 1 else 0.0
    return ServePlan(
        budget_bytes=int(budget_bytes),
        usable_bytes=usable,
        primary=primary,
        pool=pool,
        pool_bytes=int(pool_bytes),
        predicted_peak_bytes=int(peak),
        runtime_bytes=int(runtime),
        max_ongoing_requests=max_ongoing,
        max_queued_requests=max_queued,
        retry_after_s=retry_after,
        batch_wait_timeout_s=round(wait, 4),
        num_replicas=num_replicas,
        max_replicas=max(num_replicas, max_replicas or num_replicas),
        cpus_per_replica=cpus_per_replica,
        max_request_bytes=64 * 1024,
        latency_slo_ms=latency_slo_ms,
        min_accuracy=min_accuracy,
        memory_model={k: v for k, v in model.to_dict().items() if k != "calibration_points"},
        rejected=rejected,
    )


def _runtime_bytes(v: PlannedVariant) -> int:
    """The runtime share of a variant's predicted peak (interpreter, torch, libraries)."""
    return v.predicted_peak_bytes - v.resident_bytes - v.activation_bytes - v.kv_cache_bytes


def _fit_under(
    v: PlannedVariant,
    candidates: list[Candidate],
    model: ServingMemoryModel,
    usable: int,
    act_cap: int,
    max_new_tokens: int,
    latency_slo_ms: float | None,
    max_batch: int,
) -> PlannedVariant | None:
    """Re-plan a pool member so its activations never exceed the primary's (one batch runs at a time)."""
    cand = next(c for c in candidates if c.record.variant == v.name)
    result = plan_variant(
        cand, model, usable, max_tokens=v.max_tokens, max_new_tokens=max_new_tokens,
        latency_slo_ms=latency_slo_ms, max_batch=max_batch, activation_cap=act_cap,
    )
    if isinstance(result, str) or result.activation_bytes + result.kv_cache_bytes > act_cap:
        return None
    return result
