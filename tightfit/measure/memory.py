"""The deployed process of a variant, measured in a fresh Python process (a peak never falls within one).

The child imports only what a replica serving that variant imports: torch + transformers for a torch
variant (torchao when its precision steps need it), ONNX Runtime + tokenizers for an ONNX variant (never
torch). It loads the variant, answers one text (the **cold start**: from the parent starting the process
to that first answer), then serves one batch, and prints one JSON line: the runtime, the cold start, peak
RSS (VmHWM) after imports, after loading and after the batch, the current RSS at the same points (the
model's own share is ``rss_now_load - rss_now_imports``), the GPU peak where present, and whether torch
was imported at all.

Loading ends as a replica's does: what loading freed goes back to the OS (``trim_heap``). After the first
answer (a replica's warm-up) the RSS is what a replica's idle memory sits on (``rss_now_warm_bytes``); the
peak is then reset, so the batch's own peak is read apart (``rss_forward_peak_bytes``) as well as the
process's peak over all (``rss_serve_bytes``, loading's where that was higher): a variant rebuilt from a
float skeleton peaks while loading, and that peak hid its forward (torchao int8-dynamic MiniLM: load peak
603-618 MiB, 458 MiB once trimmed, 2026-11-28).

The child loads and serves on one worker thread, as a replica does (``tightfit.serve.app`` runs its loads
and forwards on a one-thread executor): glibc gives that thread its own malloc arena, so a forward there
cannot reuse what loading freed on the main thread. A torchao int8 variant's forward grows 1.5-2x more on a
worker thread (int8-dynamic at batch 32: 82-109 MiB against 36-84 on the main thread, 2026-11-28); bf16 and
ONNX Runtime variants measure the same either way.

The child runs this file as a script (``python -P .../memory.py VARIANT_DIR --seq-len 64 --batch 32``), so
the measurement package's own imports (pandas, through quality scoring) do not inflate the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tightfit.errors import VariantError
from tightfit.memory.rss import current_rss_bytes, median_figures, peak_rss_bytes, reset_peak_rss, trim_heap
from tightfit.names import RUNTIME_ONNXRUNTIME
from tightfit.runtime.manifest import read_manifest, runtime_of
from tightfit.settings import MODEL_THREAD_PREFIX

PROBE_TEXT = "a movie review that is long enough to fill several tokens of the input"


def _runtime_imports(manifest: dict[str, Any]) -> None:
    """Import the libraries a replica of this variant imports, before its model (counted apart)."""
    if runtime_of(manifest) == RUNTIME_ONNXRUNTIME:
        import onnxruntime  # noqa: F401
        import tokenizers  # noqa: F401

        return
    import torch

    torch.set_num_threads(int(os.environ.get("TIGHTFIT_THREADS", "2")))
    import transformers  # noqa: F401


def _load_runner(variant_dir: str, manifest: dict[str, Any], device: str | None, threads: int) -> Any:
    """The variant's runner, through the same loader its replica uses (ONNX: ``tightfit.runtime`` alone)."""
    if runtime_of(manifest) == RUNTIME_ONNXRUNTIME:
        from tightfit.runtime.session import load_onnx_runner

        return load_onnx_runner(Path(variant_dir), device=device, threads=threads)
    from tightfit.compress.variant import load_variant

    return load_variant(variant_dir, device=device, threads=threads).runner


def _serve_once(
    variant_dir: str, seq_len: int, batch: int, compiled: bool, device: str | None, started: float | None
) -> dict[str, Any]:
    """Import on the main thread, then load and serve on one worker thread (as the replica does)."""
    from concurrent.futures import ThreadPoolExecutor

    manifest = read_manifest(variant_dir)
    _runtime_imports(manifest)
    imported = peak_rss_bytes(), current_rss_bytes(), time.time()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=MODEL_THREAD_PREFIX) as executor:
        return executor.submit(_load_and_serve, variant_dir, manifest, seq_len, batch, compiled, device, started,
                               imported).result()


def _load_and_serve(
    variant_dir: str, manifest: dict[str, Any], seq_len: int, batch: int, compiled: bool, device: str | None,
    started: float | None, imported: tuple[int, int, float],
) -> dict[str, Any]:
    import threading

    after_imports, current_imports, imported_at = imported
    threads = int(os.environ.get("TIGHTFIT_THREADS", "2"))
    runner = _load_runner(variant_dir, manifest, device, threads)
    after_load, loaded_at = peak_rss_bytes(), time.time()
    trim_heap()  # as a replica's loader ends
    current_load = current_rss_bytes()
    if not compiled and getattr(runner, "compiled", False):
        runner.run_eager()  # the quick protocol measures a compiled variant eager
    cuda = str(runner.device).startswith("cuda") and runner.runtime == "torch"
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
    runner.to_numpy(runner.forward(**runner.encode([PROBE_TEXT], max_length=seq_len)))
    first_answer = time.time()
    # warmed up, as a replica is before traffic: the batch's own peak is read apart from here on
    warm_peak, current_warm, reset = peak_rss_bytes(), current_rss_bytes(), reset_peak_rss()
    runner.to_numpy(runner.forward(**runner.encode([PROBE_TEXT] * batch, max_length=seq_len)))
    forward_peak = peak_rss_bytes()
    out: dict[str, Any] = {
        "runtime": runner.runtime, "cold_start_s": round(first_answer - started, 4) if started else None,
        "cold_start_parts_s": {"imports": round(imported_at - started, 4), "load": round(loaded_at - imported_at, 4),
                               "first_answer": round(first_answer - loaded_at, 4)} if started else None,
        "rss_imports_bytes": after_imports, "rss_load_bytes": after_load, "rss_serve_bytes": max(warm_peak, forward_peak),
        "rss_now_warm_bytes": current_warm, "rss_forward_peak_bytes": forward_peak if reset else None,
        "gpu_peak_bytes": None, "rss_now_imports_bytes": current_imports, "rss_now_load_bytes": current_load,
        "rss_now_serve_bytes": current_rss_bytes(), "imported_torch": "torch" in sys.modules,
        "imported_transformers": "transformers" in sys.modules, "threads": threads, "device": str(runner.device),
        "model_thread": threading.current_thread().name,
    }
    if cuda:
        import torch

        out["gpu_peak_bytes"] = int(torch.cuda.max_memory_allocated())
    return out


MEDIAN_KEYS = ("cold_start_s", "rss_imports_bytes", "rss_load_bytes", "rss_serve_bytes", "rss_now_imports_bytes",
               "rss_now_load_bytes", "rss_now_serve_bytes", "gpu_peak_bytes", "rss_now_warm_bytes",
               "rss_forward_peak_bytes")


def measure_memory(
    variant_dir: str | Path, *, seq_len: int = 64, batch: int = 32, compiled: bool = False,
    device: str | None = None, timeout_s: float = 600.0, threads: int | None = None, rounds: int = 1,
) -> dict[str, Any]:
    """Measure in ``rounds`` fresh subprocesses, one after another; return the JSON record, with the median of
    each figure over the rounds and the per-round load and serve peaks (``rss_*_bytes_rounds``) where
    ``rounds`` > 1 (``cold_start_s`` counts from just before each process starts)."""
    records = [_measure_once(variant_dir, seq_len=seq_len, batch=batch, compiled=compiled, device=device,
                             timeout_s=timeout_s, threads=threads) for _ in range(max(1, rounds))]
    out = dict(records[-1])
    if len(records) > 1:
        for key, value in median_figures(records, MEDIAN_KEYS).items():
            out[key] = round(value, 4) if key == "cold_start_s" else int(value)
        out["rss_load_bytes_rounds"] = [r["rss_load_bytes"] for r in records]
        out["rss_serve_bytes_rounds"] = [r["rss_serve_bytes"] for r in records]
    out["rounds"] = len(records)
    return out


def _measure_once(
    variant_dir: str | Path, *, seq_len: int, batch: int, compiled: bool, device: str | None, timeout_s: float,
    threads: int | None,
) -> dict[str, Any]:
    """One fresh subprocess's JSON record."""
    cmd = [sys.executable, "-P", str(Path(__file__).resolve()), str(variant_dir), "--seq-len", str(seq_len),
           "--batch", str(batch)]
    if compiled:
        cmd.append("--compiled")
    if device:
        cmd += ["--device", device]
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false")
    if threads is not None:
        env["TIGHTFIT_THREADS"] = str(threads)
    cmd += ["--started", repr(time.time())]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise VariantError(f"memory measurement of {variant_dir} failed: {' | '.join(tail)}")
    return dict(json.loads(lines[-1]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("variant_dir")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--compiled", action="store_true")
    parser.add_argument("--device", default=None)
    parser.add_argument("--started", type=float, default=None, help="time.time() when the parent started us")
    args = parser.parse_args(argv)
    record = _serve_once(args.variant_dir, args.seq_len, args.batch, args.compiled, args.device, args.started)
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
