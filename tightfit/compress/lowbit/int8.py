"""int8 weights that stay fast on CPU: ``Int8RowTensor`` (int8 rows + one scale per row).

torchao's int8 weight-only tensors convert the whole weight to float on every call, so a batch-1 decode
step through them is slower than fp32. ``Int8RowTensor`` runs PyTorch's int8 weight-only kernel
(``_weight_int8pack_mm``) for a few rows of activations (decoding) and one dequantized GEMM for many
(prefill, scoring); an embedding lookup gathers and scales only the rows it needs. It holds the Linears a
4-bit variant keeps at int8 (shapes the int4 kernel refuses, sensitive layers) and a causal LM's tied
input embedding + output head: SmolLM2 ties ``lm_head`` to ``embed_tokens`` (49152 x 576, a fifth of the
parameters), and one int8 table serves both, so the tie and its bytes stay shared. It saves and loads
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from tightfit.errors import ConfigError


def _tensor_class() -> Any:
    """``Int8RowTensor``, defined on first use (it subclasses torchao's base tensor: a heavy import)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    import torch
    from torchao.utils import TorchAOBaseTensor

    aten = torch.ops.aten

    class Int8RowTensor(TorchAOBaseTensor):
        """A 2-D weight as int8 rows (``qdata``) and one float scale per row (``scale``)."""

        tensor_data_names: ClassVar[list[str]] = ["qdata", "scale"]
        tensor_attribute_names: ClassVar[list[str]] = ["dtype"]

        def __new__(cls, qdata: Any, scale: Any, dtype: Any) -> Any:
            return torch.Tensor._make_wrapper_subclass(  # type: ignore[attr-defined]
                cls, qdata.shape, dtype=dtype, device=qdata.device, requires_grad=False
            )

        def __init__(self, qdata: Any, scale: Any, dtype: Any) -> None:
            super().__init__()
            self.qdata = qdata
            self.scale = scale

        @classmethod
        def from_float(cls, weight: Any) -> Any:
            w = weight.detach().float()
            scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-8)
            qdata = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
            return cls(qdata, scale.to(weight.dtype), weight.dtype)

        def dequantize(self) -> Any:
            return (self.qdata.to(self.scale.dtype) * self.scale[:, None]).to(self.dtype)

    implements = Int8RowTensor.implements
    implements_torch_function = Int8RowTensor.implements_torch_function

    @implements(aten.linear.default)
    @implements_torch_function(torch.nn.functional.linear)
    def _linear(func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        x, w = args[0], args[1]
        bias = args[2] if len(args) > 2 else None
        flat = x.reshape(-1, x.shape[-1]).to(w.scale.dtype).contiguous()
        if flat.shape[0] > GEMM_ROWS:  # prefill: one dequantized GEMM beats the row-wise int8 kernel
            out = torch.nn.functional.linear(flat, w.dequantize().to(flat.dtype))
        else:
            out = torch._weight_int8pack_mm(flat, w.qdata, w.scale)
        out = out.reshape(*x.shape[:-1], w.qdata.shape[0]).to(x.dtype)
        return out + bias if bias is not None else out

    @implements(aten.embedding.default)
    @implements_torch_function(torch.nn.functional.embedding)
    def _embedding(func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        ids, w = args[0], args[1]
        rows = w.qdata[ids].to(w.scale.dtype) * w.scale[ids].unsqueeze(-1)
        return rows.to(w.dtype)

    Int8RowTensor.__module__ = __name__
    Int8RowTensor.__qualname__ = "Int8RowTensor"
    torch.serialization.add_safe_globals([Int8RowTensor])
    globals()["Int8RowTensor"] = Int8RowTensor  # pickles by module + name
    _CLASS = Int8RowTensor
    return Int8RowTensor


_CLASS: Any = None
GEMM_ROWS = 16
"""Above this many rows (tokens) the head dequantizes once and runs a float GEMM (prefill, scoring)."""


def register_safe_globals() -> None:
    """Make ``Int8RowTensor`` loadable with ``torch.load(weights_only=True)``."""
    _tensor_class()


def int8_rows(weight: Any) -> Any:
    """A frozen parameter holding ``weight`` as an ``Int8RowTensor``."""
    import torch

    return torch.nn.Parameter(_tensor_class().from_float(weight), requires_grad=False)


def int8_tied_head(model: Any) -> dict[str, str]:
    """Replace the input embedding (and the output head tied to it) by one ``Int8RowTensor``.

    An untied head gets its own int8 table. Returns {module name: format} for the manifest."""
    embedding = model.get_input_embeddings()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if embedding is None:
        raise ConfigError("int8_embeddings: this model has no input embedding table")
    tied = head is not None and head.weight is embedding.weight
    embedding.weight = int8_rows(embedding.weight)
    if head is not None:
        head.weight = embedding.weight if tied else int8_rows(head.weight)
    names = {id(embedding): "int8 (tied)" if tied else "int8"}
    if head is not None:
        names[id(head)] = names[id(embedding)]
    return {name: names[id(m)] for name, m in model.named_modules() if id(m) in names}
