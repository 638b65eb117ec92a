"""Torch -> ONNX: export a variant's torch model with dynamic batch and sequence axes (opset 17, TorchScript
exporter, ``dynamo=False``), after checking that every module can be exported.

The exported graph takes ``input_ids`` and ``attention_mask`` (int64, ``[batch, sequence]``; decoders also
``position_ids``, so left-padded prompts keep their positions) and returns ``logits``. Attention runs in its plain ("eager") form while exporting, the pattern ONNX Runtime's
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
DECODER_INPUT_NAMES = ("input_ids", "attention_mask", "position_ids")
OUTPUT_NAME = "logits"
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


def _logits_only(model: Any, kind: str) -> Any:
    """``model`` as ``(input_ids, attention_mask) -> logits`` (a decoder without its KV cache)."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits

    class DecoderLogits(Logits):
        def forward(self, input_ids: Any, attention_mask: Any, position_ids: Any) -> Any:  # type: ignore[override]
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              use_cache=False).logits

    return DecoderLogits(model) if kind == "causal_lm" else Logits(model)


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
    names = DECODER_INPUT_NAMES if kind == "causal_lm" else INPUT_NAMES
    if kind == "causal_lm":
        args = (*args, (mask.cumsum(-1) - 1).clamp(min=0))
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes[OUTPUT_NAME] = {0: "batch", 1: "sequence"} if kind == "causal_lm" else {0: "batch"}
    wrapped = _logits_only(model, kind)
    with _module_trace(model) as running, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer notes about Python values recorded as constants
        try:
            torch.onnx.export(
                wrapped, args, str(path), input_names=list(names), output_names=[OUTPUT_NAME],
                dynamic_axes=axes, opset_version=OPSET, dynamo=False, do_constant_folding=True,
            )
        except Exception as exc:  # the exporter raises many types; name the module it failed in
            where = f"module {running[-1]!r}" if running else "the model"
            raise UnsupportedError(
                f"cannot export {where} ({type(model).__name__}) to ONNX: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:300]}"
            ) from None
    return {"opset": OPSET, "inputs": list(names), "outputs": [OUTPUT_NAME], "exporter": "torchscript",
            "source_params": source_params(model)}
