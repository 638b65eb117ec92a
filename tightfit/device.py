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


def cpu_threads() -> int:
    """Cores this process may use (affinity-aware), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


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
