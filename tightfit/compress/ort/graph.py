"""ONNX-side passes on an exported graph: ONNX Runtime's transformer fusions and its quantizers.

- ``fuse``: ``onnxruntime.transformers.optimizer.optimize_model(..., model_type="bert")`` fuses the
  embeddings + LayerNorm, attention, SkipLayerNorm and bias + GELU of BERT-like encoders. The head count of
  each attention block is written into its Reshape first (transformers exports ``[batch, seq, -1, head]``,
  which the fusion cannot read), so pruned students with a different head count per layer fuse too.
- ``quantize_dynamic_int8``: int8 weights, activations quantized per batch at run time (``quantize_dynamic``).
- ``quantize_static_int8``: QDQ int8 with activation ranges calibrated on batches from the train split.

No torch here: the passes read and write ``.onnx`` files.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tightfit.errors import UnsupportedError


@contextlib.contextmanager
def quiet_ort() -> Iterator[None]:
    """ONNX Runtime's C++ warnings and its quantizer's Python advice, silenced while a pass runs."""
    import onnxruntime

    root = logging.getLogger()
    level = root.level
    onnxruntime.set_default_logger_severity(3)
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _constant(model: Any, name: str, producers: dict[str, Any]) -> Any:
    """The value of an initializer or Constant node output, else None."""
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    node = producers.get(name)
    if node is not None and node.op_type == "Constant" and node.attribute:
        return numpy_helper.to_array(node.attribute[0].t)
    return None


def name_attention_heads(model: Any) -> int:
    """Replace the ``-1`` head count of each attention Reshape (``[b, s, -1, head_size]`` after a biased
    projection) by the real count, ``bias width / head_size``. Returns how many Reshapes it fixed."""
    import numpy as np
    from onnx import numpy_helper

    producers = {out: node for node in model.graph.node for out in node.output}
    fixed = 0
    for node in model.graph.node:
        if node.op_type != "Reshape":
            continue
        concat, data = producers.get(node.input[1]), producers.get(node.input[0])
        if concat is None or concat.op_type != "Concat" or len(concat.input) != 4 or data is None or data.op_type != "Add":
            continue
        heads, size = _constant(model, concat.input[2], producers), _constant(model, concat.input[3], producers)
        if heads is None or size is None or heads.tolist() != [-1] or int(size.reshape(-1)[0]) <= 0:
            continue
        biases = [b for b in (_constant(model, i, producers) for i in data.input) if b is not None and b.ndim == 1]
        if len(biases) != 1 or biases[0].shape[0] % int(size.reshape(-1)[0]):
            continue
        name = f"{node.name or node.output[0]}/tightfit_heads"
        count = biases[0].shape[0] // int(size.reshape(-1)[0])
        model.graph.initializer.append(numpy_helper.from_array(np.array([count], dtype=np.int64), name))
        concat.input[2] = name
        fixed += 1
    return fixed


def fuse(src: Path, dst: Path, *, kind: str, attention: bool = True) -> dict[str, Any]:
    """ORT's transformer fusions for BERT-like encoders (``attention=False`` keeps attention as plain
    MatMuls so a static quantizer can reach its projections); decoders are copied as exported (ONNX
    Runtime applies its own graph optimizations when the session loads). Returns the fused-op counts."""
    import onnx

    if kind != "classifier":
        dst.write_bytes(src.read_bytes())
        return {"model_type": None, "fused": {}}
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    model = onnx.load(str(src))
    renamed = name_attention_heads(model)
    onnx.save(model, str(dst))
    options = FusionOptions("bert")
    options.enable_attention = attention
    with quiet_ort():
        optimized = optimize_model(str(dst), model_type="bert", num_heads=0, hidden_size=0, optimization_options=options)
    optimized.save_model_to_file(str(dst))
    fused = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
    return {"model_type": "bert", "attention_heads_named": renamed, "fused": fused}


def quantize_dynamic_int8(src: Path, dst: Path, *, per_channel: bool) -> dict[str, Any]:
    """ORT dynamic int8: int8 weights (per output channel when ``per_channel``), activations quantized at run
    time. ``DefaultTensorType`` lets the quantizer pass the fused contrib ops whose outputs have no type."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet_ort():
        quantize_dynamic(
            str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    return {"quantization": "int8_dynamic", "weight_type": "int8", "per_channel": per_channel}


class _Batches:
    """``CalibrationDataReader`` over prepared feeds (dicts of int64 arrays)."""

    def __init__(self, feeds: Sequence[dict[str, Any]]) -> None:
        self._iter = iter(list(feeds))

    def get_next(self) -> dict[str, Any] | None:
        return next(self._iter, None)

    def rewind(self) -> None:  # pragma: no cover - ORT calls it for some calibrators
        pass


def quantize_static_int8(
    src: Path, dst: Path, feeds: Sequence[dict[str, Any]], *, per_channel: bool, method: str
) -> dict[str, Any]:
    """ORT static int8 in QDQ form: activation ranges from ``feeds`` (calibration batches), uint8
    activations and int8 weights. The graph's non-quantizable contrib ops stay in fp32."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if not feeds:
        raise UnsupportedError("static int8 needs calibration batches; pass training data")
    with quiet_ort():
        quantize_static(
            str(src), str(dst), _Batches(feeds), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8, per_channel=per_channel, calibrate_method=methods[method],
            op_types_to_quantize=["MatMul"],  # the encoder's projections; pooler and head (Gemm) stay fp32
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "CalibMovingAverage": method == "minmax"},
        )
    return {"quantization": "int8_static", "format": "QDQ", "activations": "uint8", "weights": "int8",
            "per_channel": per_channel, "calibration": method, "calibration_batches": len(feeds)}
