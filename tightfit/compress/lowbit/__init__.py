"""4-bit weights: per-layer formats (int4 where the kernel takes the shape, int8 otherwise), calibrated
int4 (AWQ on the train split), mixed int4/int8 by measured sensitivity, and the int8 tied embedding/head.

``formats`` packs and records; ``calibrate`` and ``mixed`` register the ``int4_awq`` and ``mixed_int4``
methods (``int4_weight_only`` lives in ``tightfit.compress.quantize``); ``modules`` holds the packed CPU
modules (imported lazily: it needs torch).
"""

from tightfit.compress.lowbit.calibrate import AwqConfig, int4_awq
from tightfit.compress.lowbit.formats import (
    LAYER_FORMATS,
    LAYER_REASONS,
    apply_formats,
    int4_weight_fraction,
    int8_tied_head,
    logical_size,
    skeleton_from_formats,
    summarize_formats,
)
from tightfit.compress.lowbit.mixed import MixedConfig, mixed_int4

__all__ = [
    "LAYER_FORMATS",
    "LAYER_REASONS",
    "AwqConfig",
    "MixedConfig",
    "apply_formats",
    "int4_awq",
    "int4_weight_fraction",
    "int8_tied_head",
    "logical_size",
    "mixed_int4",
    "skeleton_from_formats",
    "summarize_formats",
]
