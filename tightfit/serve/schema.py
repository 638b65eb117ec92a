"""What a serving plan is: the per-variant settings and the replica-wide `ServePlan` (plain data).

`tightfit.serve.plan.plan_serving` makes one; the Serve app (`ray_jobs/serve.py`), the CLI and the KubeRay
RayService read it. `to_serve_config()` is the Serve config v2 dict, `deployment_options()` the deployment's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tightfit.serve.process import replica_env_vars
from tightfit.settings import proxy_env
from tightfit.units import format_bytes

APP_NAME = "tightfit"
DEPLOYMENT_NAME = "TightfitServer"
IMPORT_PATH = "tightfit.ray_jobs.serve:app_builder"
AUTOSCALING_POLICY = "tightfit.serve.autoscale:memory_aware_policy"


def replica_runtime_env() -> dict[str, Any]:
    """``{"runtime_env": ...}`` for a replica's ``ray_actor_options``: its process keeps pandas out
    (``tightfit.serve.process``); empty where that is turned off."""
    env = replica_env_vars()
    return {"runtime_env": {"env_vars": env}} if env else {}


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
    runtime: str = "torch"  # what runs it in the replica: torch | onnxruntime


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
    max_request_bytes: int  # largest request body (413 beyond, refused from Content-Length before reading)
    request_timeout_s: float = 60.0  # the Serve proxy's end-to-end limit per request (a slow upload included)
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
            "ray_actor_options": {"num_cpus": self.cpus_per_replica, "memory": self.predicted_peak_bytes,
                                  **replica_runtime_env()},
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

    def http_options(self, *, host: str, port: int) -> dict[str, Any]:
        """Serve's proxy options: where it listens and how long one request may take. Ray Serve 2.60's proxy
        has no body-size option; its middleware caps bodies (``proxy_env``, ``tightfit.serve.proxy``)."""
        return {"host": host, "port": port, "request_timeout_s": self.request_timeout_s}

    def proxy_env(self) -> dict[str, str]:
        """Environment for Serve's HTTP proxy (``tightfit.serve.proxy``): bodies over the plan's limit are
        refused there, before any replica, and an upload may take the plan's request timeout."""
        return proxy_env(self.max_request_bytes, self.request_timeout_s)

    def to_serve_config(self, *, host: str = "0.0.0.0", port: int = 8000, route_prefix: str = "/") -> dict[str, Any]:
        """The Serve config v2 dict (`serve deploy` / RayService `serveConfigV2`) for this plan."""
        return {
            "http_options": self.http_options(host=host, port=port),
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
            f"variant        {p.name} ({p.kind}, {p.chain}, on {p.runtime})"
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
            f"requests       bodies up to {format_bytes(self.max_request_bytes)} (413 beyond), "
            f"{self.request_timeout_s:g}s end to end",
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
