"""Quantization with torchao's ``quantize_`` configs: int8 dynamic, int8 weight-only, int8 embeddings, int4.

The quantized weights are tensor subclasses; a variant stores them with ``torch.save(state_dict)`` and
rebuilds by applying the same method to a fresh module before ``load_state_dict(assign=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tightfit.compress._torch import torchao_quantization
from tightfit.compress.registry import STAGE_PRECISION, ApplyContext, register_method
from tightfit.errors import ConfigError, UnsupportedError

INT4_GROUP_SIZES = (32, 64, 128, 256)


@dataclass(frozen=True)
class NoParams:
    """This method takes no parameters."""


@dataclass(frozen=True)
class Int4Config:
    """``group_size``: weights per scale (one of 32, 64, 128, 256)."""

    group_size: int = 128

    def __post_init__(self) -> None:
        if self.group_size not in INT4_GROUP_SIZES:
            raise ConfigError(
                f"group_size must be one of {', '.join(map(str, INT4_GROUP_SIZES))}, got {self.group_size}"
            )


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
    kinds=("classifier",),
    description="int8 per-row embedding tables (MiniLM's word embeddings are half its bytes)",
)
def int8_embeddings(model: Any, config: NoParams, ctx: ApplyContext) -> Any:
    import torch

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
    devices=("cuda",),
    description="int4 grouped weights in every nn.Linear; GPU only (torchao has no int4 CPU kernel here)",
)
def int4_weight_only(model: Any, config: Int4Config, ctx: ApplyContext) -> Any:
    import torch

    if not str(ctx.device).startswith("cuda") or not torch.cuda.is_available():
        raise UnsupportedError(
            "int4_weight_only needs a GPU: torchao has no int4 CPU kernel in this stack; "
            "use int8_weight_only or int8_dynamic on CPU"
        )
    q = torchao_quantization()
    model = model.to(device=ctx.device, dtype=torch.bfloat16)
    q.quantize_(model, q.Int4WeightOnlyConfig(group_size=config.group_size), filter_fn=_is_linear)
    return model
