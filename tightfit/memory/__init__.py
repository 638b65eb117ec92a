"""Models of memory: a process's RSS (``rss``), a training worker (``training``), a serving replica
(``serving``: runtime + weights + activations + KV cache) and what a Ray Serve replica needs for a
footprint record (``replica``, read by selection and serving alike)."""

from tightfit.memory.replica import replica_need_bytes
from tightfit.memory.rss import current_rss_bytes, peak_rss_bytes
from tightfit.memory.serving import ArchInfo, ServingMemoryModel, fit_serving_model
from tightfit.memory.training import ModelShape, choose_micro_batch, estimate_training_memory

__all__ = [
    "ArchInfo",
    "ModelShape",
    "ServingMemoryModel",
    "choose_micro_batch",
    "current_rss_bytes",
    "estimate_training_memory",
    "fit_serving_model",
    "peak_rss_bytes",
    "replica_need_bytes",
]
