"""Casts: every floating weight to bf16 (CPU and GPU) or fp16 (GPU only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tightfit.compress.registry import STAGE_PRECISION, ApplyContext, register_method


def cast_weights(model: Any, dtype: Any, device: Any = None) -> Any:
    """``model.to(device, dtype)`` for the weights, keeping float buffers that are not saved (rotary
    ``inv_freq``) as they are: a variant rebuilt from its file computes those afresh in fp32, so the
    model in memory and the one loaded back run the very same numbers."""
    kept = [(m, name, buf) for m in model.modules() for name, buf in m._buffers.items()
            if buf is not None and name in m._non_persistent_buffers_set and buf.is_floating_point()]
    model = model.to(device=device, dtype=dtype)
    for module, name, buf in kept:
        module._buffers[name] = buf.to(device) if device is not None else buf
    return model


@dataclass(frozen=True)
class CastConfig:
    """Casts take no parameters."""


@register_method(
    "bf16",
    family="cast",
    config=CastConfig,
    stage=STAGE_PRECISION,
    description="cast weights to bfloat16: half the bytes; fast on CPUs with avx512_bf16 and on GPUs",
)
def cast_bf16(model: Any, config: CastConfig, ctx: ApplyContext) -> Any:
    import torch

    return cast_weights(model, torch.bfloat16)


@register_method(
    "fp16",
    family="cast",
    config=CastConfig,
    stage=STAGE_PRECISION,
    devices=("cuda",),
    description="cast weights to float16: half the bytes; GPU only (CPU fp16 matmuls are slow and lossy)",
)
def cast_fp16(model: Any, config: CastConfig, ctx: ApplyContext) -> Any:
    import torch

    return cast_weights(model, torch.float16)
