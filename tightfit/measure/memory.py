"""Peak memory of a variant, measured in a fresh Python process (a peak never falls within a process).

Run as ``python -m tightfit.measure.memory VARIANT_DIR --seq-len 64 --batch 32 [--compiled]``; prints one
JSON line: peak RSS (VmHWM) after imports, after loading, after serving one batch, the current RSS at
the same points (the model's own share is ``rss_now_load - rss_now_imports``), and the GPU peak where present.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tightfit.errors import VariantError
from tightfit.memory.rss import current_rss_bytes, peak_rss_bytes


def _serve_once(variant_dir: str, seq_len: int, batch: int, compiled: bool, device: str | None) -> dict[str, Any]:
    import torch

    torch.set_num_threads(int(os.environ.get("TIGHTFIT_THREADS", "2")))
    import transformers  # noqa: F401  (count library imports separately from the model)

    from tightfit.compress._torch import torchao_quantization
    from tightfit.compress.variant import load_variant

    torchao_quantization()
    after_imports, current_imports = peak_rss_bytes(), current_rss_bytes()
    variant = load_variant(variant_dir, device=device)
    after_load, current_load = peak_rss_bytes(), current_rss_bytes()
    model, tokenizer = variant.model, variant.tokenizer
    dev = next(model.parameters()).device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    texts = ["a movie review that is long enough to fill several tokens of the input"] * batch
    inputs = tokenizer(texts, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
    inputs = {k: v.to(dev) for k, v in inputs.items()}
    forward = torch.compile(model, dynamic=False) if compiled else model
    with torch.inference_mode():
        forward(**inputs)
    out: dict[str, Any] = {"rss_imports_bytes": after_imports, "rss_load_bytes": after_load,
                           "rss_serve_bytes": peak_rss_bytes(), "gpu_peak_bytes": None,
                           "rss_now_imports_bytes": current_imports, "rss_now_load_bytes": current_load,
                           "rss_now_serve_bytes": current_rss_bytes()}
    if dev.type == "cuda":
        out["gpu_peak_bytes"] = int(torch.cuda.max_memory_allocated())
    return out


def measure_memory(
    variant_dir: str | Path, *, seq_len: int = 64, batch: int = 32, compiled: bool = False,
    device: str | None = None, timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Run the measurement in a fresh subprocess and return its JSON record."""
    cmd = [sys.executable, "-m", "tightfit.measure.memory", str(variant_dir), "--seq-len", str(seq_len),
           "--batch", str(batch)]
    if compiled:
        cmd.append("--compiled")
    if device:
        cmd += ["--device", device]
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false")
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
    args = parser.parse_args(argv)
    record = _serve_once(args.variant_dir, args.seq_len, args.batch, args.compiled, args.device)
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
