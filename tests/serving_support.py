"""Helpers shared by the Ray Serve HTTP test modules: a free loopback port and a started, healthy app."""

from __future__ import annotations

import socket
import time
from typing import Any

import requests


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_until_healthy(plan: Any, port: int, timeout_s: float = 120.0, progress: Any = None) -> str:
    """Deploy ``plan`` on the running Ray (127.0.0.1:``port``) and wait for ``/healthz``; returns the URL."""
    from tightfit.serve.deploy import start_serving

    url = start_serving(plan, host="127.0.0.1", port=port, progress=progress)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(0.5)
    return str(url)
