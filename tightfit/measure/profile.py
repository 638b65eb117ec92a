"""Measure a variant's footprint: parameters, bytes, peak memory, latency, throughput, bandwidth, quality.

Everything is measured, not estimated. Peak RSS comes from a fresh subprocess (``tightfit.measure.memory``);
latency is timed in-process on fixed-shape inputs (padded to ``seq_len``). A variant whose manifest says
``run_compiled`` is timed under ``torch.compile`` with its warm-up (compilation) excluded.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tightfit.compress.variant import load_variant
from tightfit.footprint import SERVE_PROFILE_BATCH, Footprint
from tightfit.measure.memory import measure_memory
from tightfit.measure.quality import evaluate
from tightfit.measure.runners import graph_counts
from tightfit.measure.timing import FULL_PLAN, QUICK_PLAN, TimingPlan, TimingResult, time_rounds
from tightfit.settings import MEMORY_ROUNDS

if TYPE_CHECKING:
    from tightfit.data import DatasetSplits

LATENCY_BATCHES = (1, 32)


def _inner_tensors(tensor: Any) -> list[Any]:
    """The plain tensors behind a (possibly nested) tensor subclass such as torchao's Int8Tensor."""
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is None:
        return [tensor]
    names, _ = flatten()
    out: list[Any] = []
    for name in names:
        out.extend(_inner_tensors(getattr(tensor, name)))
    return out


def tensor_bytes(tensor: Any) -> int:
    """Bytes a tensor really holds (packed data + scales for quantized tensors)."""
    return sum(int(t.numel()) * int(t.element_size()) for t in _inner_tensors(tensor))


def count_params(model: Any) -> tuple[int, int]:
    """(total, non-zero) parameter counts from the state dict: quantized modules hide packed weights from
    ``parameters()``, so the logical shape of every weight is counted instead; non-zero counts real zeros."""
    total = nonzero = 0
    for tensor in model.state_dict().values():
        inner = _inner_tensors(tensor)
        quantized = len(inner) > 1 or inner[0] is not tensor
        if not (quantized or tensor.dtype.is_floating_point):
            continue  # integer buffers such as position ids
        numel = int(tensor.numel())
        data = inner[0] if quantized else tensor
        total += numel
        nonzero += int((data != 0).sum()) if data.numel() == numel else numel
    return total, nonzero


def weight_bytes_per_forward(model: Any, seq_len: int) -> int:
    """Weight bytes read by one forward pass of one sequence: every weight, except that embedding tables
    contribute only the ``seq_len`` rows they gather (bandwidth-bound latency scales with this)."""
    import torch

    embeddings = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, torch.nn.Embedding)}
    total = 0
    seen: set[tuple[int, int]] = set()
    for key, tensor in model.state_dict(keep_vars=True).items():
        inner = _inner_tensors(tensor)
        storage = (inner[0].untyped_storage().data_ptr(), inner[0].storage_offset())  # tied: one storage
        if storage in seen or not (len(inner) > 1 or tensor.dtype.is_floating_point):
            continue  # tied weights are read once; integer buffers are not weights
        seen.add(storage)
        size = tensor_bytes(tensor)
        if key in embeddings:
            rows = int(tensor.shape[0])
            size = size * min(rows, seq_len) // max(rows, 1)
        total += size
    return total


def forward_for(model: Any, compiled: bool, mode: str = "default") -> Callable[..., Any]:
    """The callable to time: the model itself, or ``torch.compile(model, dynamic=False)`` (one graph per
    padded shape bucket, cached by torch)."""
    if not compiled:
        return model  # type: ignore[no-any-return]
    import torch

    return torch.compile(model, mode=mode, dynamic=False)  # type: ignore[no-any-return]


def fixed_inputs(tokenizer: Any, texts: list[str], batch: int, seq_len: int, device: Any = "cpu") -> dict[str, Any]:
    """A batch of real texts padded to exactly ``seq_len`` tokens."""
    chosen = [texts[i % len(texts)] for i in range(batch)]
    enc = tokenizer(chosen, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
    return {k: v.to(device) for k, v in enc.items()}


def latency_ms(forward: Callable[..., Any], inputs: dict[str, Any], *, repeats: int, warmup: int = 2) -> list[float]:
    """Wall-clock milliseconds of ``repeats`` forward passes after ``warmup`` untimed ones."""
    import torch

    cuda = any(getattr(v, "is_cuda", False) for v in inputs.values())
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if cuda:
                torch.cuda.synchronize()
            started = time.perf_counter()
            forward(**inputs)
            if cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(1000.0 * (time.perf_counter() - started))
    return times


def percentiles(values: list[float]) -> tuple[float, float, float]:
    import numpy as np

    arr = np.asarray(values, dtype=float)
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 95)), float(np.percentile(arr, 99))


def time_forward(
    forward: Callable[..., Any], inputs: dict[int, dict[str, Any]], plan: TimingPlan, *, threads: int | None = None,
) -> TimingResult:
    """Time ``forward(**inputs[batch])`` for every batch in interleaved rounds (``time_rounds``), under
    ``torch.inference_mode`` and with CUDA synchronised around each pass on a GPU."""
    import torch

    cuda = any(getattr(v, "is_cuda", False) for batch in inputs.values() for v in batch.values())

    def call_for(batch_inputs: dict[str, Any]) -> Callable[[], Any]:
        def call() -> Any:
            out = forward(**batch_inputs)
            if cuda:
                torch.cuda.synchronize()
            return out

        return call

    with torch.inference_mode():
        return time_rounds({b: call_for(i) for b, i in inputs.items()}, plan, threads=threads, check_cpu_share=not cuda)


def record_timing(fp: Footprint, result: TimingResult) -> None:
    """Latency percentiles, their spread across rounds, and the noise flag into ``fp``."""
    for batch, stats in result.stats.items():
        setattr(fp, f"latency_ms_b{batch}_p50", stats.p50)
        setattr(fp, f"latency_ms_b{batch}_p95", stats.p95)
        setattr(fp, f"latency_ms_b{batch}_p99", stats.p99)
        setattr(fp, f"latency_ms_b{batch}_cv", stats.cv)
        fp.extra[f"latency_ms_b{batch}_round_p50"] = [round(v, 3) for v in stats.round_p50_ms]
        fp.extra[f"latency_ms_b{batch}_cpu_share"] = round(stats.cpu_share, 3)
    fp.measure_rounds, fp.measure_threads, fp.load_avg_1m = result.rounds, result.threads, result.load_avg_1m
    fp.measure_cpu_share = min(s.cpu_share for s in result.stats.values())
    fp.noise = ",".join(f"latency_ms_b{b}" for b in result.noisy)
    fp.extra.update({"measure_attempts": result.attempts, "measure_cpus": result.cpus,
                     "measure_probe_ms": round(result.probe_ms, 4),
                     "measure_other_cores": round(max(s.other_cores for s in result.stats.values()), 3)})


def _disk(path: Path, manifest: dict[str, Any]) -> tuple[int, int | None, int]:
    weights = path / manifest["weights"]["file"]
    dir_bytes = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    compressed = None
    if manifest["weights"].get("sparse"):
        compressed = len(zlib.compress(weights.read_bytes(), 6))
    return weights.stat().st_size, compressed, dir_bytes


def measure_variant(
    variant_dir: str | Path,
    data: DatasetSplits | None,
    *,
    seq_len: int = 64,
    baseline: Footprint | None = None,
    memory_subprocess: bool = True,
    quick: bool = False,
    device: str | None = None,
    eval_rows: int | None = None,
    timing: TimingPlan | None = None,
    threads: int | None = None,
) -> Footprint:
    """The footprint of a saved variant on ``data.test`` (``data`` may be None: no quality figures).

    ``quick`` uses fewer timing rounds and at most 200 evaluation rows (tests, pipeline smoke runs);
    ``timing`` overrides the rounds, ``threads`` the pinned compute threads (default: every allowed core).
    """
    import torch

    path = Path(variant_dir)
    variant = load_variant(path, device=device)
    model, tokenizer, manifest, runner = variant.model, variant.tokenizer, variant.manifest, variant.runner
    dev = str(runner.device).split(":", 1)[0]
    compiled = variant.run_compiled
    fp = Footprint(
        variant=manifest["name"], chain=manifest["chain"], kind=variant.kind, device=dev,
        backend=str(manifest.get("backend", "onnxruntime")) if model is None else ("compile" if compiled else "eager"),
        compiled=compiled, seq_len=seq_len, runtime=variant.runtime,
    )
    if model is not None:
        fp.params_total, fp.params_nonzero = count_params(model)
        fp.weight_bytes_per_forward = weight_bytes_per_forward(model, seq_len if variant.kind == "classifier" else 1)
    else:  # an ONNX graph: counted from the graph (compress.ort.graph)
        fp.params_total, fp.params_nonzero, fp.weight_bytes_per_forward = graph_counts(
            path / manifest["weights"]["file"], manifest, seq_len if variant.kind == "classifier" else 1)
    fp.disk_bytes, fp.disk_bytes_compressed, dir_bytes = _disk(path, manifest)
    fp.extra.update({"dir_bytes": dir_bytes, "base_model": manifest["base_model"], "parent": manifest["parent"],
                     "torch_threads": torch.get_num_threads(), "runtime_threads": runner.threads})
    forward = runner.forward
    texts = (data.test["text"].astype(str).tolist() if data is not None else []) or ["a short example input text"]
    # LMs are timed at batch 1 here; their generation speed, KV cache and quality come from measure.lm.
    batches = LATENCY_BATCHES if variant.kind != "causal_lm" else (1,)
    inputs = {batch: runner.encode([texts[i % len(texts)] for i in range(batch)], max_length=seq_len)
              for batch in batches}
    # Interleaved rounds on pinned threads, with the spread and a noise flag (tightfit.measure.timing).
    record_timing(fp, time_forward(forward, inputs, timing or (QUICK_PLAN if quick else FULL_PLAN), threads=threads))
    if fp.latency_ms_b32_p50:
        fp.throughput_sps = 32 * 1000.0 / fp.latency_ms_b32_p50
    if variant.kind == "causal_lm" and model is not None:  # generation speed, KV cache, perplexity, task, formats
        from tightfit.measure.lm import describe_formats, measure_lm

        measure_lm(fp, model, tokenizer, data, quick=quick, forward=forward_for(model, compiled))
        describe_formats(fp, model, manifest)
    elif variant.kind == "causal_lm":  # an ONNX decoder: the same LM figures, through its runner
        from transformers import AutoTokenizer

        from tightfit.measure.lm import measure_lm_onnx

        measure_lm_onnx(fp, runner, AutoTokenizer.from_pretrained(str(path)), data,
                        path / manifest["weights"]["file"], quick=quick)
    if data is not None and variant.kind != "causal_lm":
        frame = data.test.head(eval_rows or (200 if quick else len(data.test)))
        quality = evaluate(model, tokenizer, frame, variant.kind, batch_size=32, max_length=seq_len, runner=runner)
        fp.accuracy, fp.f1_macro, fp.perplexity = quality.get("accuracy"), quality.get("f1_macro"), quality.get("perplexity")
        fp.extra["eval_rows"] = len(frame)
    if memory_subprocess:
        if variant.kind == "causal_lm" and dev == "cpu":  # serving an LM is generating
            from tightfit.measure.lm import measure_lm_memory

            mem = measure_lm_memory(path)  # the KV cache included
        else:
            mem = measure_memory(path, seq_len=seq_len, batch=SERVE_PROFILE_BATCH, compiled=compiled and not quick,
                                 device=dev, threads=runner.threads, rounds=1 if quick else MEMORY_ROUNDS)
        fp.peak_rss_load_bytes, fp.peak_rss_serve_bytes = mem["rss_load_bytes"], mem["rss_serve_bytes"]
        fp.gpu_peak_bytes, fp.cold_start_s = mem.get("gpu_peak_bytes"), mem.get("cold_start_s")
        for key in ("rss_imports_bytes", "rss_now_imports_bytes", "rss_now_load_bytes", "rss_now_serve_bytes",
                    "rss_now_warm_bytes", "rss_forward_peak_bytes",
                    "imported_torch", "model_thread", "rounds", "rss_load_bytes_rounds", "rss_serve_bytes_rounds"):
            fp.extra[key] = mem.get(key)
    if dev == "cuda" and fp.gpu_peak_bytes is None and model is not None:
        fp.gpu_peak_bytes = int(torch.cuda.max_memory_allocated())
    return fp.with_baseline(baseline) if baseline is not None else fp
