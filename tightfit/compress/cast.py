"""Casts: every floating weight to bf16 (CPU and GPU) or fp16 (GPU only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tightfit.compress.registry import STAGE_PRECISION, ApplyContext, register_method


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

    return model.to(torch.bfloat16)


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

    return model.to(torch.float16)
