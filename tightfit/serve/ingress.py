"""The HTTP front of the tightfit Serve app: a thin ingress deployment in front of the model replicas.

Routes (JSON in, JSON out):
- ``POST /v1/classify``  ``{"text": "..."}`` or ``{"texts": [...]}`` (+ optional ``"variant"``)
- ``POST /v1/generate``  ``{"text": "...", "max_new_tokens": 16}`` (+ optional ``"variant"``)
- ``GET /healthz``, ``GET /v1/plan``, ``GET /v1/stats`` (the model replica's pid, RSS, peak RSS, batches)

Why a separate deployment: what reaches a model replica is bounded and a model replica's death is answered.
- The body is read here under the plan's byte limit (``read_body``: 413 from ``Content-Length`` before a
  byte is read, a running cap on a streamed body), so a 200 MB upload never reaches a model replica's memory.
- A model replica that dies mid-request (killed by the OOM killer, a signal, a crash) fails its requests
  with ``RayActorError``; Ray Serve's proxy would answer those 500. Here they answer 503 with
  ``Retry-After`` while Serve starts a new replica; requests that arrive meanwhile wait in the router and
  are served by it, or get the plan's 503 backpressure answer. Every client gets an answer.
The ingress holds no model and imports no torch (about 100 MiB), so it is not the process that runs out.
"""

from typing import Any  # no `from __future__ import annotations`: FastAPI reads the route annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError

from tightfit.serve.replica import RequestError, read_body
from tightfit.serve.schema import INGRESS_NAME, ServePlan

api = FastAPI(title="tightfit", description="Memory-aware model serving")
MODEL_ID_HEADER = "serve_multiplexed_model_id"


def error_response(status: int, message: str, retry_after_s: float | None = None) -> JSONResponse:
    """The one error shape every route answers: ``{"error": message, "status": status}``."""
    headers: dict[str, str] = {}
    if retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(retry_after_s)))
    if status == 413:  # the rest of the body is never read, so the connection cannot be reused
        headers["Connection"] = "close"
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers or None)


@serve.deployment(name=INGRESS_NAME)
@serve.ingress(api)
class TightfitIngress:
    """Reads and caps request bodies, forwards them to the model deployment, turns a lost replica into 503."""

    def __init__(self, plan: dict[str, Any], model: Any) -> None:
        self.plan = ServePlan.from_dict(plan)
        self.model = model  # the DeploymentHandle of TightfitServer

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return dict(await self.model.healthz.remote())

    @api.get("/v1/plan")
    async def show_plan(self) -> dict[str, Any]:
        return self.plan.to_dict()

    @api.get("/v1/stats")
    async def stats(self) -> dict[str, Any]:
        return dict(await self.model.stats.remote())

    @api.post("/v1/classify")
    async def classify_route(self, request: Request) -> JSONResponse:
        return await self._forward(request, "classify")

    @api.post("/v1/generate")
    async def generate_route(self, request: Request) -> JSONResponse:
        return await self._forward(request, "generate")

    async def _forward(self, request: Request, route: str) -> JSONResponse:
        try:
            raw = await read_body(request, self.plan.max_request_bytes)
        except RequestError as exc:
            return error_response(exc.status, exc.message)
        model_id = request.headers.get(MODEL_ID_HEADER, "")
        handle = self.model.options(multiplexed_model_id=model_id) if model_id else self.model
        try:
            status, body = await handle.handle.remote(route, raw)
        except BackPressureError as exc:
            return error_response(exc.status_code, str(exc), exc.retry_after_s or self.plan.retry_after_s)
        except RayActorError:
            return error_response(
                503, "the replica serving this request stopped before answering; Serve is starting a new one, retry",
                self.plan.retry_after_s,
            )
        return JSONResponse(body, status_code=status)
