"""Per-layer weight formats for 4-bit variants: which Linear is int4, which keeps int8, and why.

Every 4-bit method (round-to-nearest, AWQ, mixed precision) ends here: it decides a format per
``nn.Linear`` and ``apply_formats`` packs the weights. int4 is torchao's tinygemm layout on both devices:
``PrototypeInt4WeightOnlyConfig`` packs on CPU and the result runs as ``modules.Int4Linear`` (plain
buffers, PyTorch's own int4 kernel); on CUDA ``Int4WeightOnlyConfig`` tensors stay as torchao made them.
A Linear the int4 kernel cannot take (its input width is not a multiple of the group size, or packing
refuses it) keeps int8 weight-only, never a silent float fallback; the reason is recorded. The output
head of a causal LM (tied to the input embedding in SmolLM2) is not a body Linear: it stays as it is
(bf16) unless ``int8_embeddings`` follows in the chain.

The formats go to ``ctx.extra["layer_formats"]`` (the variant manifest) and a compact summary to the
footprint (MLflow). A variant with layer formats loads into an empty skeleton whose modules are rebuilt
from those formats (``skeleton_from_formats``) and takes its saved tensors by assignment: nothing is
re-quantized, and no torchao code runs in a CPU serving process.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tightfit.compress._torch import torchao_quantization
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
    from tightfit.compress.cast import cast_weights

    return cast_weights(model, torch.bfloat16, ctx.device)


def int4_config(group_size: int, gpu: bool) -> Any:
    """torchao's int4 weight-only config for the device (tinygemm layout on CPU and CUDA)."""
    q = torchao_quantization()
    if gpu:
        return q.Int4WeightOnlyConfig(group_size=group_size)
    from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig

    return PrototypeInt4WeightOnlyConfig(group_size=group_size)


def is_packed(module: Any) -> bool:
    """The Linear is quantized: a packed module, or a weight that is a torchao tensor subclass."""
    import torch

    if type(module).__name__ in PACKED_MODULES:
        return True
    return type(module.weight.data) is not torch.Tensor


PACKED_MODULES = ("Int4Linear", "Int8Linear", "Int8Embedding")


def quantize_int8(model: Any, names: Iterable[str], gpu: bool = False) -> None:
    """int8 weight-only (one scale per output row) for the named Linears: ``Int8Linear`` on CPU (fast at
    batch 1), torchao's ``Int8WeightOnlyConfig`` on CUDA."""
    chosen = set(names)
    if not chosen:
        return
    if gpu:
        q = torchao_quantization()
        q.quantize_(model, q.Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: fqn in chosen)
        return
    from tightfit.compress.lowbit.modules import Int8Linear, set_module

    for name in chosen:
        set_module(model, name, Int8Linear.from_float(model.get_submodule(name)))


def int4_modules(model: Any, names: Iterable[str]) -> None:
    """Swap CPU Linears whose weights torchao packed (``Int4OpaqueTensor``) for ``Int4Linear`` modules."""
    from tightfit.compress.lowbit.modules import Int4Linear, set_module

    for name in names:
        set_module(model, name, Int4Linear.from_packed(model.get_submodule(name)))


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
    and for every shape the kernel refuses; on CPU run them as packed modules; record the formats."""
    linears = body_linears(model)
    int4, keep = plan_formats(linears, group_size, keep_int8)
    already = set(packed or ())
    done = already | quantize_int4(model, [n for n in int4 if n not in already], group_size, on_gpu(ctx))
    for name in int4:
        if name not in done:
            keep[name] = "the int4 kernel refused to pack it"
    formats = {n: INT8 for n in keep}
    for name in done:
        scaled = getattr(linears[name].weight.data, "act_pre_scale", None) is not None
        formats[name] = int4_format(group_size) + (":awq" if scaled else "")
    if not on_gpu(ctx):
        int4_modules(model, sorted(done))
    quantize_int8(model, sorted(keep), on_gpu(ctx))
    record_formats(model, ctx, {n: formats[n] for n in linears}, keep)
    return model


def record_formats(model: Any, ctx: ApplyContext, formats: dict[str, str], reasons: dict[str, str]) -> None:
    """Store per-layer formats (body Linears + the head's current format) and reasons in ``ctx.extra``."""
    out = dict(formats)
    for name in head_names(model):
        out.setdefault(name, module_format(model.get_submodule(name)))
    ctx.extra[LAYER_FORMATS] = out
    ctx.extra[LAYER_REASONS] = {n: r for n, r in reasons.items() if n in out}


def module_format(module: Any) -> str:
    """A short name of how a Linear/Embedding stores its weight: ``bf16``, ``fp32``, ``int8``, ``int4``."""
    import torch

    kind = type(module).__name__
    if kind == "Int4Linear":
        return int4_format(module.group_size)
    if kind in ("Int8Linear", "Int8Embedding"):
        return INT8
    weight = module.weight
    if type(weight.data) is torch.Tensor:
        return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(weight.dtype, str(weight.dtype))
    name = type(weight.data).__name__
    return "int4" if "Int4" in name else INT8 if ("Int8" in name or "Intx" in name) else name


def int8_tied_head(model: Any, gpu: bool = False) -> dict[str, str]:
    """The input embedding as ``Int8Embedding`` and the output head tied to it as an ``Int8Linear`` on the
    same buffers (one int8 table serves both); an untied head gets its own. Returns {name: format}."""
    from tightfit.compress.lowbit.modules import Int8Embedding, Int8Linear, set_module, tied_head

    embedding = model.get_input_embeddings()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if embedding is None or not hasattr(embedding, "weight"):
        raise ConfigError("int8_embeddings: this model has no input embedding table to quantize")
    tied = head is not None and head.weight is embedding.weight
    names = {id(m): n for n, m in model.named_modules()}
    packed = Int8Embedding.from_float(embedding)
    set_module(model, names[id(embedding)], packed)
    out = {names[id(embedding)]: "int8 (tied)" if tied else INT8}
    if head is not None:
        set_module(model, names[id(head)], tied_head(packed) if tied else Int8Linear.from_float(head))
        out[names[id(head)]] = out[names[id(embedding)]]
    return out


def skeleton_from_formats(model: Any, formats: dict[str, str]) -> Any:
    """Rebuild the packed modules a CPU variant recorded (on the meta device) so its saved buffers load
    by assignment; a tied head gets its own buffers here and the loaded table is shared again on load."""
    from tightfit.compress.lowbit.modules import set_module, skeleton_module

    for name, fmt in formats.items():
        module = skeleton_module(fmt, model.get_submodule(name))
        if module is not None:
            set_module(model, name, module)
    return model


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
    """Fraction of all Linear and embedding weight elements stored as int4 (a tied table once)."""
    total = int4 = 0
    seen: set[int] = set()
    for module in model.modules():
        count = logical_size(module)
        if count is None:
            continue
        # shared storage, not object identity: a reloaded tied head is a new Parameter over the same table
        key = (module.qdata if hasattr(module, "qdata") else module.weight).data_ptr()
        if key in seen:
            continue
        seen.add(key)
        total += count
        if module_format(module).startswith("int4"):
            int4 += count
    return int4 / total if total else 0.0


def logical_size(module: Any) -> int | None:
    """Weight elements of a Linear/Embedding (packed or not); None for other modules."""
    import torch

    kind = type(module).__name__
    if kind in ("Int4Linear", "Int8Linear"):
        return int(module.in_features * module.out_features)
    if kind == "Int8Embedding":
        return int(module.num_embeddings * module.embedding_dim)
    if isinstance(module, torch.nn.Linear | torch.nn.Embedding):
        return int(module.weight.numel())
    return None
