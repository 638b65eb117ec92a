"""Running a variant: the predict interface every runtime gives (``Runner``), the variant directory's
manifest and checksums, and the ONNX Runtime runner with its ``tokenizers`` tokenizer. Nothing here imports
torch, transformers or pydantic, so a process serving an ONNX variant stays small and starts fast; the torch
runner is ``tightfit.compress.runtime.TorchRunner`` and ``tightfit.load_variant`` dispatches between them.
"""

from tightfit.runtime.base import Runner, labels_from_config, softmax
from tightfit.runtime.manifest import FORMAT, MANIFEST, read_manifest, runtime_of, sha256_of, verify_variant
from tightfit.runtime.session import OrtRunner, choose_providers, load_onnx_runner, open_session
from tightfit.runtime.text import TextTokenizer

__all__ = [
    "FORMAT",
    "MANIFEST",
    "OrtRunner",
    "Runner",
    "TextTokenizer",
    "choose_providers",
    "labels_from_config",
    "load_onnx_runner",
    "open_session",
    "read_manifest",
    "runtime_of",
    "sha256_of",
    "softmax",
    "verify_variant",
]
