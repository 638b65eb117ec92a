"""Figures the robustness tests measure, appended as JSON lines to ``$TIGHTFIT_RELIABILITY_LOG`` when it is
set (``benchmarks/reliability.py`` sets it and aggregates them); a no-op otherwise."""

from __future__ import annotations

import json
import os
from typing import Any

LOG_ENV = "TIGHTFIT_RELIABILITY_LOG"


def record(event: str, **figures: Any) -> None:
    """Append one measurement (written before the test asserts, so a failing run still reports it)."""
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"event": event, **figures}, default=str) + "\n")
