"""Calibrated 4-bit: activation-aware weight quantization (AWQ) on batches of the train split.

torchao's prototype ``AWQConfig`` wraps every body Linear in an observer, the calibration chunks run
through the model, and ``convert`` picks, per Linear, the per-input-channel scale (``x_mean ** r`` for
``search`` values of r in [0, 1)) that minimises the Linear's output error once its weight is int4; the
weight is stored scaled and the inverse scale multiplies the activation at run time (``act_pre_scale``
inside the int4 tensor). The calibration text is the train split as a token stream, cut into
``calib_chunks`` x ``chunk_tokens`` chunks, so nothing is calibrated on the text it is judged on.

torchao's GPTQ prototype needs the ``mslk`` int4 kernels (CUDA) for int4, so AWQ is the calibrated method
on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tightfit.compress._torch import torchao_quantization
from tightfit.compress.lowbit.formats import (
    apply_formats,
    body_linears,
    check_group_size,
    int4_config,
    is_packed,
    on_gpu,
    plan_formats,
    to_compute_dtype,
)
from tightfit.compress.registry import STAGE_PRECISION, ApplyContext, register_method
from tightfit.errors import ConfigError

CALIBRATION = "calibration"
"""``ctx.extra`` / manifest key: how a calibrated variant was calibrated (method, split, chunks, tokens)."""


@dataclass(frozen=True)
class AwqConfig:
    """``group_size``: 32/64/128; ``calib_chunks`` x ``chunk_tokens`` train-split tokens; ``search``: scales tried."""

    group_size: int = 32
    calib_chunks: int = 16
    chunk_tokens: int = 128
    search: int = 20

    def __post_init__(self) -> None:
        check_group_size(self.group_size)
        if not 1 <= self.calib_chunks <= 1024:
            raise ConfigError(f"calib_chunks must be in [1, 1024], got {self.calib_chunks}")
        if not 16 <= self.chunk_tokens <= 4096:
            raise ConfigError(f"chunk_tokens must be in [16, 4096], got {self.chunk_tokens}")
        if not 2 <= self.search <= 100:
            raise ConfigError(f"search must be in [2, 100], got {self.search}")


def calibration_chunks(ctx: ApplyContext, method: str, chunks: int, tokens: int, split: str = "train") -> Any:
    """``chunks`` x ``tokens`` ids from a split of ``ctx.data``; a clear error without data."""
    from tightfit.measure.quality import token_chunks

    if ctx.data is None or ctx.tokenizer is None:
        raise ConfigError(
            f"{method} calibrates on the {split} split: give it a dataset (tightfit compress --dataset NAME, or "
            "the pipeline's data)"
        )
    texts = getattr(ctx.data, split)["text"].astype(str).tolist()
    return token_chunks(ctx.tokenizer, texts, chunks, tokens)


def run_chunks(model: Any, chunks: Any, batch_size: int = 4) -> None:
    """Forward every chunk (no grad) so observers see the activations."""
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(chunks), batch_size):
            model(input_ids=chunks[start : start + batch_size].to(device))


@register_method(
    "int4_awq",
    family="lowbit",
    config=AwqConfig,
    stage=STAGE_PRECISION,
    kinds=("causal_lm",),
    description="int4 weights calibrated with AWQ (activation-aware scales searched per Linear on "
    "train-split chunks; torchao prototype), bf16 compute; refused shapes keep int8",
)
def int4_awq(model: Any, config: AwqConfig, ctx: ApplyContext) -> Any:
    from torchao.prototype.awq import AWQConfig

    chunks = calibration_chunks(ctx, "int4_awq", config.calib_chunks, config.chunk_tokens)
    q = torchao_quantization()
    model = to_compute_dtype(model, ctx)
    int4, _ = plan_formats(body_linears(model), config.group_size)
    chosen = set(int4)
    base = int4_config(config.group_size, on_gpu(ctx))

    def pick(module: Any, fqn: str) -> bool:
        return fqn in chosen

    q.quantize_(model, AWQConfig(base, step="prepare", scale_search_space_size=config.search), filter_fn=pick)
    run_chunks(model, chunks)
    q.quantize_(model, AWQConfig(base, step="convert", scale_search_space_size=config.search), filter_fn=pick)
    modules = dict(model.named_modules())
    packed = {name for name in chosen if is_packed(modules[name])}
    ctx.extra[CALIBRATION] = {"method": "awq", "split": "train", "chunks": config.calib_chunks,
                              "tokens": int(chunks.numel()), "search": config.search}
    return apply_formats(model, ctx, config.group_size, packed=packed)
