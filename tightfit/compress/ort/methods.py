"""The ONNX Runtime steps of the method table: the last step of a chain, turning the torch model into an
ONNX graph that ONNX Runtime runs (``...|prune_vocab|distill|onnx_int8_dynamic``).

- ``onnx``: export (dynamic batch and sequence) + ORT's transformer fusions, fp32.
- ``onnx_int8_dynamic``: the same, then ORT dynamic int8 (weights int8 per output channel by default).
- ``onnx_int8_static``: the same, then ORT static int8 (QDQ) calibrated on batches of the train split.
- ``onnx_int4``: decoders: 4-bit affine blocks in ``MatMulNBits`` (``ort.int4``), the head and the
  embedding table at 8 bits, the KV cache in the graph.

Each returns an ``OnnxExport`` that ``save_variant`` writes as ``model.onnx``; the variant then loads with
ONNX Runtime and ``tokenizers`` only (``tightfit.runtime``).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tightfit.compress.ort.export import OnnxExport, export_onnx
from tightfit.compress.ort.graph import fuse, quantize_dynamic_int8, quantize_static_int8
from tightfit.compress.ort.int4 import quantize_int4
from tightfit.compress.registry import STAGE_RUNTIME, ApplyContext, register_method
from tightfit.errors import ConfigError

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


@dataclass(frozen=True)
class OnnxConfig:
    """``fuse``: apply ORT's transformer fusions (BERT-like encoders)."""

    fuse: bool = True


@dataclass(frozen=True)
class OnnxInt8DynamicConfig:
    """``per_channel``: one weight scale per output channel (finer than one per tensor; about as fast)."""

    per_channel: bool = True
    fuse: bool = True


@dataclass(frozen=True)
class OnnxInt8StaticConfig:
    """Calibration: ``calib_batches`` batches of ``batch_size`` train texts at ``max_length`` tokens; ``method``
    sets activation ranges (minmax, percentile, entropy)."""

    calib_batches: int = 8
    batch_size: int = 16
    max_length: int = 64
    method: str = "minmax"
    per_channel: bool = True

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise ConfigError(f"method must be one of {', '.join(CALIBRATION_METHODS)}, got {self.method!r}")
        for key in ("calib_batches", "batch_size", "max_length"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")


@dataclass(frozen=True)
class OnnxInt4Config:
    """``block_size``: weights per 4-bit block (16-256, a power of two); ``accuracy_level`` 4 computes in int8
    on CPU (fastest), 0 in fp32; ``head_bits``: the output head's bits (8 or 4); ``embedding_bits``: the
    embedding table's (8, 4, or 32 to keep it as exported)."""

    block_size: int = 32
    accuracy_level: int = 4
    head_bits: int = 8
    embedding_bits: int = 8

    def __post_init__(self) -> None:
        size = int(self.block_size)
        if size < 16 or size > 256 or size & (size - 1):
            raise ConfigError(f"block_size must be a power of two in [16, 256], got {self.block_size}")
        if int(self.accuracy_level) not in (0, 1, 2, 3, 4):
            raise ConfigError(f"accuracy_level is 0-4, got {self.accuracy_level}")
        if int(self.head_bits) not in (4, 8):
            raise ConfigError(f"head_bits is 4 or 8, got {self.head_bits}")
        if int(self.embedding_bits) not in (4, 8, 32):
            raise ConfigError(f"embedding_bits is 4, 8 or 32, got {self.embedding_bits}")


def _export(model: Any, ctx: ApplyContext, *, fused: bool, attention: bool = True) -> tuple[OnnxExport, Path]:
    """Export + (optional) fusions into a fresh temp dir; returns the export record and the fused graph."""
    if ctx.tokenizer is None:
        raise ConfigError("an ONNX step needs the variant's tokenizer to trace the graph; build with build_variant")
    workdir = tempfile.TemporaryDirectory(prefix="tightfit-onnx-")
    root = Path(workdir.name)
    info = export_onnx(model, ctx.tokenizer, root / "exported.onnx", kind=ctx.kind)
    out = root / "fused.onnx"
    if fused:
        info["fusion"] = fuse(root / "exported.onnx", out, kind=ctx.kind, attention=attention)
    else:
        out = root / "exported.onnx"
    export = OnnxExport(onnx_path=out, source=model, kind=ctx.kind, info=info, workdir=workdir)
    return export, root


@register_method(
    "onnx",
    family="onnx",
    config=OnnxConfig,
    stage=STAGE_RUNTIME,
    description="run on ONNX Runtime: export to ONNX (dynamic batch and length) + ORT transformer fusions, fp32",
)
def to_onnx(model: Any, config: OnnxConfig, ctx: ApplyContext) -> OnnxExport:
    export, _root = _export(model, ctx, fused=config.fuse)
    export.info["quantization"] = None
    return export


@register_method(
    "onnx_int8_dynamic",
    family="onnx",
    config=OnnxInt8DynamicConfig,
    stage=STAGE_RUNTIME,
    description="ONNX Runtime with dynamic int8 (int8 weights, activations quantized per batch)",
)
def to_onnx_int8_dynamic(model: Any, config: OnnxInt8DynamicConfig, ctx: ApplyContext) -> OnnxExport:
    export, root = _export(model, ctx, fused=config.fuse)
    out = root / "int8.onnx"
    export.info.update(quantize_dynamic_int8(export.onnx_path, out, per_channel=config.per_channel))
    export.onnx_path = out
    return export


def calibration_feeds(ctx: ApplyContext, batches: int, batch_size: int, max_length: int) -> list[dict[str, Any]]:
    """Tokenized batches of the train split (int64, padded to ``max_length``), the graph's two inputs."""
    from tightfit.compress.training import batches as sample_batches

    if ctx.data is None:
        raise ConfigError(
            "onnx_int8_static calibrates on the training data: pass data= to build_variant, or --dataset on the CLI"
        )
    feeds = []
    for frame in sample_batches(ctx.data.train, batch_size, batches, ctx.seed):
        enc = ctx.tokenizer(frame["text"].astype(str).tolist(), padding="max_length", truncation=True,
                            max_length=max_length, return_tensors="np")
        feeds.append({"input_ids": enc["input_ids"].astype("int64"), "attention_mask": enc["attention_mask"].astype("int64")})
    return feeds


@register_method(
    "onnx_int8_static",
    family="onnx",
    config=OnnxInt8StaticConfig,
    stage=STAGE_RUNTIME,
    kinds=("classifier",),
    description="ONNX Runtime with static int8 (QDQ), activation ranges calibrated on train batches",
)
def to_onnx_int8_static(model: Any, config: OnnxInt8StaticConfig, ctx: ApplyContext) -> OnnxExport:
    feeds = calibration_feeds(ctx, config.calib_batches, config.batch_size, config.max_length)
    # fused attention is an fp32 contrib op the static quantizer cannot reach: keep its projections as MatMuls
    export, root = _export(model, ctx, fused=True, attention=False)
    out = root / "int8-static.onnx"
    export.info.update(quantize_static_int8(export.onnx_path, out, feeds, per_channel=config.per_channel,
                                            method=config.method))
    export.onnx_path = out
    return export


@register_method(
    "onnx_int4",
    family="onnx",
    config=OnnxInt4Config,
    stage=STAGE_RUNTIME,
    kinds=("causal_lm",),
    description="ONNX Runtime with 4-bit block-wise weight-only MatMulNBits (decoders)",
)
def to_onnx_int4(model: Any, config: OnnxInt4Config, ctx: ApplyContext) -> OnnxExport:
    export, root = _export(model, ctx, fused=False)
    out = root / "int4.onnx"
    export.info.update(quantize_int4(export.onnx_path, out, block_size=int(config.block_size),
                                     accuracy_level=int(config.accuracy_level), head_bits=int(config.head_bits),
                                     embedding_bits=int(config.embedding_bits)))
    export.onnx_path = out
    return export
