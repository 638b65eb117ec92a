"""Shared by the benchmark scripts: machine facts, medians, and writing results/NAME.json."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
VERSIONED = ("tightfit", "torch", "torchao", "transformers", "ray", "mlflow", "kfp", "onnxruntime", "onnx")
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def machine_info() -> dict[str, Any]:
    """CPU model, cores, GPU (if any), Python and library versions, and the date."""
    cpu = platform.processor() or platform.machine()
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == (platform.processor() or platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = [f for f in CPU_FLAGS if f in line.split(":", 1)[1].split()]
    except OSError:
        pass
    from tightfit.device import cpu_threads, gpu_name

    versions: dict[str, str | None] = {}
    for dist in VERSIONED:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "cpu": cpu,
        "cores": cpu_threads(),
        "cpu_flags": flags,
        "load_average": [round(x, 2) for x in os.getloadavg()],  # other work running (1/5/15-minute load)
        "gpu": gpu_name(),
        "python": sys.version.split()[0],
        "versions": versions,
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def spread(values: list[float]) -> list[float]:
    """[min, p25, p75, max] of a sample (rounded), the spread stored beside a median."""
    ordered = sorted(values)
    if not ordered:
        return []
    q = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else [ordered[0]] * 3
    return [round(float(v), 4) for v in (ordered[0], q[0], q[2], ordered[-1])]


def write_results(name: str, figures: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/NAME.json`` with the machine facts beside the figures."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "machine": machine_info(), **figures}
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    print(f"wrote {path}")
    return path
