"""4-bit weight-only decoders for ONNX Runtime: ``MatMulNBits`` blocks with a float offset each.

ONNX Runtime's own 4-bit quantizer (RTN) stores an integer zero point per block, so its grid always holds
0 and cannot hold ``w = minimum + scale * q``, the affine grid of torchao's int4 and of llama.cpp's block
formats. On SmolLM2-135M, whose packaged weights come from a GGUF already made of such 32-weight blocks,
the affine grid reproduces every projection exactly, while ORT's integer grid leaves an 8 % weight error
and +27 % perplexity (measured). ORT accepts float zero points too, but runs them on a slow path (decode
about 10x slower, measured). So each block is stored as ``scale * (q - 8)`` (``MatMulNBits`` without zero
points, ORT's fast kernel) and its offset ``minimum + 8 * scale`` is added back by a side product costing
``1/block_size`` of the main one: ``x @ W = MatMulNBits(x) + (x @ E) @ offsets``, where ``E`` (``[K, blocks]``,
ones) sums the input over each block and ``offsets`` is ``[blocks, N]``.

The output head (a small LM's head is its embedding table, tied) goes to 8 bits: at 4 it alone costs
+14 % perplexity (measured). The embedding table goes to int8 rows with one scale each (three standard ops
after the Gather): ORT packs a ``Gather`` only in 4 bits (``GatherBlockQuantized``, ``embedding_bits=4``,
which needs opset 21: the graph is converted first), and a 4-bit table cost SmolLM2 2.5 points of zero-shot
accuracy (0.751 against 0.776 with the table as exported, measured).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tightfit.compress.ort.graph import quiet_ort
from tightfit.errors import UnsupportedError

MS_DOMAIN = "com.microsoft"
EMBEDDING_BLOCK = 16  # the embedding table's 4-bit blocks: perplexity 63.2 against 63.6 at 32, for 3.5 MB more


def _uses(model: Any) -> dict[str, int]:
    """How many node inputs read each name (so a rewrite can drop the initializers it left unread)."""
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    return uses


def _replace_nodes(model: Any, nodes: list[Any], uses: dict[str, int]) -> None:
    """Put ``nodes`` in place of the graph's nodes and drop the initializers no node reads any more."""
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    for init in [i for i in model.graph.initializer if uses.get(i.name, 1) == 0]:
        model.graph.initializer.remove(init)


def affine_blocks(weight: Any, block_size: int) -> tuple[Any, Any, Any]:
    """``weight`` (``[K, N]``, K a multiple of ``block_size``) as 4-bit blocks along K: (packed ``uint8
    [N, blocks, block_size/2]``, two values a byte with the even row in the low nibble; scales ``float32
    [N * blocks]``; offsets ``float32 [blocks, N]``) with ``w ~= scale * (q - 8) + offset``."""
    import numpy as np

    k, n = weight.shape
    blocks = weight.astype(np.float32).T.reshape(n, k // block_size, block_size)
    low, high = blocks.min(axis=-1, keepdims=True), blocks.max(axis=-1, keepdims=True)
    scale = (high - low) / 15.0
    safe = np.where(scale > 0, scale, 1.0)
    q = np.clip(np.rint((blocks - low) / safe), 0, 15).astype(np.uint8)
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
    offsets = (low + 8.0 * scale)[..., 0].T  # [blocks, N]
    return packed, scale.reshape(-1).astype(np.float32), np.ascontiguousarray(offsets, dtype=np.float32)


def pack_matmuls(model: Any, *, block_size: int, accuracy_level: int, exclude: set[str]) -> int:
    """Rewrite (in place) every MatMul with a constant ``[K, N]`` weight, K a multiple of ``block_size``
    and not in ``exclude``, into ``MatMulNBits`` + the block-offset side product; returns how many."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    inits = {init.name: init for init in model.graph.initializer}
    uses = _uses(model)
    nodes, packed, sums = [], 0, {}  # sums: one block-summing matrix per (K, block) shape
    summed: dict[str, str] = {}  # one block sum per input: q, k and v (gate and up) read the same x
    for node in model.graph.node:
        weight = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if weight is None or node.name in exclude or len(weight.dims) != 2 or weight.dims[0] % block_size:
            nodes.append(node)
            continue
        k, n = (int(d) for d in weight.dims)
        data, scales, offsets = affine_blocks(numpy_helper.to_array(weight), block_size)
        base = node.name.strip("/").replace("/", "_") or weight.name
        model.graph.initializer.extend([numpy_helper.from_array(data, f"{base}_Q4"),
                                        numpy_helper.from_array(scales, f"{base}_scales"),
                                        numpy_helper.from_array(offsets, f"{base}_offsets")])
        if k not in sums:
            sums[k] = f"block_sum_{k}x{k // block_size}"
            ones = np.kron(np.eye(k // block_size, dtype=np.float32), np.ones((block_size, 1), dtype=np.float32))
            model.graph.initializer.append(numpy_helper.from_array(ones, sums[k]))
        x, y = node.input[0], node.output[0]
        if x not in summed:
            summed[x] = f"{base}_blocksum"
            nodes.append(helper.make_node("MatMul", [x, sums[k]], [summed[x]], name=f"{node.name}_blocksum"))
        nodes += [
            helper.make_node("MatMulNBits", [x, f"{base}_Q4", f"{base}_scales"], [f"{base}_main"],
                             name=f"{node.name}_Q4", domain=MS_DOMAIN, K=k, N=n, bits=4, block_size=block_size,
                             accuracy_level=accuracy_level),
            helper.make_node("MatMul", [summed[x], f"{base}_offsets"], [f"{base}_offset"],
                             name=f"{node.name}_offset"),
            helper.make_node("Add", [f"{base}_main", f"{base}_offset"], [y], name=f"{node.name}_add"),
        ]
        uses[weight.name] -= 1
        packed += 1
    _replace_nodes(model, nodes, uses)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
    return packed


def pack_embeddings_int8(model: Any) -> int:
    """Rewrite (in place) every Gather from a 2-D float initializer (an embedding table) into int8 rows with
    one scale per row: ``Gather(int8 table) -> Cast -> Mul(Gather(scales))``; returns how many."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    inits = {init.name: init for init in model.graph.initializer}
    uses = _uses(model)
    nodes, packed = [], 0
    for node in model.graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if table is None or len(table.dims) != 2 or table.data_type != onnx.TensorProto.FLOAT or axis != 0:
            nodes.append(node)
            continue
        weights = numpy_helper.to_array(table)
        scale = np.abs(weights).max(axis=1, keepdims=True) / 127.0
        rows = np.clip(np.rint(weights / np.where(scale > 0, scale, 1.0)), -127, 127).astype(np.int8)
        base, ids, out = table.name.replace("/", "_"), node.input[1], node.output[0]
        model.graph.initializer.extend([numpy_helper.from_array(rows, f"{base}_int8"),
                                        numpy_helper.from_array(scale.astype(np.float32), f"{base}_row_scales")])
        nodes += [
            helper.make_node("Gather", [f"{base}_int8", ids], [f"{base}_rows"], name=f"{node.name}_int8"),
            helper.make_node("Cast", [f"{base}_rows"], [f"{base}_rows_f"], name=f"{node.name}_cast",
                             to=onnx.TensorProto.FLOAT),
            helper.make_node("Gather", [f"{base}_row_scales", ids], [f"{base}_scales"], name=f"{node.name}_scales"),
            helper.make_node("Mul", [f"{base}_rows_f", f"{base}_scales"], [out], name=f"{node.name}_dequant"),
        ]
        uses[table.name] -= 1
        packed += 1
    _replace_nodes(model, nodes, uses)
    return packed


def quantize_int4(src: Path, dst: Path, *, block_size: int, accuracy_level: int, head_bits: int,
                  embedding_bits: int) -> dict[str, Any]:
    """``onnx_int4``: every projection to 4-bit affine blocks, the output head to ``head_bits`` (4 or 8, ORT's
    quantizer, symmetric), and the embedding table to ``embedding_bits`` (8: int8 rows, one scale each;
    4: ORT's ``GatherBlockQuantized``; 32: as exported)."""
    import numpy as np
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    model = onnx.load(str(src))
    embeddings = embedding_bits == 4
    if embeddings and max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0) < 21:
        model = version_converter.convert_version(model, 21)
    outputs = {o.name for o in model.graph.output}
    heads = {n.name for n in model.graph.node if n.op_type == "MatMul" and n.output[0] in outputs}
    packed = pack_matmuls(model, block_size=block_size, accuracy_level=accuracy_level,
                          exclude=heads if head_bits != 4 else set())
    if packed == 0:
        raise UnsupportedError(f"onnx_int4 found no MatMul with a constant weight whose input width is a multiple "
                               f"of block_size={block_size}; use a smaller block_size")
    # ORT's quantizer packs every MatMul with a constant weight it is given: the block-offset side products
    # stay fp32 (they are small), so all but the head are excluded by name
    others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in heads]
    passes = [(head_bits, ("MatMul",), others)] if head_bits != 4 and heads else []
    tables = pack_embeddings_int8(model) if embedding_bits == 8 else 0
    if embeddings:
        passes.append((4, ("Gather",), []))  # ORT packs a Gather in 4 bits only
    with quiet_ort(), np.errstate(divide="ignore", invalid="ignore"):  # an all-zero block (a padding row) has
        for bits, ops, exclude in passes:  # scale 0, which the quantizer maps to 0
            size = EMBEDDING_BLOCK if ops == ("Gather",) else block_size
            config = DefaultWeightOnlyQuantConfig(block_size=size, is_symmetric=True, bits=bits,
                                                  accuracy_level=accuracy_level, op_types_to_quantize=ops,
                                                  quant_axes=(("MatMul", 0), ("Gather", 1)))
            quantizer = MatMulNBitsQuantizer(model, algo_config=config, nodes_to_exclude=exclude)
            quantizer.process()
            model = quantizer.model.model
    onnx.save(model, str(dst))
    kinds = [n.op_type for n in model.graph.node]
    return {"quantization": "int4_weight_only", "op": "MatMulNBits", "grid": "affine (float offset per block)",
            "block_size": block_size, "accuracy_level": accuracy_level, "head_bits": head_bits,
            "embedding_bits": embedding_bits, "matmuls_packed": kinds.count("MatMulNBits"),
            "gathers_packed": kinds.count("GatherBlockQuantized") + tables}
