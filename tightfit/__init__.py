"""tightfit: fit models to the hardware you have.

Compression, Ray fine-tuning and memory-aware serving as plain library calls, with KFP components,
Ray job entrypoints and a CLI as thin front doors. No orchestration imports at module top.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "load_variant"]


def load_variant(path: Any, device: str | None = None) -> Any:
    """Load a saved variant directory (see ``tightfit.variant``)."""
    from tightfit.variant import load_variant as _load

    return _load(path, device=device)
