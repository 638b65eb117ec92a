"""Measurements that go through a variant's ``Runner`` rather than a torch module: what an ONNX variant needs
(its parameter count and weight bytes read per forward, counted from the graph; perplexity and generation
speed of an ONNX decoder). Torch variants keep their torch-side counting in ``profile``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from tightfit.errors import ConfigError

EMBEDDING_INPUTS = {"Gather": (0,), "GatherElements": (0,), "EmbedLayerNormalization": (2, 3, 4),
                    "QEmbedLayerNormalization": (2, 3, 4)}


def graph_counts(path: Path, manifest: dict[str, Any], seq_len: int) -> tuple[int | None, int | None, int]:
    """(params total, params non-zero, weight bytes read per forward of one sequence) of an ONNX variant.

    Parameters are those of the torch model the graph was exported from (recorded in the manifest at export:
    quantization changes their bytes, not their number). Bytes per forward are the graph's initializer
    bytes, except that embedding tables contribute only the ``seq_len`` rows a sequence gathers.
    """
    import onnx
    from onnx import numpy_helper

    params = (manifest.get("onnx") or {}).get("source_params") or [None, None]
    model = onnx.load(str(path))
    tables = {node.input[i] for node in model.graph.node for i in EMBEDDING_INPUTS.get(node.op_type, ())
              if i < len(node.input)}
    total = 0
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        size = int(array.nbytes)
        if init.name in tables and array.ndim >= 1 and array.shape[0] > 0:
            size = size * min(int(array.shape[0]), seq_len) // int(array.shape[0])
        total += size
    return params[0], params[1], total


def runner_tokens_per_s(runner: Any, texts: list[str], batch: int, new_tokens: int) -> float:
    """Greedy generation speed through a runner (new tokens per second over the batch)."""
    chosen = [texts[i % len(texts)] for i in range(batch)]
    started = time.perf_counter()
    out = runner.generate(chosen, max_new_tokens=new_tokens, max_length=16)
    produced = sum(int(o["new_tokens"]) for o in out) or batch * new_tokens
    return produced / (time.perf_counter() - started)


def runner_perplexity(runner: Any, texts: list[str], *, batch_size: int = 16, max_length: int = 64) -> float:
    """exp(mean next-token cross-entropy) over every real token of ``texts`` (right-padded batches, like
    ``quality.perplexity``), from a runner's logits (numpy)."""
    import numpy as np

    side = runner.tokenizer.padding_side
    runner.tokenizer.padding_side = "right"
    total_loss, total_tokens = 0.0, 0
    try:
        for start in range(0, len(texts), batch_size):
            enc = runner.encode(texts[start : start + batch_size], max_length=max_length, pad_to_max=True)
            logits = np.asarray(runner.to_numpy(runner.forward(**enc)), dtype=np.float64)[:, :-1]
            targets, mask = enc["input_ids"][:, 1:], enc["attention_mask"][:, 1:].astype(bool)
            shifted = logits - logits.max(axis=-1, keepdims=True)
            log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
            picked = np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
            total_loss += float(-picked[mask].sum())
            total_tokens += int(mask.sum())
    finally:
        runner.tokenizer.padding_side = side
    if total_tokens == 0:
        raise ConfigError("perplexity needs texts with at least two tokens")
    return math.exp(total_loss / total_tokens)
