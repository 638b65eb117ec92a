"""Shared by the benchmark scripts: machine facts, medians, and writing results/NAME.json."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
VERSIONED = ("tightfit", "torch", "torchao", "transformers", "ray", "mlflow", "kfp")


def machine_info() -> dict[str, Any]:
    """CPU model, cores, GPU (if any), Python and library versions, and the date."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
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
        "gpu": gpu_name(),
        "python": sys.version.split()[0],
        "versions": versions,
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def write_results(name: str, figures: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/NAME.json`` with the machine facts beside the figures."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "machine": machine_info(), **figures}
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    print(f"wrote {path}")
    return path
