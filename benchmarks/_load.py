"""Load for the serving benchmark: an open-loop Poisson client and a replica RSS sampler.

Open loop: requests are sent at their scheduled arrival times whatever the server does (a closed loop waits
for answers, so a slow server is offered less load and its p99 restates its throughput). Arrivals are
Poisson (exponential gaps, seeded), bounded in count and in time; every request has a timeout; loopback only.
A request that fails (non-200, timeout, connection error) counts as slower than any SLO in the p99.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class LoadResult:
    """One open-loop run at one offered rate."""

    offered_rps: float
    sent: int
    ok: int
    statuses: dict[str, int]
    achieved_rps: float
    p50_ms: float
    p99_ms: float
    """Over every request sent; failures count as infinitely slow."""
    duration_s: float
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    def sustained(self, slo_ms: float) -> bool:
        """Every request but the slowest 1 % answered, within the SLO."""
        return self.p99_ms <= slo_ms

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("latencies_ms")
        for key in ("p50_ms", "p99_ms"):
            if math.isinf(out[key]):
                out[key] = None  # JSON has no infinity: None = more than 1 % failed
        return out


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)] if ordered else math.inf


async def open_loop(
    url: str, bodies: list[dict[str, Any]], rate: float, *, seconds: float, max_requests: int, timeout_s: float,
    seed: int = 0, headers: dict[str, str] | None = None,
) -> LoadResult:
    """POST ``bodies`` (cycled) to ``url`` at Poisson arrivals of ``rate`` per second for ``seconds`` (at most
    ``max_requests``); returns throughput and latency percentiles."""
    import aiohttp

    rng = random.Random(seed)
    count = max(1, min(max_requests, round(rate * seconds)))
    arrivals, at = [], 0.0
    for _ in range(count):
        at += rng.expovariate(rate)
        arrivals.append(at)
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    finished: list[float] = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()

        async def one(i: int, when: float) -> None:
            await asyncio.sleep(max(0.0, start + when - time.perf_counter()))
            sent = time.perf_counter()
            try:
                async with session.post(url, json=bodies[i % len(bodies)], headers=headers) as response:
                    await response.read()
                    status = str(response.status)
            except TimeoutError:
                status = "timeout"
            except aiohttp.ClientError:
                status = "error"
            done = time.perf_counter()
            statuses[status] = statuses.get(status, 0) + 1
            latencies.append((done - sent) * 1000 if status == "200" else math.inf)
            if status == "200":
                finished.append(done)

        await asyncio.gather(*(one(i, when) for i, when in enumerate(arrivals)))
    ok = statuses.get("200", 0)
    span = (max(finished) - start) if finished else math.inf
    return LoadResult(
        offered_rps=rate, sent=count, ok=ok, statuses=statuses, achieved_rps=ok / span if finished else 0.0,
        p50_ms=_percentile(latencies, 50), p99_ms=_percentile(latencies, 99), duration_s=span,
        latencies_ms=latencies,
    )


def run_open_loop(url: str, bodies: list[dict[str, Any]], rate: float, **kwargs: Any) -> LoadResult:
    return asyncio.run(open_loop(url, bodies, rate, **kwargs))


class RssSampler:
    """Samples one process's RSS every 20 ms in a thread (a dead process is what ``oom_kills`` counts)."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self.proc.memory_info().rss)
            except Exception:
                return
            time.sleep(0.02)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> int:
        return max(self.samples, default=0)


async def closed_loop(url: str, texts: list[str], seconds: float, concurrency: int) -> dict[str, Any]:
    """Closed-loop load (``concurrency`` clients, each sending as soon as answered) for ``seconds``: used where
    the figure is the replica's memory under load, not its latency."""
    import aiohttp

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    end = time.perf_counter() + seconds

    async def worker(k: int, session: aiohttp.ClientSession) -> None:
        i = k
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            async with session.post(url, json={"text": texts[i % len(texts)]}) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1
                if response.status == 200:
                    latencies.append((time.perf_counter() - t0) * 1000)
            i += concurrency

    start = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        await asyncio.gather(*(worker(k, session) for k in range(concurrency)))
    wall = time.perf_counter() - start
    latencies.sort()
    ok = statuses.get(200, 0)
    return {
        "rps": ok / wall,
        "p50_ms": latencies[len(latencies) // 2] if latencies else None,
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] if latencies else None,
        "statuses": statuses,
    }
