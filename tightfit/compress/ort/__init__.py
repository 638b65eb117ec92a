"""The ONNX Runtime runtime: export steps for the method table (``onnx``, ``onnx_int8_dynamic``,
``onnx_int8_static``, ``onnx_int4``) and the torch-free loader and runner of an ONNX variant.

Importing this package registers the steps; ``session`` and ``text`` import neither torch nor transformers.
"""

from tightfit.compress.ort.export import OnnxExport, check_exportable, export_onnx
from tightfit.compress.ort.methods import calibration_feeds

__all__ = ["OnnxExport", "calibration_feeds", "check_exportable", "export_onnx"]
