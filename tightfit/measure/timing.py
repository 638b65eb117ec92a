"""Latency a user can trust: pinned threads, interleaved rounds, the spread across rounds, a noise check.

A latency that drives a choice is measured alone and repeated. ``time_rounds`` pins the process to a fixed
set of cores with as many compute threads, then runs ``rounds`` rounds; each round times every batch size
in turn (interleaved, so drift on a shared machine hits all of them alike). From the per-round medians it
takes the coefficient of variation (CV = standard deviation / mean of the round medians). A batch whose CV is
above ``TimingPlan.threshold``, whose timing thread held its core less than ``MIN_CPU_SHARE`` of the time,
or during which other processes kept more than ``MAX_OTHER_CORES`` cores busy (or the hypervisor stole that
much), is measured again (all rounds, up to ``retries`` times; the calmest attempt is kept); if it stays
above, it is *flagged* as noisy, never silently used: ``Footprint.noise`` names it and selection judges a
noisy latency at its p99 instead of its p95 (``tightfit.select.choose``).

The last two checks catch a *uniform* slowdown, which shows no spread between rounds: another process on
the timing core (the thread waits: low CPU share), or one on its SMT sibling or a stolen virtual CPU (the
thread runs but slower: only the machine's own counters in ``/proc/stat`` show it).

A virtual machine's host can also slow every core for seconds at a time without any counter inside the
guest showing it. A fixed reference workload (``probe_ms``), timed in every round on the same pinned core,
records the machine's speed during the measurement, so two profiles taken at different speeds are known
as such (``TimingResult.probe_ms``, ``Footprint.extra["measure_probe_ms"]``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

NOISE_CV = 0.10
"""CV of the per-round medians above which a latency is re-measured, then flagged (10 %)."""
MIN_CPU_SHARE = 0.8
"""Below this share of wall time on a CPU, the timing thread was waiting for a core other work held: the
rounds may agree with each other (a uniform slowdown has no spread) and still not be the variant's latency."""
MAX_OTHER_CORES = 0.25
"""Cores' worth of CPU time that other processes (or the hypervisor, as steal) may take during a timing
attempt before it counts as not measured alone: on a 2-vCPU VM the other vCPU is often the timing core's SMT
sibling, and a busy sibling slows the timed thread by a third or more without showing in its CPU share."""


@dataclass(frozen=True)
class TimingPlan:
    """How many interleaved rounds, timed passes per batch per round, warm-ups, re-measurements."""

    rounds: int = 5
    repeats: Mapping[int, int] = field(default_factory=lambda: {1: 8, 32: 3})
    warmup: int = 2
    retries: int = 2
    threshold: float = NOISE_CV
    min_cpu_share: float = MIN_CPU_SHARE
    max_other_cores: float = MAX_OTHER_CORES

    def __post_init__(self) -> None:
        if self.rounds < 2:
            raise ValueError(f"a spread needs at least 2 rounds, got {self.rounds}")
        if any(n < 1 for n in self.repeats.values()):
            raise ValueError(f"every batch needs at least 1 timed pass per round, got {dict(self.repeats)}")


FULL_PLAN = TimingPlan()
QUICK_PLAN = TimingPlan(rounds=3, repeats={1: 4, 32: 2}, retries=1)


@dataclass
class LatencyStats:
    """One batch size's timings: every sample, the per-round medians, and the figures taken from them."""

    samples_ms: list[float]
    round_p50_ms: list[float]
    cpu_share: float = 1.0
    """CPU time of the timing thread / wall time over every pass: below 1 when other work took the core."""
    other_cores: float = 0.0
    """Cores other processes kept busy (plus steal) during the attempt, on average (``/proc/stat``; 0 where
    the OS has none)."""

    @property
    def p50(self) -> float:
        return percentile(self.samples_ms, 50)

    @property
    def p95(self) -> float:
        return percentile(self.samples_ms, 95)

    @property
    def p99(self) -> float:
        return percentile(self.samples_ms, 99)

    @property
    def cv(self) -> float:
        """Coefficient of variation of the per-round medians (0 for identical rounds)."""
        mean = statistics.fmean(self.round_p50_ms)
        return statistics.pstdev(self.round_p50_ms) / mean if mean > 0 else 0.0

    def noisy(self, plan: TimingPlan, check_cpu_share: bool = True) -> bool:
        """Spread above the plan's threshold, or (on CPU) the timing thread kept off its core or other work
        busy on the machine."""
        return self.badness(plan, check_cpu_share) > 0

    def badness(self, plan: TimingPlan, check_cpu_share: bool = True) -> float:
        """How far from trustworthy (0 when no check fires): attempts are compared by it."""
        share = max(0.0, plan.min_cpu_share - self.cpu_share) if check_cpu_share else 0.0
        other = max(0.0, self.other_cores - plan.max_other_cores) if check_cpu_share else 0.0
        return max(0.0, self.cv - plan.threshold) + share + other


@dataclass
class TimingResult:
    """What ``time_rounds`` measured and under which conditions."""

    stats: dict[int, LatencyStats]
    rounds: int
    attempts: int
    threads: int
    cpus: list[int]
    load_avg_1m: float
    noisy: list[int]
    """Batch sizes whose CV stayed above the threshold after every re-measurement."""
    probe_ms: float = 0.0
    """Median time of the reference workload over the kept attempt's rounds: the machine's speed then."""


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), without importing numpy."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def machine_busy_seconds() -> float | None:
    """CPU seconds every core of the machine has spent busy (steal included) since boot, from
    ``/proc/stat``; None where the OS has no such file."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: already counted in user and nice]
    ticks = [int(v) for v in fields[1:9]]
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


@functools.cache
def _probe_operands() -> tuple[Any, Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.random((64, 64), dtype=np.float32), rng.random((64, 64), dtype=np.float32)


def probe_ms() -> float:
    """Milliseconds for a fixed reference workload (40 float32 64x64 matmuls, numpy, this thread), the
    median of 5 tries: a machine slowed by its host takes proportionally longer."""
    a, b = _probe_operands()
    tries = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(40):
            a @ b
        tries.append(1000.0 * (time.perf_counter() - started))
    return statistics.median(tries)


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def load_average() -> float:
    """The 1-minute load average (how much other work shared the cores); 0 where the OS has none."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0.0


@contextlib.contextmanager
def pinned_threads(threads: int) -> Iterator[list[int]]:
    """Pin this process to ``threads`` fixed cores (the first of those it may use) with as many torch compute
    threads, restoring both afterwards. Yields the cores. torch is only touched if it is already imported."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    n = max(1, min(threads, len(allowed) or threads))
    cpus = allowed[:n]
    torch = sys.modules.get("torch")
    old_threads = torch.get_num_threads() if torch is not None else None
    try:
        if cpus:
            os.sched_setaffinity(0, cpus)
        if torch is not None:
            torch.set_num_threads(n)
        yield cpus
    finally:
        if allowed:
            os.sched_setaffinity(0, allowed)
        if torch is not None and old_threads is not None:
            torch.set_num_threads(old_threads)


def _one_attempt(
    calls: Mapping[int, Callable[[], Any]], plan: TimingPlan
) -> tuple[dict[int, LatencyStats], list[float]]:
    probes: list[float] = []
    samples: dict[int, list[float]] = {b: [] for b in calls}
    medians: dict[int, list[float]] = {b: [] for b in calls}
    cpu: dict[int, float] = dict.fromkeys(calls, 0.0)
    busy_started, own_started, wall_started = machine_busy_seconds(), _own_cpu_seconds(), time.perf_counter()
    for _ in range(plan.rounds):
        for batch, call in calls.items():  # interleaved: every round times every batch
            times = []
            for _ in range(plan.repeats.get(batch, 1)):
                started, cpu_started = time.perf_counter(), time.thread_time()
                call()
                times.append(1000.0 * (time.perf_counter() - started))
                cpu[batch] += 1000.0 * (time.thread_time() - cpu_started)
            samples[batch].extend(times)
            medians[batch].append(statistics.median(times))
        probes.append(probe_ms())
    busy_ended, wall = machine_busy_seconds(), time.perf_counter() - wall_started
    other = 0.0
    if busy_started is not None and busy_ended is not None and wall > 0:
        # the clock-tick resolution (10 ms) makes a short attempt's figure coarse, never negative
        other = max(0.0, (busy_ended - busy_started) - (_own_cpu_seconds() - own_started)) / wall
    return {
        b: LatencyStats(samples[b], medians[b], min(1.0, cpu[b] / max(sum(samples[b]), 1e-9)), other)
        for b in calls
    }, probes


def time_rounds(
    calls: Mapping[int, Callable[[], Any]], plan: TimingPlan = FULL_PLAN, *, threads: int | None = None,
    check_cpu_share: bool = True,
) -> TimingResult:
    """Time each zero-argument ``calls[batch]`` in interleaved rounds on pinned threads (see the module doc).

    Every call is warmed up ``plan.warmup`` times first (a compiled model compiles there, untimed).
    ``check_cpu_share`` is off where the timing thread waits on a device (a GPU), not on its core.
    """
    from tightfit.device import cpu_threads

    n = threads or cpu_threads()
    load_before = load_average()
    with pinned_threads(n) as cpus:
        for call in calls.values():
            for _ in range(plan.warmup):
                call()
        best: dict[int, LatencyStats] | None = None
        best_probes: list[float] = []
        attempts = 0
        for attempts in range(1, plan.retries + 2):  # noqa: B007 - the count is reported
            stats, probes = _one_attempt(calls, plan)
            if best is None or sum(s.badness(plan, check_cpu_share) for s in stats.values()) < sum(
                s.badness(plan, check_cpu_share) for s in best.values()
            ):
                best, best_probes = stats, probes
            if not any(s.noisy(plan, check_cpu_share) for s in best.values()):
                break
    assert best is not None
    noisy = [b for b, s in best.items() if s.noisy(plan, check_cpu_share)]
    return TimingResult(best, plan.rounds, attempts, len(cpus) or n, cpus, max(load_before, load_average()), noisy,
                        statistics.median(best_probes))
