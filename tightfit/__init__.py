"""tightfit: fit models to the hardware you have.

Compression, Ray fine-tuning and memory-aware serving as plain library calls, with KFP components,
Ray job entrypoints and a CLI as thin front doors. The packages follow the data path: ``compress`` ->
``measure`` -> ``track`` -> ``select`` -> ``serve``, with ``train``, ``memory`` and ``kube`` beside them
(see docs/architecture.md). ``import tightfit`` stays light: no torch, Ray, MLflow or KFP at import.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tightfit.compress.variant import load_variant

__version__ = "0.1.0"

__all__ = ["__version__", "load_variant"]


def __getattr__(name: str) -> Any:
    """``tightfit.load_variant`` is ``tightfit.compress.load_variant``, imported on first use."""
    if name == "load_variant":
        from tightfit.compress.variant import load_variant

        return load_variant
    raise AttributeError(f"module 'tightfit' has no attribute {name!r}")
