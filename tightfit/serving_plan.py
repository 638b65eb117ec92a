"""The serving planner: which variant, batch size, token cap, concurrency and replica memory fit a budget.

Pure code: footprint records + a per-replica memory budget (+ optional latency SLO / minimum accuracy)
+ the calibrated serving memory model in, a `ServePlan` out. The plan is the one source of every Ray
Serve setting: the application (`ray_jobs/serve.py`) configures itself from it, `to_serve_config()` is
the Serve config v2 dict the CLI deploys and the KubeRay RayService embeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tightfit.errors import BudgetError, ConfigError
from tightfit.footprint import Footprint
from tightfit.memory.serving import ServingMemoryModel, activation_dtype_bytes
from tightfit.serving_records import (
    DEFAULT_HEADROOM,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_MAX_TOKENS,
    Candidate,
    footprint_for_source,
    load_rss_of,
    resolve_candidates,
    source_of,
    weight_bytes_of,
)
from tightfit.units import format_bytes

BATCH_LADDER = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128)
APP_NAME = "tightfit"
DEPLOYMENT_NAME = "TightfitServer"
IMPORT_PATH = "tightfit.ray_jobs.serve:app_builder"
AUTOSCALING_POLICY = "tightfit.serving_autoscale:memory_aware_policy"
__all__ = [
    "Candidate",
    "PlannedVariant",
    "ServePlan",
    "footprint_for_source",
    "load_rss_of",
    "plan_serving",
    "resolve_candidates",
    "source_of",
    "weight_bytes_of",
]


@dataclass
class PlannedVariant:
    """One variant the replica may serve, with the settings that keep it inside the budget."""

    name: str
    kind: str
    source: str  # variant dir, HF dir or built-in model name the replica loads
    chain: str
    weight_bytes: int
    resident_bytes: int  # predicted weights in memory
    max_batch_size: int
    max_tokens: int  # per-request token cap (prompt tokens for LMs)
    max_new_tokens: int
    predicted_peak_bytes: int  # runtime + this variant alone at its batch and token cap
    activation_bytes: int
    kv_cache_bytes: int
    accuracy: float | None = None
    perplexity: float | None = None
    latency_ms_batch: float | None = None  # estimated latency of one full batch


@dataclass
class ServePlan:
    """Everything the Serve app and its deployment config need, derived from one budget."""

    budget_bytes: int
    usable_bytes: int  # budget minus the safety headroom
    primary: PlannedVariant
    pool: list[PlannedVariant]  # every variant the replica may load, primary first
    pool_bytes: int  # resident-weight bytes the multiplexed pool holds at once (LRU eviction by bytes beyond)
    predicted_peak_bytes: int  # replica peak: runtime + pool weights + largest activation set
    runtime_bytes: int
    max_ongoing_requests: int
    max_queued_requests: int
    retry_after_s: float
    batch_wait_timeout_s: float
    num_replicas: int
    max_replicas: int
    cpus_per_replica: float
    max_request_bytes: int
    latency_slo_ms: float | None = None
    min_accuracy: float | None = None
    memory_model: dict[str, Any] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)  # variant -> why it was not chosen

    @property
    def max_models_per_replica(self) -> int:
        """The most pool members that can ever be resident at once (the smallest ones), for
        ``@serve.multiplexed``; eviction by bytes keeps any mix inside ``pool_bytes``."""
        count, used = 0, 0
        for size in sorted(v.resident_bytes for v in self.pool):
            if used + size > self.pool_bytes:
                break
            count, used = count + 1, used + size
        return max(1, count)

    def variant(self, name: str) -> PlannedVariant | None:
        return next((v for v in self.pool if v.name == name), None)

    def default_for(self, kind: str) -> PlannedVariant | None:
        """The variant a request of this kind gets when it names none (the first of that kind in the pool)."""
        return next((v for v in self.pool if v.kind == kind), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServePlan:
        data = dict(data)
        data["primary"] = PlannedVariant(**data["primary"])
        data["pool"] = [PlannedVariant(**v) for v in data["pool"]]
        return cls(**data)

    def autoscaling_config(self) -> dict[str, Any] | None:
        """Memory-aware autoscaling between 1 and max_replicas (None for a fixed replica count)."""
        if self.max_replicas <= self.num_replicas:
            return None
        return {
            "min_replicas": self.num_replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": float(self.primary.max_batch_size),
            "upscale_delay_s": 5.0,
            "downscale_delay_s": 60.0,
            "metrics_interval_s": 2.0,
            "look_back_period_s": 10.0,
            "policy": {"policy_function": AUTOSCALING_POLICY},
        }

    def deployment_options(self) -> dict[str, Any]:
        """Options for `TightfitServer.options(...)` and the Serve config's deployment entry."""
        options: dict[str, Any] = {
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "ray_actor_options": {"num_cpus": self.cpus_per_replica, "memory": self.predicted_peak_bytes},
            "backpressure_config": {"status_code": 503, "retry_after_s": self.retry_after_s},
            "health_check_period_s": 10.0,
            "health_check_timeout_s": 60.0,
        }
        autoscaling = self.autoscaling_config()
        if autoscaling is None:
            options["num_replicas"] = self.num_replicas
        else:
            options["autoscaling_config"] = autoscaling
        return options

    def to_serve_config(self, *, host: str = "0.0.0.0", port: int = 8000, route_prefix: str = "/") -> dict[str, Any]:
        """The Serve config v2 dict (`serve deploy` / RayService `serveConfigV2`) for this plan."""
        return {
            "http_options": {"host": host, "port": port},
            "applications": [
                {
                    "name": APP_NAME,
                    "route_prefix": route_prefix,
                    "import_path": IMPORT_PATH,
                    "args": {"plan": self.to_dict()},
                    "deployments": [{"name": DEPLOYMENT_NAME, **self.deployment_options()}],
                }
            ],
        }

    def describe(self) -> str:
        """A few lines for people: the chosen variant, batch, replicas and predicted vs budget memory."""
        p = self.primary
        lines = [
            f"variant        {p.name} ({p.kind}, {p.chain})"
            + (f", accuracy {p.accuracy:.3f}" if p.accuracy is not None else "")
            + (f", perplexity {p.perplexity:.2f}" if p.perplexity is not None else ""),
            f"memory         predicted peak {format_bytes(self.predicted_peak_bytes)} of budget "
            f"{format_bytes(self.budget_bytes)} (runtime {format_bytes(self.runtime_bytes)}, weights "
            f"{format_bytes(p.resident_bytes)}, activations {format_bytes(p.activation_bytes)}"
            + (f", KV cache {format_bytes(p.kv_cache_bytes)}" if p.kv_cache_bytes else "")
            + ")",
            f"batching       max_batch_size {p.max_batch_size}, wait {self.batch_wait_timeout_s * 1000:.0f} ms, "
            f"token cap {p.max_tokens}" + (f", max_new_tokens {p.max_new_tokens}" if p.kind == "causal_lm" else ""),
            f"backpressure   max_ongoing_requests {self.max_ongoing_requests}, max_queued_requests "
            f"{self.max_queued_requests}, 503 with Retry-After {self.retry_after_s:g}s",
            f"replicas       {self.num_replicas}"
            + (f" (autoscaling up to {self.max_replicas} on load and RSS)" if self.max_replicas > self.num_replicas else "")
            + f", {self.cpus_per_replica:g} CPU each, ray_actor_options.memory {format_bytes(self.predicted_peak_bytes)}",
        ]
        if len(self.pool) > 1:
            others = ", ".join(v.name for v in self.pool[1:])
            lines.append(f"pool           {others} (multiplexed, evicted by bytes beyond {format_bytes(self.pool_bytes)})")
        for name, why in self.rejected.items():
            lines.append(f"not chosen     {name}: {why}")
        return "\n".join(lines)


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
        if latency_slo_ms is not None and latency is not None and 2 * latency > latency_slo_ms:
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
