"""What a decoder LM variant costs and gives when it generates: quality, speed, KV cache, serving memory.

- quality: perplexity of the held-out split as one token stream (fixed context and stride) and zero-shot
  task accuracy on its labels (``tightfit.measure.quality``);
- speed: time to first token (prefill of a 64-token prompt + one token, batch 1) and decode tokens/s at
  batch 1 and 8 (the time of ``n`` new tokens less the time of one, so prefill is not counted);
- KV cache bytes per token, read from the cache a forward pass leaves (not from a formula);
- peak RSS serving: a fresh process (``python -m tightfit.measure.lm DIR``) loads the variant and
  generates at batch 8, so the KV cache and the runtime are in the figure.

Prompts are cut from the split's own token stream, so every variant sees the same ids and no padding.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tightfit.errors import VariantError
from tightfit.footprint import Footprint
from tightfit.measure.quality import stream_perplexity, token_stream, zero_shot_accuracy, zero_shot_task
from tightfit.memory.rss import current_rss_bytes, peak_rss_bytes
from tightfit.names import RUNTIME_ONNXRUNTIME

if TYPE_CHECKING:
    from tightfit.data import DatasetSplits

PROMPT_TOKENS = 64
SERVE_BATCH = 8
SERVE_NEW_TOKENS = 32


@dataclass(frozen=True)
class LmProtocol:
    """How much to measure: perplexity tokens, task rows, generated tokens and timing repeats."""

    ppl_tokens: int = 16384
    task_rows: int = 1000
    new_tokens: int = 32
    repeats: int = 5

    @classmethod
    def quick(cls) -> LmProtocol:
        return cls(ppl_tokens=2048, task_rows=100, new_tokens=8, repeats=2)


def _leaves(tensor: Any) -> list[Any]:
    """The plain tensors behind a (possibly nested) tensor subclass (packed data, scales, zeros)."""
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is None:
        return [tensor]
    return [leaf for name in flatten()[0] for leaf in _leaves(getattr(tensor, name))]


def weight_bytes(model: Any) -> int:
    """Bytes of every parameter and buffer the model holds, packed data + scales, shared storage once
    (a tied embedding/head counts once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for tensor in model.state_dict().values():
        for inner in _leaves(tensor):
            key = (inner.untyped_storage().data_ptr(), inner.storage_offset())
            if key in seen or not inner.numel():
                continue
            seen.add(key)
            total += int(inner.numel()) * int(inner.element_size())
    return total


def prompts(tokenizer: Any, texts: list[str], batch: int, length: int = PROMPT_TOKENS) -> Any:
    """``batch`` prompts of exactly ``length`` real tokens, cut from the texts' token stream."""
    stream = token_stream(tokenizer, texts, batch * length)
    if len(stream) < batch * length:
        stream = stream.repeat(batch * length // max(1, len(stream)) + 1)[: batch * length]
    return stream.view(batch, length)


def _generate_s(model: Any, ids: Any, new_tokens: int, pad_id: int) -> float:
    import torch

    with torch.inference_mode():
        started = time.perf_counter()
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_id)
        return time.perf_counter() - started


def generation_speed(model: Any, tokenizer: Any, texts: list[str], *, batch: int, new_tokens: int, repeats: int) -> tuple[float, float]:
    """(time to first token in ms, decode tokens/s) at ``batch``: medians over ``repeats`` after a warm-up."""
    device = next(model.parameters()).device
    ids = prompts(tokenizer, texts, batch).to(device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    _generate_s(model, ids, 2, pad)  # warm-up: kernels, caches
    first, full = [], []
    for _ in range(repeats):
        first.append(_generate_s(model, ids, 1, pad))
        full.append(_generate_s(model, ids, new_tokens, pad))
    t1, tn = statistics.median(first), statistics.median(full)
    return 1000.0 * t1, batch * (new_tokens - 1) / max(tn - t1, 1e-9)


def kv_cache_bytes_per_token(model: Any, tokenizer: Any, texts: list[str]) -> int:
    """Bytes the KV cache grows by per token of one sequence, read from a real cache."""
    import torch

    device = next(model.parameters()).device
    ids = prompts(tokenizer, texts, 1).to(device)
    with torch.inference_mode():
        cache = model(input_ids=ids, use_cache=True).past_key_values
    tensors: list[Any] = []
    for layer in getattr(cache, "layers", None) or []:
        tensors += [t for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if t is not None]
    if not tensors:  # legacy tuple caches
        tensors = [t for pair in cache for t in pair]
    return sum(int(t.numel()) * int(t.element_size()) for t in tensors) // ids.shape[1]


def measure_lm(
    fp: Footprint, model: Any, tokenizer: Any, data: DatasetSplits | None, *, quick: bool = False,
    forward: Callable[..., Any] | None = None, protocol: LmProtocol | None = None,
) -> Footprint:
    """Fill the LM fields of ``fp``: perplexity, task accuracy, TTFT, decode tokens/s at 1 and 8, KV bytes."""
    proto = protocol or (LmProtocol.quick() if quick else LmProtocol())
    texts = (data.test["text"].astype(str).tolist() if data is not None else []) or ["a short example input text"]
    fp.weight_bytes = weight_bytes(model)
    fp.kv_cache_bytes_per_token = kv_cache_bytes_per_token(model, tokenizer, texts)
    fp.ttft_ms, fp.decode_tok_s_b1 = generation_speed(model, tokenizer, texts, batch=1, new_tokens=proto.new_tokens,
                                                      repeats=proto.repeats)
    _, fp.decode_tok_s_b8 = generation_speed(model, tokenizer, texts, batch=SERVE_BATCH, new_tokens=proto.new_tokens,
                                             repeats=max(1, proto.repeats // 2))
    if data is not None:
        _quality(fp, model, tokenizer, texts, data, proto, forward)
    return fp


def _quality(fp: Footprint, model: Any, tokenizer: Any, texts: list[str], data: DatasetSplits, proto: LmProtocol,
             forward: Callable[..., Any] | None = None) -> None:
    """Stream perplexity and zero-shot task accuracy into ``fp`` (torch LMs and ``RunnerLM`` alike)."""
    fp.perplexity = stream_perplexity(model, token_stream(tokenizer, texts, proto.ppl_tokens), forward=forward)
    rows = data.test.head(proto.task_rows)
    task = zero_shot_task(data.name, list(data.label_names))
    fp.task_accuracy = zero_shot_accuracy(model, tokenizer, rows["text"].astype(str).tolist(),
                                          rows["label"].astype(int).tolist(), task)
    fp.extra.update({"ppl_tokens": proto.ppl_tokens, "task_rows": len(rows), "task_prompt": task.prompt})


def measure_lm_onnx(
    fp: Footprint, runner: Any, tokenizer: Any, data: DatasetSplits | None, graph: Path, *, quick: bool = False,
    protocol: LmProtocol | None = None,
) -> Footprint:
    """``measure_lm`` for an ONNX decoder: the same figures, prompts and quality code, through its runner
    (``tokenizer``: the variant's own tokenizer files loaded with transformers, for the shared prompt ids)."""
    from tightfit.measure.runners import (
        RunnerLM,
        graph_weight_bytes,
        kv_bytes_per_token,
        runner_generation_speed,
    )

    proto = protocol or (LmProtocol.quick() if quick else LmProtocol())
    texts = (data.test["text"].astype(str).tolist() if data is not None else []) or ["a short example input text"]
    fp.weight_bytes = graph_weight_bytes(graph)
    fp.kv_cache_bytes_per_token = kv_bytes_per_token(runner)
    fp.ttft_ms, fp.decode_tok_s_b1 = runner_generation_speed(
        runner, prompts(tokenizer, texts, 1).numpy(), new_tokens=proto.new_tokens, repeats=proto.repeats)
    _, fp.decode_tok_s_b8 = runner_generation_speed(
        runner, prompts(tokenizer, texts, SERVE_BATCH).numpy(), new_tokens=proto.new_tokens,
        repeats=max(1, proto.repeats // 2))
    if data is not None:
        _quality(fp, RunnerLM(runner), tokenizer, texts, data, proto)
    return fp


def logical_params(model: Any) -> int:
    """Parameters as the profiler counts them (every state-dict entry), with a packed module's weight
    counted by its logical shape (its packed buffers hide it)."""
    from tightfit.compress.lowbit import logical_size
    from tightfit.compress.lowbit.formats import PACKED_MODULES

    packed = {name: m for name, m in model.named_modules() if type(m).__name__ in PACKED_MODULES}
    total = 0
    for key, tensor in model.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        if owner in packed:
            total += int(logical_size(packed[owner]) or 0) if leaf == "qdata" else 0
        elif tensor.dtype.is_floating_point:
            total += int(tensor.numel())
    return total


def bytes_per_token(model: Any) -> int:
    """Weight bytes one decode step reads: every weight, except an input embedding table not shared with
    the head, of which one row is read."""
    total = weight_bytes(model)
    embedding = model.get_input_embeddings()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    attr = "qdata" if hasattr(embedding, "qdata") else "weight"  # an Int8Embedding's rows, or the float table
    table = getattr(embedding, attr, None)
    if table is None or (head is not None and getattr(head, attr, None) is table):
        return total  # a tied head reads the whole table every step
    size = sum(int(t.numel()) * int(t.element_size()) for t in _leaves(table))
    return total - (size - size // max(1, int(table.shape[0])))


def describe_formats(fp: Footprint, model: Any, manifest: dict[str, Any]) -> Footprint:
    """LM figures the generic profiler cannot see: logical parameters of packed modules, bytes read per
    decode step (a tied head reads the whole table), the int4 share of the weights, and for low-bit
    variants a compact per-layer format summary plus how they were calibrated (``extra``, to MLflow)."""
    from tightfit.compress.lowbit import int4_weight_fraction, summarize_formats
    from tightfit.compress.lowbit.formats import PACKED_MODULES

    if any(type(m).__name__ in PACKED_MODULES for m in model.modules()):  # packed buffers hide the weights
        fp.params_total = fp.params_nonzero = logical_params(model)
    fp.weight_bytes_per_forward = bytes_per_token(model)
    fp.int4_weight_fraction = int4_weight_fraction(model)
    extra = manifest.get("extra") or {}
    if extra.get("layer_formats"):
        fp.extra["layer_formats"] = summarize_formats(extra["layer_formats"])
    for key in ("calibration", "probe"):
        if extra.get(key):
            fp.extra[key] = extra[key]
    return fp


def _serve_once_onnx(variant_dir: str, batch: int, new_tokens: int, threads: int) -> dict[str, Any]:
    """``_serve_once`` for an ONNX decoder: what its replica imports (ONNX Runtime, tokenizers, numpy; never
    torch), load, greedy generation against the KV cache at ``batch``; RSS at each point."""
    import numpy as np
    import onnxruntime  # noqa: F401  (the runtime, counted apart from the model)

    from tightfit.runtime import load_onnx_runner

    after_imports, now_imports = peak_rss_bytes(), current_rss_bytes()
    runner = load_onnx_runner(Path(variant_dir), threads=threads, device="cpu")
    runner.generate_ids(np.array([[1, 2, 3]], dtype=np.int64), np.ones((1, 3), dtype=np.int64), 1)  # warm-up
    after_load, now_load = peak_rss_bytes(), current_rss_bytes()
    texts = ["a movie review that is long enough to fill several tokens of the prompt, and then some more"] * 4
    enc = runner.encode(texts, max_length=PROMPT_TOKENS, pad_to_max=False)
    stream = enc["input_ids"][enc["attention_mask"].astype(bool)]  # the real tokens, row after row
    ids = np.resize(stream, (batch, PROMPT_TOKENS)).astype(np.int64)  # the same prompt shape as a torch variant
    runner.generate_ids(ids, np.ones_like(ids), new_tokens, stop_at_eos=False)
    return {"rss_imports_bytes": after_imports, "rss_load_bytes": after_load, "rss_serve_bytes": peak_rss_bytes(),
            "rss_now_imports_bytes": now_imports, "rss_now_load_bytes": now_load,
            "rss_now_serve_bytes": current_rss_bytes(), "serve_batch": batch, "serve_new_tokens": new_tokens,
            "serve_prompt_tokens": PROMPT_TOKENS, "gpu_peak_bytes": None, "imported_torch": "torch" in sys.modules}


def _serve_once(variant_dir: str, batch: int, new_tokens: int, threads: int) -> dict[str, Any]:
    """In the fresh process: imports, load, greedy generation at ``batch``; RSS at each point."""
    from tightfit.runtime.manifest import read_manifest, runtime_of

    if runtime_of(read_manifest(variant_dir)) == RUNTIME_ONNXRUNTIME:
        return _serve_once_onnx(variant_dir, batch, new_tokens, threads)
    import torch

    torch.set_num_threads(threads)
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    from tightfit.compress.variant import load_variant

    # The runtime, counted apart from the model: torch, transformers and the architecture's module (Llama's
    # modeling code and generation utilities add about 140 MiB to a bare `import transformers`; with them,
    # transformers also imports torchao when it is installed, about 11 MiB of that).
    MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.from_pretrained(variant_dir))]
    after_imports, now_imports = peak_rss_bytes(), current_rss_bytes()
    variant = load_variant(variant_dir, device="cpu")
    with torch.no_grad():  # a warm-up forward, as a replica does: safetensors maps weights in lazily
        variant.model(variant.tokenizer("warm up", return_tensors="pt")["input_ids"])
    after_load, now_load = peak_rss_bytes(), current_rss_bytes()
    texts = ["a movie review that is long enough to fill several tokens of the prompt, and then some more"] * 4
    ids = prompts(variant.tokenizer, texts, batch)
    pad = variant.tokenizer.pad_token_id or 0
    _generate_s(variant.model, ids, new_tokens, pad)
    return {"rss_imports_bytes": after_imports, "rss_load_bytes": after_load, "rss_serve_bytes": peak_rss_bytes(),
            "rss_now_imports_bytes": now_imports, "rss_now_load_bytes": now_load,
            "rss_now_serve_bytes": current_rss_bytes(), "serve_batch": batch, "serve_new_tokens": new_tokens,
            "serve_prompt_tokens": PROMPT_TOKENS, "gpu_peak_bytes": None}


def measure_lm_memory(
    variant_dir: str | Path, *, batch: int = SERVE_BATCH, new_tokens: int = SERVE_NEW_TOKENS, timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Peak RSS of a fresh process that loads the variant and generates ``new_tokens`` at ``batch``."""
    threads = os.environ.get("TIGHTFIT_THREADS", "2")
    cmd = [sys.executable, "-m", "tightfit.measure.lm", str(variant_dir), "--batch", str(batch),
           "--new-tokens", str(new_tokens), "--threads", threads]
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise VariantError(f"serving-memory measurement of {variant_dir} failed: {' | '.join(tail)}")
    return dict(json.loads(lines[-1]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("variant_dir")
    parser.add_argument("--batch", type=int, default=SERVE_BATCH)
    parser.add_argument("--new-tokens", type=int, default=SERVE_NEW_TOKENS)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    print(json.dumps(_serve_once(args.variant_dir, args.batch, args.new_tokens, args.threads)), flush=True)


if __name__ == "__main__":
    main()
