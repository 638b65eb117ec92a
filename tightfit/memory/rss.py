"""This process's memory, read the one way every part of tightfit measures it."""

from __future__ import annotations

import os
import resource
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def peak_rss_bytes() -> int:
    """Peak resident set size since this process started its program.

    Reads VmHWM, which exec resets; ``ru_maxrss`` does not: a child forked from a big parent starts with
    the parent's maximum, which would make every measured variant look as big as the parent.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def current_rss_bytes() -> int:
    """Resident set size now (the peak alone hides a model when library imports peaked higher)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil

        return int(psutil.Process().memory_info().rss)


def trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc), so RSS follows the live set down after a big batch."""
    import contextlib
    import ctypes

    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak_rss() -> bool:
    """Reset this process's peak (VmHWM) to its RSS now, so the next peak read is what follows alone (Linux's
    ``/proc/self/clear_refs``, value 5). False where the kernel does not offer it: the peak then keeps
    everything since the program started."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def median_figures(records: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, float]:
    """The median of each of ``keys`` over fresh-process records that hold it (one process is one draw of a
    peak; per-round serve >= load keeps that order in the medians too)."""
    import statistics  # here: a lean replica imports this module and never needs it

    out: dict[str, float] = {}
    for key in keys:
        values = [r[key] for r in records if r.get(key) is not None]
        if values:
            out[key] = statistics.median(values)
    return out
