"""Torch -> ONNX: export a variant's torch model with dynamic batch and sequence axes (opset 17, TorchScript
exporter, ``dynamo=False``), after checking that every module can be exported.

The exported graph takes ``input_ids`` and ``attention_mask`` (int64, ``[batch, sequence]``) and returns
``logits``. A decoder's graph also carries its KV cache, as ONNX Runtime's own generation exports do: it takes
``position_ids`` (so left-padded prompts keep their positions), ``logits_to_keep`` (the last positions whose
logits are computed: 1 while generating, where the head over the whole vocabulary would dominate) and
``past.{i}.key``/``past.{i}.value`` per layer (``[batch, kv_heads, past, head_dim]``, empty for a prompt),
and returns ``present.{i}.key``/``present.{i}.value`` beside the logits, so each new token runs one position.
Attention runs in its plain ("eager") form while exporting, the pattern ONNX Runtime's
transformer fusions recognise; the weights are untouched. A module the exporter cannot take (torch.ao
quantized layers, torchao tensor subclasses, low-precision weights) is refused up front by name, and an
export that fails inside a module names the innermost module that was running.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tightfit.errors import UnsupportedError

OPSET = 17
INPUT_NAMES = ("input_ids", "attention_mask")
DECODER_INPUT_NAMES = ("input_ids", "attention_mask", "position_ids", "logits_to_keep")
OUTPUT_NAME = "logits"
PAST, PRESENT = "past", "present"  # KV-cache inputs and outputs: past.{layer}.key, present.{layer}.value, ...
QUANTIZED_MODULE_PREFIXES = ("torch.ao.nn.quantized", "torch.nn.quantized", "torch.ao.nn.intrinsic.quantized")
RUNTIME_FIX = "quantize in the runtime step instead (e.g. '...|onnx_int8_dynamic' in place of 'int8_dynamic|onnx')"


@dataclass
class OnnxExport:
    """What an ONNX runtime step hands to ``save_variant``: the graph file and the torch model it came from
    (for the config, the pruned shapes and the vocabulary rows the manifest records)."""

    onnx_path: Path
    source: Any  # the torch model that was exported
    kind: str
    info: dict[str, Any] = field(default_factory=dict)
    workdir: Any = None  # a TemporaryDirectory holding onnx_path, removed once saved

    @property
    def config(self) -> Any:
        return self.source.config

    def eval(self) -> OnnxExport:
        """Already a graph: nothing to switch (``apply_chain`` calls ``eval()`` on what a chain returns)."""
        return self

    def state_dict(self) -> dict[str, Any]:
        return dict(self.source.state_dict())


def unexportable_module(model: Any) -> tuple[str, str] | None:
    """(module name, why) of the first module the ONNX exporter cannot take, or None when all can."""
    import torch

    for name, module in model.named_modules():
        kind = type(module)
        if kind.__module__.startswith(QUANTIZED_MODULE_PREFIXES):
            return name or "<model>", f"{kind.__module__}.{kind.__name__} (a torch.ao quantized layer)"
        for pname, param in module.named_parameters(recurse=False):
            if type(param) not in (torch.Tensor, torch.nn.Parameter) or type(param.data) is not torch.Tensor:
                return name or "<model>", f"its {pname!r} is a {type(param.data).__name__} (a torchao tensor subclass)"
            if param.dtype not in (torch.float32, torch.float64):
                return name or "<model>", f"its {pname!r} is {param.dtype} (export runs in fp32)"
    return None


def check_exportable(model: Any) -> None:
    """Raise ``UnsupportedError`` naming the first module ONNX export cannot take."""
    found = unexportable_module(model)
    if found is not None:
        name, why = found
        raise UnsupportedError(f"cannot export module {name!r} to ONNX: {why}; {RUNTIME_FIX}")


@contextlib.contextmanager
def _module_trace(model: Any) -> Iterator[list[str]]:
    """Forward hooks that keep the stack of running module names (to name the one an export fails in)."""
    stack: list[str] = []
    last: list[str] = []
    handles = []

    def enter(name: str) -> Any:
        def hook(_module: Any, _args: Any) -> None:
            stack.append(name)
            last[:] = list(stack)

        return hook

    def leave(_module: Any, _args: Any, _out: Any) -> None:
        if stack:
            stack.pop()

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(enter(name)))
            handles.append(module.register_forward_hook(leave))
    try:
        yield last
    finally:
        for handle in handles:
            handle.remove()


def kv_shape(config: Any) -> dict[str, int]:
    """Layers, KV heads and head width of a decoder's cache (grouped-query attention has fewer KV heads)."""
    heads = int(config.num_attention_heads)
    return {"layers": int(config.num_hidden_layers), "kv_heads": int(getattr(config, "num_key_value_heads", heads)),
            "head_dim": int(getattr(config, "head_dim", None) or config.hidden_size // heads)}


def cache_names(layers: int) -> tuple[list[str], list[str]]:
    """The graph's KV-cache input and output names, layer by layer (key, then value)."""
    pairs = [(i, part) for i in range(layers) for part in ("key", "value")]
    return [f"{PAST}.{i}.{part}" for i, part in pairs], [f"{PRESENT}.{i}.{part}" for i, part in pairs]


def _logits_only(model: Any) -> Any:
    """An encoder as ``(input_ids, attention_mask) -> logits``."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits

    return Logits(model)


def _decoder_with_cache(model: Any, layers: int) -> Any:
    """A decoder as ``(input_ids, attention_mask, position_ids, logits_to_keep, *past) -> (logits, *present)``;
    the head runs on the last ``logits_to_keep`` positions only (a traced ``index_select``, so it stays an input)."""
    import torch
    from transformers import DynamicCache

    class DecoderWithCache(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, position_ids: Any, logits_to_keep: Any,
                    *past: Any) -> tuple[Any, ...]:
            cache = DynamicCache()
            for i in range(layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.inner.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   past_key_values=cache, use_cache=True)
            hidden = out.last_hidden_state
            length = hidden.shape[1]
            hidden = hidden.index_select(1, torch.arange(length - logits_to_keep, length))
            present = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
            return (self.inner.lm_head(hidden), *present)

    return DecoderWithCache(model)


def source_params(model: Any) -> list[int]:
    """[total, non-zero] floating-point parameters of the (plain fp32) torch model being exported."""
    total = nonzero = 0
    for tensor in model.state_dict().values():
        if tensor.dtype.is_floating_point:
            total += int(tensor.numel())
            nonzero += int((tensor != 0).sum())
    return [total, nonzero]


def export_onnx(model: Any, tokenizer: Any, path: Path, *, kind: str) -> dict[str, Any]:
    """Export ``model`` to ``path`` (dynamic batch and sequence axes); returns what the manifest records."""
    import torch

    check_exportable(model)
    model.eval()
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")  # the attention pattern ORT's fusions match; same maths
    texts = ["an example input for tracing the graph", "a second, somewhat longer example input text"]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    mask = enc["attention_mask"].to(torch.int64)
    args: tuple[Any, ...] = (enc["input_ids"].to(torch.int64), mask)
    names, outputs = list(INPUT_NAMES), [OUTPUT_NAME]
    axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "sequence"} for n in names}
    axes[OUTPUT_NAME] = {0: "batch"}
    info: dict[str, Any] = {}
    if kind == "causal_lm":  # traced with a cache of 3 past positions, so every length stays symbolic
        kv = kv_shape(model.config)
        past, present = cache_names(kv["layers"])
        past_len, batch = 3, mask.shape[0]
        full_mask = torch.cat([torch.ones(batch, past_len, dtype=torch.int64), mask], dim=1)
        positions = (full_mask.cumsum(-1) - 1).clamp(min=0)[:, past_len:]
        cache = [torch.zeros(batch, kv["kv_heads"], past_len, kv["head_dim"]) for _ in past]
        args = (args[0], full_mask, positions, torch.tensor(2), *cache)
        names, outputs = [*DECODER_INPUT_NAMES, *past], [OUTPUT_NAME, *present]
        axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total"},
                "position_ids": {0: "batch", 1: "sequence"}, OUTPUT_NAME: {0: "batch", 1: "kept"},
                **{n: {0: "batch", 2: "past"} for n in past}, **{n: {0: "batch", 2: "total"} for n in present}}
        info["kv_cache"] = kv
        wrapped = _decoder_with_cache(model, kv["layers"])
    else:
        wrapped = _logits_only(model)
    with _module_trace(model) as running, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer notes about Python values recorded as constants
        try:
            torch.onnx.export(
                wrapped, args, str(path), input_names=names, output_names=outputs,
                dynamic_axes=axes, opset_version=OPSET, dynamo=False, do_constant_folding=True,
            )
        except Exception as exc:  # the exporter raises many types; name the module it failed in
            where = f"module {running[-1]!r}" if running else "the model"
            raise UnsupportedError(
                f"cannot export {where} ({type(model).__name__}) to ONNX: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:300]}"
            ) from None
    return {"opset": OPSET, "inputs": names[: len(DECODER_INPUT_NAMES) if kind == "causal_lm" else None],
            "outputs": [OUTPUT_NAME], "exporter": "torchscript", "source_params": source_params(model), **info}
