"""Packed CPU modules with plain-tensor buffers: what a 4-bit CPU variant runs, saves and loads.

- ``Int4Linear``: torchao's CPU int4 layout (tinygemm: ``qdata`` (out, in/2) uint8, ``scale_and_zero``
  (in/group, out, 2) bf16, as ``Int4OpaqueTensor`` packs it) run by PyTorch's own
  ``aten._weight_int4pack_mm_for_cpu``; ``act_scale`` multiplies the input first (AWQ's inverse scale).
- ``Int8Linear``: int8 rows + one scale per row; PyTorch's ``_weight_int8pack_mm`` for a few rows of
  activations (decoding), one dequantized GEMM for many (prefill, scoring). torchao's int8 weight-only
  tensors convert the whole weight to float on every call, which makes batch-1 decode slower than fp32.
- ``Int8Embedding``: the same int8 rows for a lookup that gathers and scales only the rows it needs; a
  tied output head is an ``Int8Linear`` holding the very same buffers, so the tie and its bytes stay shared.

torchao quantizes (round to nearest, AWQ); these modules only run the result. Their buffers are plain
tensors, so the variant is safetensors (no pickle) and loading or running it needs no torchao code
(transformers' model classes still import torchao when it is installed: about 11 MiB more here).
``skeleton_module`` rebuilds one on the meta device from its recorded format, for loading by assignment.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

GEMM_ROWS = 16
"""Above this many activation rows (tokens) int8 weights are dequantized once for a float GEMM."""
INT8PACK_K_MULTIPLE = 16
"""``_weight_int8pack_mm`` on CPU (torch 2.13) needs an input width that is a multiple of 16: at 24 or 40 it
crashes the process with a segmentation fault (4 rows) or returns NaN (1 row). Other widths (a
structurally pruned layer) take the dequantized GEMM."""


class Int4Linear(nn.Module):
    """``y = x @ W^T (+ b)`` with W in torchao's CPU int4 (tinygemm) layout, grouped along the input."""

    qdata: torch.Tensor
    scale_and_zero: torch.Tensor
    act_scale: torch.Tensor | None

    def __init__(self, in_features: int, out_features: int, group_size: int, *, bias: bool = False,
                 act_scale: bool = False, device: Any = None, dtype: Any = torch.bfloat16) -> None:
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("qdata", torch.empty(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.register_buffer("scale_and_zero", torch.empty(in_features // group_size, out_features, 2, dtype=dtype,
                                                           device=device))
        self.register_buffer("act_scale", torch.empty(in_features, dtype=dtype, device=device) if act_scale else None)
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device)) if bias else None

    @classmethod
    def from_packed(cls, linear: Any) -> Int4Linear:
        """Take over a Linear whose weight torchao packed as ``Int4OpaqueTensor`` (AWQ scale included)."""
        w = linear.weight.data
        out = cls(linear.in_features, linear.out_features, int(w.block_size[-1]), bias=linear.bias is not None,
                  act_scale=w.act_pre_scale is not None, device="meta")
        out.qdata, out.scale_and_zero = w.qdata, w.scale_and_zero
        if w.act_pre_scale is not None:
            out.act_scale = w.act_pre_scale.reshape(-1).to(w.scale_and_zero.dtype)
        if linear.bias is not None:
            out.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_scale is not None:
            x = x * self.act_scale
        flat = x.reshape(-1, self.in_features).to(self.scale_and_zero.dtype).contiguous()
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.qdata, self.group_size, self.scale_and_zero)
        y = y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int4 group {self.group_size}, awq={self.act_scale is not None}"


def _int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-8)
    qdata = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return qdata, scale.to(weight.dtype if weight.dtype != torch.float32 else torch.bfloat16)


class Int8Linear(nn.Module):
    """``y = x @ W^T (+ b)`` with W as int8 rows and one scale per output row."""

    qdata: torch.Tensor
    scale: torch.Tensor

    def __init__(self, in_features: int, out_features: int, *, bias: bool = False, device: Any = None,
                 dtype: Any = torch.bfloat16) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qdata", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.empty(out_features, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device)) if bias else None

    @classmethod
    def from_float(cls, linear: Any) -> Int8Linear:
        out = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        out.qdata, out.scale = _int8_rows(linear.weight)
        if linear.bias is not None:
            out.bias = nn.Parameter(linear.bias.detach().to(out.scale.dtype), requires_grad=False)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(self.scale.dtype).contiguous()
        if flat.shape[0] > GEMM_ROWS or self.in_features % INT8PACK_K_MULTIPLE:
            # prefill: one dequantized GEMM beats the row-wise int8 kernel (which also refuses odd widths)
            y = torch.nn.functional.linear(flat, self.qdata.to(flat.dtype) * self.scale[:, None])
        else:  # 64-byte aligned: a table mapped from safetensors is aligned once at load (compress.variant)
            y = torch._weight_int8pack_mm(flat, self.qdata, self.scale)
        y = y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int8 rows"


class Int8Embedding(nn.Module):
    """An embedding table as int8 rows + a scale per row; a lookup dequantizes only the rows it gathers."""

    qdata: torch.Tensor
    scale: torch.Tensor

    def __init__(self, num_embeddings: int, embedding_dim: int, *, padding_idx: int | None = None,
                 device: Any = None, dtype: Any = torch.bfloat16) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.register_buffer("qdata", torch.empty(num_embeddings, embedding_dim, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.empty(num_embeddings, dtype=dtype, device=device))

    @classmethod
    def from_float(cls, embedding: Any) -> Int8Embedding:
        out = cls(embedding.num_embeddings, embedding.embedding_dim, padding_idx=embedding.padding_idx, device="meta")
        out.qdata, out.scale = _int8_rows(embedding.weight)
        return out

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.qdata[ids].to(self.scale.dtype) * self.scale[ids].unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 rows"


def tied_head(embedding: Int8Embedding) -> Int8Linear:
    """An output head that reads the embedding's own int8 rows (one table, two uses)."""
    head = Int8Linear(embedding.embedding_dim, embedding.num_embeddings, device="meta")
    head.qdata, head.scale = embedding.qdata, embedding.scale
    return head


def skeleton_module(fmt: str, like: Any) -> nn.Module | None:
    """An empty (meta) module for a recorded format (``int4:g32``, ``int4:g32:awq``, ``int8``,
    ``int8 (tied)``) shaped like ``like``; None for a float format (the module stays as it is)."""
    if fmt.startswith("int4:g"):
        group = int(fmt.split(":")[1][1:])
        return Int4Linear(like.in_features, like.out_features, group, bias=like.bias is not None,
                          act_scale=fmt.endswith(":awq"), device="meta")
    if fmt.startswith("int8") and isinstance(like, nn.Embedding):
        return Int8Embedding(like.num_embeddings, like.embedding_dim, padding_idx=like.padding_idx, device="meta")
    if fmt.startswith("int8"):
        return Int8Linear(like.in_features, like.out_features, bias=like.bias is not None, device="meta")
    return None


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule called ``name``."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)
