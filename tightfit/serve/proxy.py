"""What tightfit adds to Ray Serve's HTTP proxy: a body cap before any replica, and an answer for every request.

The proxy takes Starlette middlewares from the function Ray names in ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``
(Ray Serve's own hook; ``tightfit.settings.SERVE_RAY_ENV`` points it at ``middlewares`` below). So the app
is one deployment, the model replicas, and a request costs Serve one hop, not two (a separate ingress
deployment cost about 7 ms of CPU a request on top of the proxy's and the replica's:
``benchmarks/results/serve_mode.json``). The middleware keeps the two promises that deployment kept:

- **A request cannot outgrow the budget.** A ``Content-Length`` over ``TIGHTFIT_MAX_REQUEST_BYTES`` (the
  plan's ``max_request_bytes``) is answered 413 before a byte of the body is read; a chunked (or lying) body
  is read here under a running cap, within ``TIGHTFIT_BODY_TIMEOUT_S``, before the request is routed. Only
  a whole body under the limit reaches a replica, which checks the plan's limit once more.
- **Every request gets an answer.** A replica that dies mid-request (the OOM killer, a signal) fails its
  requests with ``RayActorError``, and the proxy then sends nothing (uvicorn would answer a bare 500). Here
  they answer 503 with ``Retry-After`` while Serve starts a new replica. The proxy's own plain-text errors
  (backpressure 503, timeout 408) are answered in the app's one error shape, ``{"error", "status"}``.

Pure ASGI, no FastAPI: it wraps every route of the proxy (Serve's ``/-/`` routes pass through untouched).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from tightfit.errors import ConfigError
from tightfit.settings import ENV_BODY_TIMEOUT_S, ENV_MAX_REQUEST_BYTES

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]

DEFAULT_MAX_REQUEST_BYTES = 2**20
"""The cap where ``TIGHTFIT_MAX_REQUEST_BYTES`` is unset: above every plan's limit for the bundled models
(8 KiB for 4 texts x 32 tokens, 132 KiB for 64 x 64); the replica still answers 413 past the plan's own."""
DEFAULT_BODY_TIMEOUT_S = 60.0
LOST_REPLICA_RETRY_AFTER_S = 2
LOST_REPLICA = "the replica serving this request stopped before answering; Serve is starting a new one, retry"
REWRITTEN = (408, 503)  # the proxy's own plain-text answers, given the app's error shape


def middlewares() -> list[Any]:
    """Ray's proxy callback: the middlewares its HTTP proxy wraps around every request."""
    from starlette.middleware import Middleware

    limit = _positive(ENV_MAX_REQUEST_BYTES, int, DEFAULT_MAX_REQUEST_BYTES, "a whole number of bytes, such as 135168")
    timeout_s = _positive(ENV_BODY_TIMEOUT_S, float, DEFAULT_BODY_TIMEOUT_S, "seconds, such as 60")
    return [Middleware(CappedAndAnswered, max_request_bytes=limit, body_timeout_s=timeout_s)]


def _positive(name: str, kind: Callable[[str], Any], default: Any, expected: str) -> Any:
    """A positive number from the environment, or one line naming the variable and what it takes."""
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or value <= 0:
        raise ConfigError(f"{name}={raw!r}: expected {expected} (it sets tightfit's body cap in Serve's proxy)")
    return value


def error_messages(status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> list[Message]:
    """The ASGI messages of one error answer: ``{"error": message, "status": status}``."""
    body = json.dumps({"error": message, "status": status}).encode()
    out = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]
    if status == 413:  # the rest of the body is never read, so the connection cannot be reused
        out.append((b"connection", b"close"))
    return [{"type": "http.response.start", "status": status, "headers": out},
            {"type": "http.response.body", "body": body}]


class BodyError(Exception):
    """A body refused while it is read: an HTTP status and a message for the caller."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


async def read_capped(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The whole request body, never more than ``limit`` bytes held (413), refused from a declared
    ``Content-Length`` before a byte is read."""
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise BodyError(400, f"Content-Length {declared[:32]!r} is not a number") from None
        if length > limit:
            raise BodyError(413, f"payload is {length} bytes; the limit is {limit} bytes")
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BodyError(499, "the client went away during its upload")
        body += message.get("body", b"")
        if len(body) > limit:
            raise BodyError(413, f"payload is over the limit of {limit} bytes; send fewer or shorter texts")
        if not message.get("more_body", False):
            return bytes(body)


class CappedAndAnswered:
    """The proxy middleware: read the body under the cap, then route; answer what the proxy leaves unanswered."""

    def __init__(self, app: ASGIApp, max_request_bytes: int, body_timeout_s: float) -> None:
        self.app, self.limit, self.body_timeout_s = app, max_request_bytes, body_timeout_s

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "").startswith("/-/"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        try:
            body = await asyncio.wait_for(read_capped(receive, None if declared is None else declared.decode("latin-1"),
                                                      self.limit), self.body_timeout_s)
        except BodyError as exc:
            if exc.status != 499:
                for message in error_messages(exc.status, exc.message):
                    await send(message)
            return
        except TimeoutError:
            for message in error_messages(408, f"the request body took over {self.body_timeout_s:g} s to arrive"):
                await send(message)
            return
        replayed = False

        async def replay() -> Message:  # the body once, whole; then the client's own messages (its disconnect)
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        started = False
        held: Message | None = None  # a plain-text error start from the proxy, rewritten with its body

        async def answer(message: Message) -> None:
            nonlocal started, held
            if message["type"] == "http.response.start":
                started = True
                kind = dict(message.get("headers") or []).get(b"content-type", b"")
                if message["status"] in REWRITTEN and kind.startswith(b"text/plain"):
                    held = message
                    return
            elif message["type"] == "http.response.body" and held is not None:
                status = int(held["status"])
                keep = [(k, v) for k, v in held.get("headers") or [] if k.lower() == b"retry-after"]
                held = None
                for rewritten in error_messages(status, bytes(message.get("body", b"")).decode("utf-8", "replace"), keep):
                    await send(rewritten)
                return
            await send(message)

        try:
            await self.app(scope, replay, answer)
        finally:
            if not started:  # the proxy gave up without a word: the replica was lost mid-request
                retry = [(b"retry-after", str(LOST_REPLICA_RETRY_AFTER_S).encode())]
                with contextlib.suppress(Exception):  # a client that went away gets nothing
                    for message in error_messages(503, LOST_REPLICA, retry):
                        await send(message)
