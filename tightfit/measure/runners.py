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

EMBEDDING_INPUTS = {"Gather": (0,), "GatherElements": (0,), "GatherBlockQuantized": (0, 2, 3),
                    "EmbedLayerNormalization": (2, 3, 4),
                    "QEmbedLayerNormalization": (2, 3, 4)}


def graph_counts(path: Path, manifest: dict[str, Any], seq_len: int) -> tuple[int | None, int | None, int]:
    """(params total, params non-zero, weight bytes read per forward of one sequence) of an ONNX variant.

    Parameters are those of the torch model the graph was exported from (recorded in the manifest at export:
    quantization changes their bytes, not their number). Bytes per forward are the graph's initializer
    bytes, except that embedding tables contribute only the ``seq_len`` rows a sequence gathers.
    """
    import onnx

    params = (manifest.get("onnx") or {}).get("source_params") or [None, None]
    model = onnx.load(str(path))
    tables = {node.input[i] for node in model.graph.node for i in EMBEDDING_INPUTS.get(node.op_type, ())
              if i < len(node.input)}
    total = 0
    for init in model.graph.initializer:
        size, rows = stored_bytes(init), int(init.dims[0]) if init.dims else 0
        if init.name in tables and rows > 0:
            size = size * min(rows, seq_len) // rows
        total += size
    return params[0], params[1], total


def stored_bytes(init: Any) -> int:
    """Bytes an ONNX initializer holds as stored: 4-bit tensors packed two to a byte (numpy unpacks them)."""
    from onnx import numpy_helper

    return len(init.raw_data) if init.raw_data else int(numpy_helper.to_array(init).nbytes)


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


def graph_weight_bytes(path: Path) -> int:
    """Bytes of every initializer of an ONNX graph (packed weights, scales, the embedding table once)."""
    import onnx

    return sum(stored_bytes(init) for init in onnx.load(str(path)).graph.initializer)


def kv_bytes_per_token(runner: Any) -> int:
    """Bytes an ONNX decoder's KV cache grows by per token of one sequence, from its graph's cache inputs
    (``[batch, kv_heads, past, head_dim]`` fp32 per layer, key and value)."""
    return sum(int(i.shape[1]) * int(i.shape[3]) * 4 for i in runner.past)


class RunnerLM:
    """An ONNX decoder's runner behind the part of a torch causal LM that the LM quality measures call
    (``model(input_ids=..., attention_mask=..., position_ids=..., logits_to_keep=...).logits`` and
    ``parameters()``), so perplexity and the zero-shot task score it with the very code that scores torch
    variants (``measure.quality``). For the measuring process, which has torch; a replica never builds one."""

    def __init__(self, runner: Any) -> None:
        import torch

        self.runner, self._device = runner, torch.zeros(0)

    def parameters(self) -> Any:
        yield self._device  # where the inputs go: the CPU (the runner copies them into its session)

    def __call__(self, input_ids: Any, attention_mask: Any = None, position_ids: Any = None,
                 logits_to_keep: int = 0) -> Any:
        from types import SimpleNamespace

        import numpy as np
        import torch

        ids = input_ids.cpu().numpy().astype(np.int64)
        mask = np.ones_like(ids) if attention_mask is None else attention_mask.cpu().numpy().astype(np.int64)
        positions = None if position_ids is None else position_ids.cpu().numpy().astype(np.int64)
        logits = self.runner.logits(ids, mask, positions, int(logits_to_keep))
        return SimpleNamespace(logits=torch.from_numpy(np.ascontiguousarray(logits)))


def runner_generation_speed(runner: Any, ids: Any, *, new_tokens: int, repeats: int) -> tuple[float, float]:
    """(time to first token in ms, decode tokens/s) of greedy generation from prompt ``ids`` (numpy,
    ``[batch, length]``, no padding) through a runner, as ``measure.lm.generation_speed`` times a torch
    model: medians over ``repeats`` after a warm-up, decode = (n tokens - 1 token) time, EOS ignored."""
    import statistics

    import numpy as np

    mask = np.ones_like(ids)

    def run(n: int) -> float:
        started = time.perf_counter()
        runner.generate_ids(ids, mask, n, stop_at_eos=False)
        return time.perf_counter() - started

    run(2)  # warm-up: kernels, the arena
    first, full = [], []
    for _ in range(repeats):
        first.append(run(1))
        full.append(run(new_tokens))
    t1, tn = statistics.median(first), statistics.median(full)
    return 1000.0 * t1, len(ids) * (new_tokens - 1) / max(tn - t1, 1e-9)
