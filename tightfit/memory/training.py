"""Training memory model per worker: weights + gradients + optimizer state + activations + runtime.

Peak resident memory of one Ray Train worker is modelled as

    peak = runtime_overhead + weights + grads + optimizer_state (+ DDP bucket copy) + k_act * activations

- weights, grads: one fp32 copy each (bf16 autocast keeps fp32 master weights and fp32 grads);
- AdamW state: two fp32 moments per parameter; SGD with momentum one;
- activations: the per-layer transformer estimate of Korthikanti et al. 2022 ("Reducing Activation
  Recomputation in Large Transformer Models"): per layer ``s*b*h*(34 + 5*a*s/h)`` bytes at 16 bit, here
  counted in elements (``/2``) times the activation element size, plus embeddings and logits;
- gradient checkpointing keeps only each layer's input plus one layer's full activations;
- FSDP shards weights, grads and optimizer state over the workers and gathers one layer at a time.

``k_act`` and ``runtime_overhead`` are calibrated from measurement (see ``CALIBRATION``): the peak RSS of
a real worker at two micro-batch sizes gives the activation slope, the intercept gives the runtime overhead
(Python + torch + transformers + the Ray worker + Ray Data buffers). ``benchmarks/finetune.py`` re-measures
and reports the prediction error.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from tightfit.errors import BudgetError, ConfigError
from tightfit.units import format_bytes

Precision = Literal["fp32", "bf16"]
Optimizer = Literal["adamw", "sgd"]
Strategy = Literal["ddp", "fsdp"]


@dataclass(frozen=True)
class Calibration:
    """Measured constants of the model: activation scale and fixed runtime bytes per worker."""

    activation_scale: float
    runtime_overhead_bytes: int
    note: str


# Measured 2026-11-25 on this project's CI machine (2-core x86_64 with avx512_bf16, shared with other jobs;
# torch 2.13 CPU, ray 2.60, transformers 5.24) by `python benchmarks/finetune.py` (its calibration step):
# all-MiniLM-L6-v2 classifier, seq_len 64, AdamW, fp32, 1 Ray Train worker x 1 thread, 160 training rows,
# peak RSS (ru_maxrss) of the worker after one epoch: 1,214,668,800 B at micro-batch 8 and 1,752,289,280 B at
# micro-batch 32 -> activation_scale 1.675 (the allocator keeps more than the autograd graph needs), runtime
# overhead 641 MiB. bf16 autocast was not calibrated separately: it reuses these constants with activations
# counted at 2 bytes per element. Re-measure with `python benchmarks/finetune.py --calibrate`.
_MEASURED = Calibration(
    activation_scale=1.675,
    runtime_overhead_bytes=672_038_197,
    note="MiniLM, seq 64, 1 worker x 1 thread, peak RSS at micro-batch 8 and 32 (benchmarks/finetune.py)",
)
CALIBRATION: dict[str, Calibration] = {"fp32": _MEASURED, "bf16": _MEASURED}


@dataclass(frozen=True)
class ModelShape:
    """What the memory model needs to know of a transformer classifier."""

    params: int
    hidden: int
    layers: int
    heads: int
    vocab: int
    num_labels: int = 2

    @classmethod
    def from_pretrained_dir(cls, model_dir: str | Path, num_labels: int = 2) -> ModelShape:
        """Read the shape from an HF config; parameters are counted on the meta device (no weights read)."""
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification

        config = AutoConfig.from_pretrained(model_dir)
        config.num_labels = num_labels
        with torch.device("meta"):
            model = AutoModelForSequenceClassification.from_config(config)
        params = sum(p.numel() for p in model.parameters())
        return cls(
            params=params,
            hidden=int(_first_attr(config, "hidden_size", "d_model", "n_embd")),
            layers=int(_first_attr(config, "num_hidden_layers", "n_layer", "num_layers")),
            heads=int(_first_attr(config, "num_attention_heads", "n_head")),
            vocab=int(getattr(config, "vocab_size", 0)),
            num_labels=num_labels,
        )


def _first_attr(config: Any, *names: str) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    raise ConfigError(f"model config {type(config).__name__} has none of {names}; cannot size its memory")


@dataclass(frozen=True)
class TrainingMemoryEstimate:
    """Predicted peak bytes of one worker, broken down so a budget miss says what to shrink."""

    weights: int
    grads: int
    optimizer: int
    ddp_buckets: int
    activations: int
    runtime_overhead: int
    micro_batch: int
    seq_len: int

    @property
    def total(self) -> int:
        return (
            self.weights + self.grads + self.optimizer + self.ddp_buckets + self.activations + self.runtime_overhead
        )

    def describe(self) -> str:
        parts = {k: format_bytes(v) for k, v in asdict(self).items() if k not in {"micro_batch", "seq_len"}}
        return f"{format_bytes(self.total)} = " + " + ".join(f"{k} {v}" for k, v in parts.items())


def activation_elements(shape: ModelShape, micro_batch: int, seq_len: int, checkpointing: bool = False) -> float:
    """Activation elements kept for backward (Korthikanti et al.), plus embeddings and the head."""
    b, s, h, a, layers = micro_batch, seq_len, shape.hidden, shape.heads, shape.layers
    per_layer = s * b * h * (34 + 5 * a * s / h) / 2
    embeddings = 4 * b * s * h
    head = 2 * b * h + 2 * b * shape.num_labels
    if checkpointing:
        return layers * b * s * h + per_layer + embeddings + head
    return layers * per_layer + embeddings + head


def estimate_training_memory(
    shape: ModelShape,
    *,
    micro_batch: int,
    seq_len: int,
    workers: int = 1,
    precision: Precision = "fp32",
    optimizer: Optimizer = "adamw",
    strategy: Strategy = "ddp",
    gradient_checkpointing: bool = False,
    calibration: Calibration | None = None,
) -> TrainingMemoryEstimate:
    """Predict one worker's peak resident bytes for a training configuration."""
    if micro_batch < 1 or seq_len < 1 or workers < 1:
        raise ConfigError(f"micro_batch, seq_len and workers must be >= 1; got {micro_batch}, {seq_len}, {workers}")
    cal = calibration or CALIBRATION[precision]
    param_bytes = shape.params * 4
    weights, grads = param_bytes, param_bytes
    optimizer_bytes = param_bytes * (2 if optimizer == "adamw" else 1)
    ddp_buckets = 0
    if strategy == "fsdp" and workers > 1:
        one_layer = param_bytes / max(shape.layers, 1)
        weights = int(param_bytes / workers + 2 * one_layer)
        grads = int(param_bytes / workers + one_layer)
        optimizer_bytes = int(optimizer_bytes / workers)
    elif workers > 1:
        # DDP's flat gradient buckets duplicate the gradients (gradient_as_bucket_view=False).
        ddp_buckets = param_bytes
    element_bytes = 2 if precision == "bf16" else 4
    activations = activation_elements(shape, micro_batch, seq_len, gradient_checkpointing) * element_bytes
    return TrainingMemoryEstimate(
        weights=int(weights),
        grads=int(grads),
        optimizer=int(optimizer_bytes),
        ddp_buckets=int(ddp_buckets),
        activations=int(activations * cal.activation_scale),
        runtime_overhead=int(cal.runtime_overhead_bytes),
        micro_batch=micro_batch,
        seq_len=seq_len,
    )


def choose_micro_batch(
    budget_bytes: int,
    global_batch: int,
    shape: ModelShape,
    *,
    seq_len: int,
    workers: int = 1,
    **options: Any,
) -> tuple[int, int]:
    """The largest micro-batch that fits the per-worker budget and the accumulation reaching ``global_batch``.

    Returns ``(micro_batch, accumulation_steps)`` with ``micro_batch * accumulation_steps * workers``
    >= ``global_batch`` (equal when it divides). Raises ``BudgetError`` when not even batch 1 fits.
    """
    if global_batch < workers:
        raise ConfigError(f"global batch {global_batch} is smaller than the {workers} workers; raise it to >= {workers}")
    per_worker = math.ceil(global_batch / workers)
    smallest = estimate_training_memory(shape, micro_batch=1, seq_len=seq_len, workers=workers, **options)
    if smallest.total > budget_bytes:
        raise BudgetError(
            f"a per-worker memory budget of {format_bytes(budget_bytes)} cannot hold even micro-batch 1 at "
            f"seq_len {seq_len} (needs {smallest.describe()}); raise the budget to at least "
            f"{format_bytes(smallest.total)}, or use more workers with --strategy fsdp, gradient checkpointing, "
            "a shorter max_length or a smaller model"
        )
    low, high = 1, per_worker
    while low < high:  # largest micro-batch whose estimate fits
        mid = (low + high + 1) // 2
        fits = estimate_training_memory(shape, micro_batch=mid, seq_len=seq_len, workers=workers, **options)
        if fits.total <= budget_bytes:
            low = mid
        else:
            high = mid - 1
    accumulation = math.ceil(per_worker / low)
    micro_batch = math.ceil(per_worker / accumulation)  # balance the steps: 16 as 8+8, not 12+4
    return micro_batch, accumulation


def fit_calibration(
    shape: ModelShape,
    measured: dict[int, int],
    *,
    seq_len: int,
    precision: Precision = "fp32",
    workers: int = 1,
    optimizer: Optimizer = "adamw",
    note: str = "",
) -> Calibration:
    """Fit ``activation_scale`` and ``runtime_overhead_bytes`` from peak RSS measured at two micro-batches."""
    if len(measured) < 2:
        raise ConfigError("calibration needs peak memory measured at two or more micro-batch sizes")
    (b1, m1), (b2, m2) = sorted(measured.items())[0], sorted(measured.items())[-1]
    unit = Calibration(activation_scale=1.0, runtime_overhead_bytes=0, note="")
    e1 = estimate_training_memory(
        shape, micro_batch=b1, seq_len=seq_len, workers=workers, precision=precision,
        optimizer=optimizer, calibration=unit,
    )
    e2 = estimate_training_memory(
        shape, micro_batch=b2, seq_len=seq_len, workers=workers, precision=precision,
        optimizer=optimizer, calibration=unit,
    )
    scale = max((m2 - m1) / max(e2.activations - e1.activations, 1), 0.0)
    overhead = m1 - (e1.total - e1.activations) - scale * e1.activations
    return Calibration(activation_scale=round(scale, 3), runtime_overhead_bytes=int(overhead), note=note)
