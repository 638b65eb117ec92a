"""Measurement: a variant's footprint (params, bytes, peak memory, latency, throughput, bandwidth, quality).

``profile`` times and counts in this process, ``memory`` measures peak RSS in a fresh one, ``quality``
scores a held-out split the same way for every variant.
"""

from tightfit.measure.memory import measure_memory
from tightfit.measure.profile import (
    count_params,
    forward_for,
    latency_ms,
    measure_variant,
    tensor_bytes,
    weight_bytes_per_forward,
)
from tightfit.measure.quality import evaluate, f1_macro, perplexity, predict_logits

__all__ = [
    "count_params",
    "evaluate",
    "f1_macro",
    "forward_for",
    "latency_ms",
    "measure_memory",
    "measure_variant",
    "perplexity",
    "predict_logits",
    "tensor_bytes",
    "weight_bytes_per_forward",
]
