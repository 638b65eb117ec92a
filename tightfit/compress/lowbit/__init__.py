"""4-bit weights: per-layer formats (int4 where the kernel takes the shape, int8 otherwise), calibrated
int4 (AWQ on the train split), mixed int4/int8 by measured sensitivity, and the int8 tied embedding/head.

``formats`` packs and records; ``calibrate`` and ``mixed`` register the ``int4_awq`` and ``mixed_int4``
methods (``int4_weight_only`` lives in ``tightfit.compress.quantize``); ``int8`` holds ``Int8RowTensor``.
"""

from tightfit.compress.lowbit.calibrate import AwqConfig, int4_awq
from tightfit.compress.lowbit.formats import (
    LAYER_FORMATS,
    LAYER_REASONS,
    apply_formats,
    int4_weight_fraction,
    summarize_formats,
)
from tightfit.compress.lowbit.int8 import int8_tied_head, register_safe_globals
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
    "mixed_int4",
    "register_safe_globals",
    "summarize_formats",
]
