"""Pick the compute device and thread count: use a GPU where present, run on CPU everywhere."""

from __future__ import annotations

import os

from tightfit.errors import UnsupportedError


def pick_device(requested: str | None = None) -> str:
    """``cuda`` when available (or requested), else ``cpu``. A requested GPU that is absent is an error."""
    import torch

    if requested in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UnsupportedError(f"device {requested!r} was asked for but no GPU is visible; use --device cpu")
    return requested


def cgroup_cpu_limit() -> int | None:
    """The CPU limit of this process's cgroup in whole cores (a Kubernetes pod's ``limits.cpu``, rounded
    up), or None where there is none: cgroup v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us``."""
    from pathlib import Path

    try:
        v2 = Path("/sys/fs/cgroup/cpu.max")
        if v2.exists():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else max(1, -(-int(quota) // int(period)))
        v1 = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
        if v1.exists():
            quota_us = int(v1.read_text())
            period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
            return None if quota_us <= 0 else max(1, -(-quota_us // period_us))
    except (OSError, ValueError):
        return None
    return None


def cpu_threads() -> int:
    """Cores this process may use, at least 1: its CPU affinity, capped by its cgroup's CPU limit (torch and
    ONNX Runtime count the node's cores, so in a pod with a CPU limit they would start more threads than
    the limit lets run)."""
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        cores = max(1, os.cpu_count() or 1)
    limit = cgroup_cpu_limit()
    return min(cores, limit) if limit else cores


def task_threads() -> int:
    """Threads for a pipeline task that may run beside others on this machine: ``TIGHTFIT_LOOP_THREADS``
    where the local runner set it (its cores over the loop iterations it runs at once), else ``cpu_threads``.
    Two distillations with two torch threads each on two cores ran 3-9x slower than one at a time."""
    from tightfit.settings import ENV_LOOP_THREADS

    raw = os.environ.get(ENV_LOOP_THREADS, "").strip()
    if raw.isdigit() and int(raw) > 0:
        return min(int(raw), cpu_threads())
    return cpu_threads()


def gpu_visible() -> bool:
    """Whether an NVIDIA GPU is visible to this process, read without importing torch (for the ONNX
    Runtime path): the driver lists a GPU and ``CUDA_VISIBLE_DEVICES`` does not hide them all."""
    from pathlib import Path

    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip() in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
