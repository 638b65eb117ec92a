"""Mixed int4/int8 by measured sensitivity: the Linears whose 4-bit weights hurt held-out loss most keep int8.

Like NNCF's ``ratio`` and ModelOpt's auto-quantize, but measured directly: for each unit (a decoder block,
or a single Linear with ``unit=linear``) the unit alone is quantized to int4 (round to nearest) and the
mean next-token loss on ``probe_chunks`` chunks of the *validation* split is compared with the bf16
model's. Units are kept at int8, most harmful first, until ``keep`` of the body's Linear weights are
int8; everything else is int4. The measured loss increase of every unit goes to the manifest
(``sensitivity``), the chosen formats to ``layer_formats``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from tightfit.compress.lowbit.calibrate import calibration_chunks
from tightfit.compress.lowbit.formats import (
    apply_formats,
    body_linears,
    check_group_size,
    on_gpu,
    plan_formats,
    quantize_int4,
    to_compute_dtype,
)
from tightfit.compress.registry import STAGE_PRECISION, ApplyContext, register_method
from tightfit.errors import ConfigError

SENSITIVITY = "sensitivity"
"""``ctx.extra`` / manifest key: unit name -> loss increase (nats per token) when only it is int4."""


@dataclass(frozen=True)
class MixedConfig:
    """``keep``: fraction of body Linear weights kept int8 (most sensitive first); ``group_size`` of the int4
    rest; ``unit``: block or linear; ``probe_chunks`` x ``chunk_tokens`` validation tokens per measurement."""

    keep: float = 0.1
    group_size: int = 32
    unit: Literal["block", "linear"] = "block"
    probe_chunks: int = 4
    chunk_tokens: int = 128

    def __post_init__(self) -> None:
        check_group_size(self.group_size)
        if not 0 <= self.keep < 1:
            raise ConfigError(f"keep is the fraction of Linear weights kept int8 and must be in [0, 1), got {self.keep}")
        if self.unit not in ("block", "linear"):
            raise ConfigError(f"unit must be block or linear, got {self.unit!r}")
        if not 1 <= self.probe_chunks <= 256:
            raise ConfigError(f"probe_chunks must be in [1, 256], got {self.probe_chunks}")


def mean_loss(model: Any, chunks: Any, batch_size: int = 4) -> float:
    """Mean next-token cross-entropy (nats) over the chunks."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(chunks), batch_size):
            x = chunks[start : start + batch_size].to(device)
            logits = model(input_ids=x).logits.float()
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten(), reduction="sum")
            total += float(loss)
            count += int(x[:, 1:].numel())
    return total / count


def units_of(names: list[str], unit: str) -> dict[str, list[str]]:
    """Group Linear names by decoder block (``model.layers.3``) or keep them one per unit."""
    if unit == "linear":
        return {n: [n] for n in names}
    out: dict[str, list[str]] = {}
    for name in names:
        out.setdefault(name.rsplit(".", 2)[0] if name.count(".") >= 2 else name, []).append(name)
    return out


def measure_sensitivity(model: Any, units: dict[str, list[str]], chunks: Any, group_size: int, gpu: bool) -> dict[str, float]:
    """Loss increase of each unit quantized alone to int4 (weights restored after each measurement)."""
    modules = dict(model.named_modules())
    base = mean_loss(model, chunks)
    out: dict[str, float] = {}
    for unit, names in units.items():
        originals = {n: modules[n].weight for n in names}
        quantize_int4(model, names, group_size, gpu)
        out[unit] = mean_loss(model, chunks) - base
        for n, weight in originals.items():
            modules[n].weight = weight
    return out


def choose_int8(units: dict[str, list[str]], sensitivity: dict[str, float], sizes: dict[str, int], keep: float) -> list[str]:
    """Units kept at int8: most sensitive first while the kept weights stay within ``keep`` of the total
    (a unit that would overshoot is skipped for a smaller one); at least one unit when ``keep > 0``."""
    total = sum(sizes.values())
    budget = keep * total
    kept: list[str] = []
    used = 0
    for unit in sorted(units, key=lambda u: sensitivity[u], reverse=True):
        weight = sum(sizes[n] for n in units[unit])
        if used + weight <= budget or (keep > 0 and not kept):
            kept.append(unit)
            used += weight
    return kept


@register_method(
    "mixed_int4",
    family="lowbit",
    config=MixedConfig,
    stage=STAGE_PRECISION,
    kinds=("causal_lm",),
    description="int4 weights except the most loss-sensitive blocks/Linears (measured on validation chunks), "
    "which keep int8: keep=0.1 keeps a tenth of the Linear weights int8",
)
def mixed_int4(model: Any, config: MixedConfig, ctx: ApplyContext) -> Any:
    chunks = calibration_chunks(ctx, "mixed_int4", config.probe_chunks, config.chunk_tokens, split="validation")
    model = to_compute_dtype(model, ctx)
    linears = body_linears(model)
    int4, refused = plan_formats(linears, config.group_size)
    units = units_of(int4, config.unit)
    sensitivity = measure_sensitivity(model, units, chunks, config.group_size, on_gpu(ctx)) if config.keep > 0 else {}
    sizes = {n: int(linears[n].weight.numel()) for n in int4}
    kept = choose_int8(units, sensitivity, sizes, config.keep) if config.keep > 0 else []
    rank = {u: i + 1 for i, u in enumerate(sorted(sensitivity, key=lambda u: sensitivity[u], reverse=True))}
    keep_int8 = dict(refused)
    for unit in kept:
        for name in units[unit]:
            keep_int8[name] = f"sensitivity rank {rank[unit]} of {len(units)} (+{sensitivity[unit]:.4f} nats as int4)"
    ctx.extra[SENSITIVITY] = {u: round(v, 6) for u, v in sensitivity.items()}
    ctx.extra["probe"] = {"split": "validation", "chunks": config.probe_chunks, "tokens": int(chunks.numel())}
    return apply_formats(model, ctx, config.group_size, keep_int8=keep_int8)
