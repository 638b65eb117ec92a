"""The ONNX Runtime steps of the method table (``onnx``, ``onnx_int8_dynamic``, ``onnx_int8_static``,
``onnx_int4``): export, graph passes, quantizers. Importing this package registers the steps. The torch-free
runner of an ONNX variant is in ``tightfit.runtime``.
"""

from tightfit.compress.ort.export import OnnxExport, check_exportable, export_onnx
from tightfit.compress.ort.methods import calibration_feeds

__all__ = ["OnnxExport", "calibration_feeds", "check_exportable", "export_onnx"]
