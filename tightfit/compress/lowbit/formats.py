"""Per-layer weight formats for 4-bit variants: which Linear is int4, which keeps int8, and why.

Every 4-bit method (round-to-nearest, AWQ, mixed precision) ends here: it decides a format per
``nn.Linear`` and ``apply_formats`` packs the weights. int4 runs through torchao's tinygemm layout on
both devices: ``Int4OpaqueTensor`` (``PrototypeInt4WeightOnlyConfig``) on CPU and ``Int4WeightOnlyConfig``
on CUDA, in bfloat16. A Linear the int4 kernel cannot take (its input width is not a multiple of the
group size, or packing refuses it) keeps int8 weight-only, never a silent float fallback; the reason is
recorded. The output head of a causal LM (tied to the input embedding in SmolLM2) is not a body Linear:
it stays as it is (bf16) unless ``int8_embeddings`` follows in the chain.

The formats go to ``ctx.extra["layer_formats"]`` (the variant manifest) and a compact summary to the
footprint (MLflow). A variant with layer formats loads by assigning its saved tensors to an empty
skeleton (``tightfit.compress.variant``): the packed weights carry their format, so nothing is re-quantized.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tightfit.compress._torch import torchao_quantization
from tightfit.compress.lowbit.int8 import int8_rows
from tightfit.compress.registry import ApplyContext
from tightfit.errors import ConfigError

INT4_GROUP_SIZES = (32, 64, 128)
LAYER_FORMATS = "layer_formats"
"""``ctx.extra`` / manifest ``extra`` key: Linear name -> ``int4:g32`` | ``int8`` | ``bf16``."""
LAYER_REASONS = "layer_reasons"
"""``ctx.extra`` / manifest ``extra`` key: Linear name -> why it is not int4 (kernel shape, sensitivity)."""
INT8 = "int8"


def int4_format(group_size: int) -> str:
    return f"int4:g{group_size}"


def check_group_size(group_size: int) -> None:
    if group_size not in INT4_GROUP_SIZES:
        raise ConfigError(f"group_size must be one of {', '.join(map(str, INT4_GROUP_SIZES))}, got {group_size}")


def on_gpu(ctx: ApplyContext) -> bool:
    return str(ctx.device).startswith("cuda")


def head_names(model: Any) -> set[str]:
    """Names of the output head Linear(s) (``lm_head``): kept out of the 4-bit body."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {name for name, module in model.named_modules() if head is not None and module is head}


def body_linears(model: Any) -> dict[str, Any]:
    """Every ``nn.Linear`` except the output head, by qualified name, in model order."""
    import torch

    skip = head_names(model)
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in skip}


def kernel_refusal(module: Any, group_size: int) -> str | None:
    """Why the int4 kernel cannot take this Linear's shape, or None when it can."""
    if module.in_features % group_size:
        return f"in_features {module.in_features} is not a multiple of group_size {group_size}"
    return None


def to_compute_dtype(model: Any, ctx: ApplyContext) -> Any:
    """The model on the target device in bfloat16 (the dtype the int4 kernels compute in)."""
    import torch

    dtype = next(model.parameters()).dtype
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ConfigError(f"4-bit quantization needs float weights, found {dtype}; put it before other quantizers")
    return model.to(device=ctx.device, dtype=torch.bfloat16)


def int4_config(group_size: int, gpu: bool) -> Any:
    """torchao's int4 weight-only config for the device (tinygemm layout on CPU and CUDA)."""
    q = torchao_quantization()
    if gpu:
        return q.Int4WeightOnlyConfig(group_size=group_size)
    from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig

    return PrototypeInt4WeightOnlyConfig(group_size=group_size)


def is_packed(module: Any) -> bool:
    """The Linear's weight is a torchao tensor subclass (quantized), not a plain float tensor."""
    import torch

    return type(module.weight.data) is not torch.Tensor


def quantize_int8(model: Any, names: Iterable[str], gpu: bool = False) -> None:
    """int8 weight-only (one scale per output row) for the named Linears: ``Int8RowTensor`` on CPU (fast at
    batch 1), torchao's ``Int8WeightOnlyConfig`` on CUDA."""
    chosen = set(names)
    if not chosen:
        return
    if gpu:
        q = torchao_quantization()
        q.quantize_(model, q.Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: fqn in chosen)
        return
    modules = dict(model.named_modules())
    for name in chosen:
        modules[name].weight = int8_rows(modules[name].weight)


def quantize_int4(model: Any, names: Iterable[str], group_size: int, gpu: bool) -> set[str]:
    """int4 for the named Linears; returns the names the kernel actually packed."""
    chosen = set(names)
    if not chosen:
        return set()
    q = torchao_quantization()
    config = int4_config(group_size, gpu)
    try:
        q.quantize_(model, config, filter_fn=lambda m, fqn: fqn in chosen)
    except (RuntimeError, AssertionError, ValueError):  # one shape the packer refuses: go layer by layer
        modules = dict(model.named_modules())
        for name in sorted(chosen):
            if is_packed(modules[name]):
                continue
            try:
                q.quantize_(model, config, filter_fn=lambda m, fqn, target=name: fqn == target)
            except (RuntimeError, AssertionError, ValueError):
                continue  # left float here; apply_formats gives it int8 and records why
    modules = dict(model.named_modules())
    return {name for name in chosen if is_packed(modules[name])}


def plan_formats(
    linears: dict[str, Any], group_size: int, keep_int8: dict[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """(names to pack as int4, {name: reason} for the ones that keep int8) before any packing."""
    keep = dict(keep_int8 or {})
    int4 = []
    for name, module in linears.items():
        refusal = kernel_refusal(module, group_size)
        if refusal is not None:
            keep[name] = refusal
        elif name not in keep:
            int4.append(name)
    return int4, keep


def apply_formats(
    model: Any, ctx: ApplyContext, group_size: int, keep_int8: dict[str, str] | None = None,
    packed: set[str] | None = None,
) -> Any:
    """Pack the body Linears as int4 (those ``packed`` already are left alone), int8 for ``keep_int8``
    and for every shape the kernel refuses; record the formats in ``ctx.extra``."""
    linears = body_linears(model)
    int4, keep = plan_formats(linears, group_size, keep_int8)
    already = set(packed or ())
    done = already | quantize_int4(model, [n for n in int4 if n not in already], group_size, on_gpu(ctx))
    for name in int4:
        if name not in done:
            keep[name] = "the int4 kernel refused to pack it"
    quantize_int8(model, [n for n in keep if not is_packed(linears[n])], on_gpu(ctx))
    record_formats(model, ctx, {n: (INT8 if n in keep else int4_format(group_size)) for n in linears}, keep)
    return model


def record_formats(model: Any, ctx: ApplyContext, formats: dict[str, str], reasons: dict[str, str]) -> None:
    """Store per-layer formats (body Linears + the head's current format) and reasons in ``ctx.extra``."""
    out = dict(formats)
    for name in head_names(model):
        out[name] = weight_format(dict(model.named_modules())[name].weight)
    ctx.extra[LAYER_FORMATS] = out
    ctx.extra[LAYER_REASONS] = {n: r for n, r in reasons.items() if n in out}


def weight_format(weight: Any) -> str:
    """A short name of a weight's storage: ``bf16``, ``fp32``, ``int8``, ``int4``."""
    import torch

    if type(weight.data) is torch.Tensor:
        return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(weight.dtype, str(weight.dtype))
    kind = type(weight.data).__name__
    return "int4" if "Int4" in kind else INT8 if ("Int8" in kind or "Intx" in kind) else kind


def summarize_formats(formats: dict[str, str]) -> dict[str, Any]:
    """A compact summary for MLflow: the count of the commonest format and the names of the rest
    (a block whose Linears all share a format is named once, as ``model.layers.3.*``)."""
    if not formats:
        return {}
    counts: dict[str, int] = {}
    for fmt in formats.values():
        counts[fmt] = counts.get(fmt, 0) + 1
    common = max(counts, key=lambda f: counts[f])
    out: dict[str, Any] = {common: counts[common]}
    blocks: dict[str, set[str]] = {}
    for name, fmt in formats.items():
        blocks.setdefault(name.rsplit(".", 2)[0] if name.count(".") >= 2 else name, set()).add(fmt)
    for name, fmt in formats.items():
        if fmt == common:
            continue
        prefix = name.rsplit(".", 2)[0] if name.count(".") >= 2 else name
        label = f"{prefix}.*" if blocks[prefix] == {fmt} and prefix != name else name
        names = out.setdefault(fmt, [])
        if label not in names:
            names.append(label)
    return out


def int4_weight_fraction(model: Any) -> float:
    """Fraction of all Linear and embedding weight elements stored as int4 (tied weights once)."""
    import torch

    total = int4 = 0
    seen: set[int] = set()
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear | torch.nn.Embedding) or id(module.weight) in seen:
            continue
        seen.add(id(module.weight))
        total += module.weight.numel()
        if weight_format(module.weight) == "int4":
            int4 += module.weight.numel()
    return int4 / total if total else 0.0
