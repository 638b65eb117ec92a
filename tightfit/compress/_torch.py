"""Quiet imports of torch/torchao for the compression code (torchao logs missing CUDA kernels at import)."""

from __future__ import annotations

import logging
from typing import Any


def torchao_quantization() -> Any:
    """``torchao.quantization`` with its import-time noise about absent GPU kernels silenced."""
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # The CPU int4 tensor registers itself as a safe global for torch.load(weights_only=True) on import.
    import torchao.prototype.quantization.int4  # noqa: F401
    import torchao.quantization as quantization

    return quantization


def quiet_transformers() -> None:
    """Errors only from transformers (load reports about fresh classifier heads are expected)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
