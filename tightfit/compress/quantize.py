"""Quantization with torchao's ``quantize_`` configs: int8 dynamic, int8 weight-only, int8 embeddings, int4.

The quantized weights are tensor subclasses; a variant stores them with ``torch.save(state_dict)`` and
rebuilds by applying the same method to a fresh module before ``load_state_dict(assign=True)`` (4-bit
variants record per-layer formats and load by assignment alone; see ``lowbit.formats``). Calibrated and
mixed-precision 4-bit methods live in ``lowbit/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tightfit.compress._torch import torchao_quantization
from tightfit.compress.lowbit.formats import (
    LAYER_FORMATS,
    LAYER_REASONS,
    apply_formats,
    check_group_size,
    int8_tied_head,
    record_formats,
    to_compute_dtype,
)
from tightfit.compress.registry import STAGE_PRECISION, ApplyContext, register_method
from tightfit.errors import ConfigError


@dataclass(frozen=True)
class NoParams:
    """This method takes no parameters."""


@dataclass(frozen=True)
class Int4Config:
    """``group_size``: weights per scale and zero point (32, 64 or 128; smaller holds quality better)."""

    group_size: int = 32

    def __post_init__(self) -> None:
        check_group_size(self.group_size)


def _is_linear(module: Any, fqn: str) -> bool:
    import torch

    return isinstance(module, torch.nn.Linear)


def _is_embedding(module: Any, fqn: str) -> bool:
    import torch

    return isinstance(module, torch.nn.Embedding)


def _float_model(model: Any, method: str) -> None:
    import torch

    dtype = next(model.parameters()).dtype
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ConfigError(f"{method} needs float weights, found {dtype}")


@register_method(
    "int8_dynamic",
    family="quantize",
    config=NoParams,
    stage=STAGE_PRECISION,
    description="int8 weights and int8 dynamic activations in every nn.Linear (fast on CPU when compiled)",
)
def int8_dynamic(model: Any, config: NoParams, ctx: ApplyContext) -> Any:
    q = torchao_quantization()
    _float_model(model, "int8_dynamic")
    q.quantize_(model, q.Int8DynamicActivationInt8WeightConfig(), filter_fn=_is_linear)
    return model


@register_method(
    "int8_weight_only",
    family="quantize",
    config=NoParams,
    stage=STAGE_PRECISION,
    description="int8 weights, float activations, in every nn.Linear (a size win; no CPU speed-up)",
)
def int8_weight_only(model: Any, config: NoParams, ctx: ApplyContext) -> Any:
    q = torchao_quantization()
    _float_model(model, "int8_weight_only")
    q.quantize_(model, q.Int8WeightOnlyConfig(), filter_fn=_is_linear)
    return model


@register_method(
    "int8_embeddings",
    family="quantize",
    config=NoParams,
    stage=STAGE_PRECISION,
    description="int8 per-row embedding tables (MiniLM's word embeddings are half its bytes); for a causal "
    "LM one int8 table serves the input embedding and the output head tied to it",
)
def int8_embeddings(model: Any, config: NoParams, ctx: ApplyContext) -> Any:
    import torch

    if ctx.kind == "causal_lm":
        formats = int8_tied_head(model)
        record_formats(model, ctx, {**ctx.extra.get(LAYER_FORMATS, {}), **formats}, ctx.extra.get(LAYER_REASONS, {}))
        return model
    q = torchao_quantization()
    from torchao.quantization.granularity import PerAxis

    q.quantize_(
        model,
        q.IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0)),
        filter_fn=_is_embedding,
    )
    return model


@register_method(
    "int4_weight_only",
    family="quantize",
    config=Int4Config,
    stage=STAGE_PRECISION,
    description="int4 grouped weights (round to nearest) in every body nn.Linear, bf16 compute (torchao "
    "tinygemm on CPU and GPU); a shape the kernel refuses keeps int8, recorded per layer",
)
def int4_weight_only(model: Any, config: Int4Config, ctx: ApplyContext) -> Any:
    return apply_formats(to_compute_dtype(model, ctx), ctx, config.group_size)
