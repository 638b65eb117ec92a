"""The tightfit Ray Serve application: the best variant that fits a memory budget, behind one JSON API.

One deployment, ``TightfitServer``: the model replicas serve the HTTP routes themselves (``@serve.ingress``),
so Serve's proxy routes a request straight to a replica, one hop. The body cap before any replica and a 503
for a lost replica's requests run inside that proxy (``tightfit.serve.proxy``); until 2026-11-29 a separate
ingress deployment kept them, at about 7 ms of CPU a request (``benchmarks/results/serve_mode.json``).

Routes (JSON in, JSON out):
- ``POST /v1/classify``  ``{"text": "..."}`` or ``{"texts": [...]}`` (+ optional ``"variant"``)
- ``POST /v1/generate``  ``{"text": "...", "max_new_tokens": 16}`` (+ optional ``"variant"``)
- ``GET /healthz``, ``GET /v1/plan``, ``GET /v1/stats`` (pid, RSS, peak RSS, batches, loaded variants, and
  which runtimes the process imported)

A variant runs on its own runtime (``compress.runtime.Runner``): torch, or an ONNX Runtime session on the
plan's CPUs per replica as intra-op threads; a replica whose pool holds only ONNX variants never imports torch.

Every setting comes from a `ServePlan` (``tightfit.serve.plan``): `@serve.batch` size, the token cap,
`max_ongoing_requests`/`max_queued_requests` (overload answers 503 with Retry-After),
`ray_actor_options.memory`, the variant pool (Serve's ``@serve.multiplexed``, evicted by bytes; send the
``serve_multiplexed_model_id`` header to pick a variant and be routed to a replica that holds it), the
request byte limit and the RSS-aware autoscaling policy.
Ray imports it through the thin entrypoint ``tightfit.ray_jobs.serve:app_builder`` (``tightfit serve``,
``serve run``, or a RayService whose ``serveConfigV2`` is `ServePlan.to_serve_config()`).
"""

import asyncio
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any  # no `from __future__ import annotations`: FastAPI reads the route annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve import metrics

from tightfit.memory.rss import current_rss_bytes, peak_rss_bytes, reset_peak_rss, trim_heap
from tightfit.serve.process import KEPT_OUT
from tightfit.serve.replica import (
    LoadedVariant,
    MultiplexedPool,
    RequestError,
    check_tokens,
    classify,
    generate,
    load_for_serving,
    read_body,
    validate_request,
)
from tightfit.serve.schema import DEPLOYMENT_NAME, ServePlan
from tightfit.settings import MODEL_THREAD_PREFIX, SERVE_RAY_ENV

BATCH_BOUNDARIES = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]
KIND_OF_ROUTE = {"classify": "classifier", "generate": "causal_lm"}
api = FastAPI(title="tightfit", description="Memory-aware model serving")


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress(api)
class TightfitServer:
    """One replica: the HTTP routes, a byte-bounded pool of variants, one batch queue, one model thread."""

    async def __init__(self, plan: dict[str, Any]) -> None:  # type: ignore[misc]  # Serve awaits it
        self.plan = ServePlan.from_dict(plan)
        self.threads = max(1, int(self.plan.cpus_per_replica))
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=MODEL_THREAD_PREFIX)
        self.pool = MultiplexedPool(self.plan, lambda p: load_for_serving(p, self.threads), self.executor)
        self.started = time.time()
        self.batches: dict[int, int] = {}
        self.requests = 0
        self.rejections = 0
        primary = await self.pool.get(self.plan.primary.name)
        self._warm_up(primary)
        del primary
        self.batch_limits = self._fit_batches_to_measured_idle()
        batcher: Any = self.run_batch  # the @serve.batch wrapper carries the setters
        batcher.set_max_batch_size(max(self.batch_limits.values()))
        batcher.set_batch_wait_timeout_s(self.plan.batch_wait_timeout_s)
        self.m_requests = metrics.Counter(
            "tightfit_requests", description="Requests answered, by route and status.", tag_keys=("route", "status"),  # type: ignore[arg-type]
        )
        self.m_rejections = metrics.Counter(
            "tightfit_rejections", description="Requests refused by validation, by reason.", tag_keys=("reason",)
        )
        self.m_batch = metrics.Histogram(
            "tightfit_batch_size", description="Sequences per model call.", boundaries=BATCH_BOUNDARIES
        )
        self.m_rss = metrics.Gauge("tightfit_replica_rss_bytes", description="Replica resident memory (RSS).")
        self.m_budget = metrics.Gauge("tightfit_replica_budget_bytes", description="Replica memory budget.")
        self.m_variant = metrics.Gauge(
            "tightfit_chosen_variant", description="1 for the variant the plan chose.", tag_keys=("variant",)
        )
        self.m_variant.set(1, tags={"variant": self.plan.primary.name})
        self.m_budget.set(self.plan.budget_bytes)
        self.m_rss.set(current_rss_bytes())

    def _warm_up(self, loaded: LoadedVariant) -> None:
        """One small forward so lazy allocations happen before traffic (and count in the idle RSS)."""
        if loaded.plan.kind == "causal_lm":
            generate(loaded, ["Hello"], 1)
        else:
            classify(loaded, ["warm up"])

    def _fit_batches_to_measured_idle(self) -> dict[str, int]:
        """Per-variant batch limits, lowered where this replica's measured idle RSS leaves less room for
        activations than the plan predicted (activations grow about linearly with the batch)."""
        idle = current_rss_bytes()  # with the primary loaded
        held = min(self.plan.pool_bytes, sum(v.resident_bytes for v in self.plan.pool))
        others = max(0, held - self.plan.primary.resident_bytes)  # the most the rest of the pool adds
        limits = {}
        for v in self.plan.pool:
            room = self.plan.usable_bytes - idle - others
            per_seq = (v.activation_bytes + v.kv_cache_bytes) / max(1, v.max_batch_size)
            fit = int(room // per_seq) if per_seq > 0 else v.max_batch_size
            limits[v.name] = max(1, min(v.max_batch_size, fit))
        return limits

    # ---- HTTP routes (the proxy has capped the body already; the plan's own limit is read here again) ----
    @api.get("/healthz")
    async def healthz_route(self) -> dict[str, Any]:
        return await self.healthz()

    @api.get("/v1/plan")
    async def plan_route(self) -> dict[str, Any]:
        return self.plan.to_dict()

    @api.get("/v1/stats")
    async def stats_route(self) -> dict[str, Any]:
        return await self.stats()

    @api.post("/v1/classify")
    async def classify_route(self, request: Request) -> JSONResponse:
        return await self._answer(request, "classify")

    @api.post("/v1/generate")
    async def generate_route(self, request: Request) -> JSONResponse:
        return await self._answer(request, "generate")

    async def _answer(self, request: Request, route: str) -> JSONResponse:
        try:
            raw = await read_body(request, self.plan.max_request_bytes)
        except RequestError as exc:
            status, body = exc.status, {"error": exc.message, "status": exc.status}
        else:
            status, body = await self.handle(route, raw)
        headers = {"Connection": "close"} if status == 413 else None  # an unread body spoils the connection
        return JSONResponse(body, status_code=status, headers=headers)

    # ---- what the routes and Serve handles call ------------------------------------------------
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "variant": self.plan.primary.name, "pid": os.getpid()}

    async def stats(self) -> dict[str, Any]:
        rss = current_rss_bytes()
        self.m_rss.set(rss)
        return {
            "pid": os.getpid(),
            "rss_bytes": rss,
            "peak_rss_bytes": peak_rss_bytes(),
            "budget_bytes": self.plan.budget_bytes,
            "predicted_peak_bytes": self.plan.predicted_peak_bytes,
            "requests": self.requests,
            "rejections": self.rejections,
            "batches": {str(k): v for k, v in sorted(self.batches.items())},
            "loaded_variants": self.pool.names(),
            "evictions": self.pool.evictions,
            "batch_limits": self.batch_limits,
            "uptime_s": round(time.time() - self.started, 1),
            # which runtimes this replica process has imported (a replica of ONNX variants has no torch; no
            # replica has pandas or pyarrow: tightfit.serve.process; a module kept out sits in sys.modules as None)
            "runtime_modules": {m: sys.modules.get(m) is not None
                                for m in ("torch", "transformers", "onnxruntime", *KEPT_OUT)},
            # the Serve mode this replica's process runs in (tightfit.settings.SERVE_RAY_ENV)
            "serve_env": {key: os.environ.get(key) for key in SERVE_RAY_ENV},
        }

    async def reset_peak(self) -> dict[str, Any]:
        """Reset this replica's peak RSS to its RSS now (calibration only, through a Serve handle, no HTTP
        route): the next ``stats`` peak is what the batches since then took, without loading's transient."""
        return {"reset": reset_peak_rss(), "peak_rss_bytes": peak_rss_bytes(), "pid": os.getpid()}

    async def handle(self, route: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        """One request body (already capped) -> (HTTP status, JSON body)."""
        self.requests += 1
        try:
            parsed = validate_request(raw, self.plan, KIND_OF_ROUTE[route], serve.get_multiplexed_model_id() or None)
            items = [(parsed.variant.name, text, parsed.max_new_tokens) for text in parsed.texts]
            results = await asyncio.gather(*(self.run_batch(item) for item in items))
            for result in results:
                if isinstance(result, RequestError):
                    raise result
        except RequestError as exc:
            self.rejections += 1
            self.m_rejections.inc(tags={"reason": str(exc.status)})
            self.m_requests.inc(tags={"route": route, "status": str(exc.status)})
            return exc.status, {"error": exc.message, "status": exc.status}
        self.m_requests.inc(tags={"route": route, "status": "200"})
        body: dict[str, Any] = {"variant": parsed.variant.name, "results": results}
        if len(results) == 1:
            body.update(results[0])
        return 200, body

    # ---- batching -----------------------------------------------------------------------------
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def run_batch(self, items: list[tuple[str, str, int]]) -> list[Any]:
        """Group a batch by variant; load each group's variant through the multiplexed pool (one at a time,
        so an evicted variant is released before the next loads) and run it on the model thread."""
        loop = asyncio.get_running_loop()
        results: list[Any] = [None] * len(items)
        groups: dict[str, list[int]] = {}
        for i, (name, _text, _new) in enumerate(items):
            groups.setdefault(name, []).append(i)
        for name, indices in groups.items():
            try:
                loaded = await self.pool.get(name)
            except RequestError as exc:
                for i in indices:
                    results[i] = exc
                continue
            except Exception as exc:  # a variant that fails to load answers 500; the replica keeps serving
                for i in indices:
                    results[i] = RequestError(500, f"loading variant {name!r} failed: {type(exc).__name__}: {exc}")
                continue
            out = await loop.run_in_executor(self.executor, self._run_group, loaded, [items[i] for i in indices])
            del loaded
            for i, result in zip(indices, out, strict=True):
                results[i] = result
        if len(items) >= 8:
            trim_heap()
        return results

    def _run_group(self, loaded: LoadedVariant, items: list[tuple[str, str, int]]) -> list[Any]:
        """One variant's requests, in chunks of its batch limit; a bad item or a model failure answers alone."""
        planned = loaded.plan
        results: list[Any] = [None] * len(items)
        runnable = []
        for i, (_name, text, _new) in enumerate(items):
            try:
                check_tokens(loaded, [text])
                runnable.append(i)
            except RequestError as exc:
                results[i] = exc
        step = self.batch_limits.get(planned.name, planned.max_batch_size)
        for start in range(0, len(runnable), step):
            chunk = runnable[start : start + step]
            texts = [items[i][1] for i in chunk]
            self.batches[len(chunk)] = self.batches.get(len(chunk), 0) + 1
            self.m_batch.observe(len(chunk))
            out: list[Any]
            try:
                if planned.kind == "causal_lm":
                    out = generate(loaded, texts, max(items[i][2] for i in chunk))
                else:
                    out = classify(loaded, texts)
            except Exception as exc:  # a model failure answers 500 and never kills the replica
                out = [RequestError(500, f"model call failed: {type(exc).__name__}: {exc}")] * len(chunk)
            for i, result in zip(chunk, out, strict=True):
                results[i] = result
        return results

    # ---- autoscaling --------------------------------------------------------------------------
    def record_autoscaling_stats(self) -> dict[str, float]:
        """Replica RSS for the memory-aware autoscaling policy (``tightfit.serve.autoscale``)."""
        rss = current_rss_bytes()
        self.m_rss.set(rss)
        return {"rss_bytes": float(rss), "rss_fraction": rss / self.plan.budget_bytes}


def build_app(plan: ServePlan) -> Any:
    """The bound Serve application for a plan: the model deployment, its options straight from the plan."""
    model: Any = TightfitServer
    return model.options(**plan.deployment_options()).bind(plan.to_dict())
