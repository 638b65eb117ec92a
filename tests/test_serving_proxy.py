"""tightfit's middleware in Serve's HTTP proxy (``tightfit.serve.proxy``), driven as an ASGI app.

The proxy end to end (a lost replica answered 503, a 200 MB upload refused, backpressure in the app's error
shape) is tested against a real Serve in ``test_serving_http.py`` and ``test_bad_inputs.py``; here each rule
is checked on its own, around a small inner app standing where Serve's proxy app stands.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tightfit.errors import ConfigError
from tightfit.serve.proxy import LOST_REPLICA, CappedAndAnswered, middlewares
from tightfit.settings import ENV_BODY_TIMEOUT_S, ENV_MAX_REQUEST_BYTES

LIMIT = 1000


def _call(inner: Any, chunks: list[bytes], headers: dict[str, str] | None = None, path: str = "/v1/classify",
          timeout_s: float = 5.0, complete: bool = True) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Send one request through the middleware; return what it answered and the bodies the inner app got.
    ``complete=False``: the client stops sending before its last chunk (a stalled upload)."""
    seen: list[bytes] = []
    sent: list[dict[str, Any]] = []
    queue = [{"type": "http.request", "body": c, "more_body": not complete or i < len(chunks) - 1}
             for i, c in enumerate(chunks)]

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        await asyncio.sleep(3600)  # the client waits for its answer; a disconnect never comes
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def recording_inner(scope: Any, rcv: Any, snd: Any) -> None:
        message = await rcv()
        seen.append(message["body"])
        assert not message.get("more_body")  # the body arrives whole, once
        await inner(snd)

    scope = {"type": "http", "path": path, "method": "POST",
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}
    asyncio.run(CappedAndAnswered(recording_inner, LIMIT, timeout_s)(scope, receive, send))
    return sent, seen


def _answer(sent: list[dict[str, Any]]) -> tuple[int, dict[str, str], Any]:
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    text = body.decode()
    return start["status"], headers, json.loads(text) if headers.get("content-type") == "application/json" else text


async def _ok(send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"label": 1}'})


async def _silent(send: Any) -> None:  # Serve's proxy after RayActorError: it sends nothing at all
    return None


async def _backpressure(send: Any) -> None:  # Serve's proxy's own 503 (ray.serve._private.http_util)
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"retry-after", b"3")]})
    await send({"type": "http.response.body", "body": b"Request dropped due to backpressure"})


def test_a_body_under_the_cap_reaches_the_app_whole_and_its_answer_passes_unchanged() -> None:
    sent, seen = _call(_ok, [b'{"text": ', b'"fine"}'])
    assert seen == [b'{"text": "fine"}']
    assert _answer(sent) == (200, {"content-type": "application/json"}, {"label": 1})


def test_a_declared_length_over_the_cap_is_refused_before_reading() -> None:
    sent, seen = _call(_ok, [b"x" * 10], headers={"Content-Length": str(200 * 10**6)})
    status, headers, body = _answer(sent)
    assert (status, body["status"], seen) == (413, 413, [])
    assert f"the limit is {LIMIT} bytes" in body["error"] and headers["connection"] == "close"


def test_a_streamed_body_over_the_cap_is_cut_and_never_routed() -> None:
    sent, seen = _call(_ok, [b"x" * 400] * 5)  # 2,000 bytes, no Content-Length
    status, _, body = _answer(sent)
    assert (status, seen) == (413, []) and "over the limit" in body["error"]
    sent, seen = _call(_ok, [b"1"], headers={"Content-Length": "many"})
    assert _answer(sent)[0] == 400 and seen == []


def test_a_request_the_proxy_leaves_unanswered_gets_503_with_retry_after() -> None:
    sent, seen = _call(_silent, [b'{"text": "x"}'])
    status, headers, body = _answer(sent)
    assert seen == [b'{"text": "x"}']
    assert (status, body) == (503, {"error": LOST_REPLICA, "status": 503}) and int(headers["retry-after"]) >= 1


def test_the_proxys_own_plain_text_errors_get_the_apps_error_shape() -> None:
    status, headers, body = _answer(_call(_backpressure, [b"{}"])[0])
    assert (status, body) == (503, {"error": "Request dropped due to backpressure", "status": 503})
    assert headers["retry-after"] == "3"


def test_a_stalled_upload_is_answered_408_and_never_routed() -> None:
    sent, seen = _call(_ok, [b"{", b" "], timeout_s=0.2, complete=False)
    status, _, body = _answer(sent)
    assert (status, seen) == (408, []) and "0.2 s" in body["error"]


def test_serves_routes_and_settings_come_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv(ENV_MAX_REQUEST_BYTES, "4096")
    monkeypatch.setenv(ENV_BODY_TIMEOUT_S, "90")
    (middleware,) = middlewares()
    assert middleware.kwargs == {"max_request_bytes": 4096, "body_timeout_s": 90.0}
    sent, seen = _call(_silent, [b"x" * 5000], path="/-/healthz")  # Serve's own routes pass untouched
    assert sent == [] and seen == [b"x" * 5000]
    for bad in ("128KiB", "0", "-5"):
        monkeypatch.setenv(ENV_MAX_REQUEST_BYTES, bad)
        with pytest.raises(ConfigError, match=f"{ENV_MAX_REQUEST_BYTES}='{bad}': expected a whole number of bytes"):
            middlewares()
