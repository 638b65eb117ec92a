"""Does distillation's hidden-state term (``distill:hidden=w``) help the 4-layer lean student?

Builds the same student with the logits-only loss and with the layer-mapped hidden-state term at two
weights, in parallel processes (1 thread each), from the compression benchmark's cached fine-tuned
baseline (run ``benchmarks/compression.py`` first), and scores each on the validation split (where a
weight would be chosen) and the whole test split. Accuracy only: no timing, so a busy machine does not
change the figures. Writes ``benchmarks/results/distill_hidden.json``.

    python benchmarks/distill_hidden.py [--steps 840] [--weights 0,1,3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_results

STUDENT = "drop_layers:keep=4|prune_structured:heads=0.5,ffn=0.75|prune_vocab|"


def build_and_score(base: str, out: str, chain: str) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from tightfit.compress import build_variant
    from tightfit.compress.variant import MANIFEST, load_variant, read_manifest
    from tightfit.data import load_dataset
    from tightfit.measure.quality import evaluate
    from tightfit.spec import VariantSpec

    data = load_dataset("rotten_tomatoes", seed=0)
    started = time.perf_counter()
    resumed = (Path(out) / MANIFEST).exists()  # a rerun resumes from the variants already built
    if not resumed:
        build_variant(base, VariantSpec.parse(chain, name=Path(out).name), out, data=data, progress=False)
    built = read_manifest(out)
    if built["chain"] != VariantSpec.parse(chain).chain:
        raise SystemExit(f"{out} holds {built['chain']!r}, not {chain!r}: remove it and rerun")
    row: dict[str, Any] = {"chain": chain, "built": built["created"],
                           "build_s": None if resumed else round(time.perf_counter() - started, 1)}
    variant = load_variant(out, device="cpu", threads=1)
    for split in ("validation", "test"):
        frame = getattr(data, split)
        quality = evaluate(variant.model, variant.tokenizer, frame, "classifier", batch_size=32, max_length=64,
                           runner=variant.runner)
        row[f"{split}_accuracy"], row[f"{split}_rows"] = round(quality["accuracy"], 4), len(frame)
    print(row, flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=840, help="distillation steps (batch 32)")
    parser.add_argument("--weights", default="0,1,3", help="hidden-state weights to compare (0 = logits only)")
    args = parser.parse_args(argv)
    from tightfit.assets import cache_dir

    base = cache_dir() / "bench-compression" / "baseline-ft280"
    if not base.is_dir():
        raise SystemExit(f"no cached baseline at {base}: run benchmarks/compression.py first")
    weights = [float(w) for w in args.weights.split(",")]
    chains = [STUDENT + (f"distill:steps={args.steps},hidden={w:g}" if w else f"distill:steps={args.steps}")
              for w in weights]
    outs = [str(cache_dir() / "bench-distill-hidden" / f"hidden-{w:g}") for w in weights]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=len(chains), mp_context=context) as pool:
        rows = list(pool.map(build_and_score, [str(base)] * len(chains), outs, chains))
    write_results("distill_hidden", {
        "student": STUDENT + "distill", "distill_steps": args.steps,
        "rows": [{"hidden": w, **row} for w, row in zip(weights, rows, strict=True)],
    }, protocol={"command": "python benchmarks/distill_hidden.py " + " ".join(argv or sys.argv[1:]),
                 "threads_per_build": 1, "parallel_builds": len(chains)})


if __name__ == "__main__":
    main()
