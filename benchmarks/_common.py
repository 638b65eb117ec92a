"""Shared by the benchmark scripts: machine facts, the conditions of the run, medians and spread, and
writing results/NAME.json.

Importing this module starts a background monitor (one sample every few seconds) of the load average and
of the CPU that processes *outside* this benchmark's own process tree use (other people's work on a shared
machine; the Ray, Serve and KFP processes a benchmark starts are its descendants and do not count), so
every results file says whether other work was running while it measured.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
VERSIONED = ("tightfit", "torch", "torchao", "transformers", "ray", "mlflow", "kfp", "onnxruntime", "onnx")
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")
OTHER_WORK_CORES = 0.25
"""Other processes busy for more than this many cores on average: the run was not alone."""


def _cpuinfo() -> tuple[str, list[str]]:
    cpu, flags = platform.processor() or platform.machine(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("", platform.machine(), platform.processor()):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                present = set(line.split(":", 1)[1].split())
                flags = [f for f in CPU_FLAGS if f in present]
    except OSError:
        pass
    return cpu, flags


def machine_info() -> dict[str, Any]:
    """CPU model, cores, the CPU flags that decide int8/bf16 speed, GPU (if any), Python, versions, date."""
    cpu, flags = _cpuinfo()
    from tightfit.device import cpu_threads, gpu_name

    versions = {}
    for dist in VERSIONED:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "cpu": cpu,
        "cores": cpu_threads(),
        "cpu_flags": flags,
        "gpu": gpu_name(),
        "python": sys.version.split()[0],
        "versions": versions,
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


class LoadMonitor:
    """Samples the load average and the CPU used by processes outside this process tree, in a thread."""

    def __init__(self, interval_s: float = 5.0) -> None:
        self.interval_s = interval_s
        self.started = time.time()
        self.load_start = os.getloadavg()[0]
        self.loads: list[float] = [self.load_start]
        self.other_cores: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="bench-load-monitor")
        self._thread.start()

    @staticmethod
    def _cpu_outside_tree() -> dict[int, float]:
        import psutil

        me = psutil.Process()
        ours = {me.pid} | {p.pid for p in me.children(recursive=True)}
        out: dict[int, float] = {}
        for proc in psutil.process_iter(["pid", "cpu_times"]):
            times = proc.info.get("cpu_times")
            if proc.info["pid"] in ours or times is None:
                continue
            out[proc.info["pid"]] = float(times.user + times.system)
        return out

    def _run(self) -> None:
        try:
            before, at = self._cpu_outside_tree(), time.monotonic()
        except Exception:  # psutil missing or /proc unreadable: the load average still counts
            before, at = {}, time.monotonic()
        while not self._stop.wait(self.interval_s):
            self.loads.append(os.getloadavg()[0])
            try:
                now, now_at = self._cpu_outside_tree(), time.monotonic()
            except Exception:
                continue
            used = sum(t - before[p] for p, t in now.items() if p in before and t >= before[p])
            self.other_cores.append(used / max(now_at - at, 1e-9))
            before, at = now, now_at

    def conditions(self) -> dict[str, Any]:
        """The load seen so far, and whether other work was running beside the benchmark."""
        other = self.other_cores or [0.0]
        mean_other = statistics.fmean(other)
        return {
            "load_avg_1m_at_start": round(self.load_start, 2),
            "load_avg_1m_max": round(max(self.loads), 2),
            "load_avg_1m_median": round(statistics.median(self.loads), 2),
            "other_processes_cores_mean": round(mean_other, 3),
            "other_processes_cores_max": round(max(other), 3),
            "other_work_running": bool(mean_other > OTHER_WORK_CORES),
            "samples": len(self.loads),
            "duration_s": round(time.time() - self.started, 1),
        }


MONITOR = LoadMonitor()


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def spread(values: list[float]) -> dict[str, Any]:
    """Median, p95, min, max and coefficient of variation of one figure's rounds (what the README quotes)."""
    vals = [float(v) for v in values]
    if not vals:
        return {"n": 0}
    mean = statistics.fmean(vals)
    ordered = sorted(vals)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "n": len(vals), "median": statistics.median(vals), "p95": p95, "min": ordered[0], "max": ordered[-1],
        "cv": (statistics.pstdev(vals) / mean) if len(vals) > 1 and mean else 0.0,
    }


def write_results(name: str, figures: dict[str, Any], *, protocol: dict[str, Any] | None = None) -> Path:
    """Write ``benchmarks/results/NAME.json``: the machine, the conditions (load, other work), the protocol
    (rounds, reduced or full) beside the figures."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "machine": machine_info(), "conditions": MONITOR.conditions()}
    if protocol is not None:
        payload["protocol"] = protocol
    payload.update(figures)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    print(f"wrote {path}")
    conditions = payload["conditions"]
    if conditions["other_work_running"]:
        print(f"note: other work was running (load average up to {conditions['load_avg_1m_max']}, other processes "
              f"{conditions['other_processes_cores_mean']:.2f} cores on average): figures are not from a quiet machine")
    return path


def is_current(target: Path, chain: str, source: Path) -> bool:
    """A cached variant is reused only if it has this chain and was built after its source (a rebuilt parent,
    e.g. the baseline after a clean rebuild or with more distillation steps, makes its children stale)."""
    from tightfit.compress.variant import MANIFEST, read_manifest

    if not (target / MANIFEST).exists():
        return False
    built = read_manifest(target)
    return bool(built["chain"] == chain and built["created"] >= read_manifest(source)["created"])
