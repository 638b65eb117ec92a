"""``onnx_int4``'s affine 4-bit blocks (``tightfit.compress.ort.int4``): weights that already sit on a 4-bit
grid with a float minimum per block (a GGUF's blocks, SmolLM2's packaged weights) come back exactly through
ONNX Runtime's fast ``MatMulNBits`` kernel, where ORT's own integer-zero-point quantizer cannot hold them."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from tightfit.compress.ort.int4 import affine_blocks, quantize_int4

K, N, BLOCK = 128, 48, 32


def _grid_weight(rng: np.random.Generator) -> np.ndarray:
    """``[K, N]`` weights of the form ``minimum + scale * q`` per block of 32 along K (q in 0..15, both ends
    used: a block's grid spans its own minimum and maximum, as a GGUF's 4-bit blocks are made)."""
    q = rng.integers(0, 16, size=(K // BLOCK, BLOCK, N)).astype(np.float32)
    q[:, 0], q[:, -1] = 0, 15
    scale = rng.uniform(0.002, 0.02, size=(K // BLOCK, 1, N)).astype(np.float32)
    minimum = rng.uniform(-0.15, -0.01, size=(K // BLOCK, 1, N)).astype(np.float32)
    return (minimum + scale * q).reshape(K, N)


def _matmul_model(weight: np.ndarray, path) -> None:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")], "proj",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", N])],
        [numpy_helper.from_array(weight, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _run(path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_affine_blocks_reconstruct_a_grid_weight_exactly():
    weight = _grid_weight(np.random.default_rng(0))
    packed, scales, offsets = affine_blocks(weight, BLOCK)
    assert packed.shape == (N, K // BLOCK, BLOCK // 2) and packed.dtype == np.uint8
    q = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(N, K // BLOCK, BLOCK).astype(np.float32)
    rebuilt = scales.reshape(N, K // BLOCK, 1) * (q - 8) + offsets.T[..., None]
    np.testing.assert_allclose(rebuilt.reshape(N, K).T, weight, atol=1e-6)


def test_the_packed_graph_matches_on_a_grid_weight_where_ort_rtn_does_not(tmp_path):
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    rng = np.random.default_rng(1)
    _matmul_model(_grid_weight(rng), tmp_path / "fp32.onnx")
    x = rng.standard_normal((2, 5, K)).astype(np.float32)
    expected = _run(tmp_path / "fp32.onnx", x)
    info = quantize_int4(tmp_path / "fp32.onnx", tmp_path / "int4.onnx", block_size=BLOCK, accuracy_level=0,
                         head_bits=4, embedding_bits=32)
    assert info["matmuls_packed"] == 1
    assert "MatMulNBits" in {n.op_type for n in onnx.load(str(tmp_path / "int4.onnx")).graph.node}
    error = np.abs(_run(tmp_path / "int4.onnx", x) - expected).max() / np.abs(expected).max()
    assert error < 1e-5

    quantizer = MatMulNBitsQuantizer(onnx.load(str(tmp_path / "fp32.onnx")), algo_config=DefaultWeightOnlyQuantConfig(
        block_size=BLOCK, is_symmetric=False, accuracy_level=0))
    quantizer.process()
    quantizer.model.save_model_to_file(str(tmp_path / "rtn.onnx"))
    rtn_error = np.abs(_run(tmp_path / "rtn.onnx", x) - expected).max() / np.abs(expected).max()
    assert rtn_error > 100 * error  # ORT's integer zero point cannot sit on the float-minimum grid
