"""Shapes of BERT-style encoder layers: read them from a pruned model, re-create them on a fresh one.

A structurally pruned variant has different head and FFN counts per layer, so plain ``from_pretrained``
cannot rebuild it. The variant manifest records ``[{"heads": h, "ffn": f}, ...]`` per layer and
``apply_layer_shapes`` resizes a fresh model's Linear layers to match before the weights are loaded.
"""

from __future__ import annotations

from typing import Any


def encoder_layers(model: Any) -> Any | None:
    """The encoder's layer list of a BERT-like model, or None for other architectures."""
    base = getattr(model, "base_model", model)
    encoder = getattr(base, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if layers is None or not len(layers) or not hasattr(layers[0], "attention"):
        return None
    return layers


def head_size(layer: Any) -> int:
    return int(layer.attention.self.attention_head_size)


def read_layer_shapes(model: Any) -> list[dict[str, int]] | None:
    """Per-layer ``heads`` and ``ffn`` counts of a BERT-like encoder (None for other models)."""
    layers = encoder_layers(model)
    if layers is None:
        return None
    shapes = []
    for layer in layers:
        q = layer.attention.self.query
        shapes.append({"heads": int(q.out_features) // head_size(layer), "ffn": int(layer.intermediate.dense.out_features)})
    return shapes


def set_attention_heads(layer: Any, heads: int) -> None:
    """Keep the attention module's bookkeeping in step with its (pruned) projections."""
    attn = layer.attention.self
    attn.num_attention_heads = heads
    attn.all_head_size = heads * attn.attention_head_size


def apply_layer_shapes(model: Any, shapes: list[dict[str, int]]) -> None:
    """Resize a fresh model's attention and FFN projections to the recorded per-layer shapes."""
    import torch

    layers = encoder_layers(model)
    if layers is None or len(layers) != len(shapes):
        found = None if layers is None else len(layers)
        raise ValueError(f"model has {found} encoder layers but the manifest records {len(shapes)}")
    for layer, shape in zip(layers, shapes, strict=True):
        attn = layer.attention.self
        hidden = attn.query.in_features
        width = shape["heads"] * head_size(layer)

        def linear(n_in: int, n_out: int, like: Any) -> Any:
            return torch.nn.Linear(n_in, n_out, bias=like.bias is not None, dtype=like.weight.dtype)

        attn.query = linear(hidden, width, attn.query)
        attn.key = linear(hidden, width, attn.key)
        attn.value = linear(hidden, width, attn.value)
        out = layer.attention.output.dense
        layer.attention.output.dense = linear(width, out.out_features, out)
        set_attention_heads(layer, shape["heads"])
        inter = layer.intermediate.dense
        layer.intermediate.dense = linear(inter.in_features, shape["ffn"], inter)
        down = layer.output.dense
        layer.output.dense = linear(shape["ffn"], down.out_features, down)
