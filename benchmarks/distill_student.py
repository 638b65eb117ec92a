"""What recovers the 4-layer lean student's accuracy: longer distillation, a higher learning rate, or the
hidden-state term (``distill:hidden=w``)?

Builds the same student (``drop_layers:keep=4|prune_structured:heads=0.5,ffn=0.75|prune_vocab|distill``)
once per ``steps:hidden[:lr]`` run (lr defaults to distill's 1e-4), in parallel processes (1 thread each), from the compression benchmark's
cached fine-tuned baseline (run ``benchmarks/compression.py`` first), and scores each on the validation
split (where a setting would be chosen) and the whole test split, beside the teacher's own. Accuracy only: no timing, so a busy
machine does not change the figures. A rerun reuses the students built after the current baseline. Writes
``benchmarks/results/distill_student.json``.

    python benchmarks/distill_student.py [--runs 5040:0,2520:0:3e-4,2520:0,840:0,840:1]
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

from _common import is_current, write_results

STUDENT = "drop_layers:keep=4|prune_structured:heads=0.5,ffn=0.75|prune_vocab|"


def build_and_score(base: str, out: str, chain: str) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from tightfit.compress import build_variant
    from tightfit.compress.variant import MANIFEST, read_manifest
    from tightfit.data import load_dataset
    from tightfit.spec import VariantSpec

    data = load_dataset("rotten_tomatoes", seed=0)
    started = time.perf_counter()
    # a rerun resumes from the students already built, unless the baseline was rebuilt after them
    spec = VariantSpec.parse(chain, name=Path(out).name)
    resumed = is_current(Path(out), spec.chain, Path(base))
    if not resumed:
        if (Path(out) / MANIFEST).exists():
            print(f"{out} was built before its baseline {base} or from another chain: rebuilding it", flush=True)
        build_variant(base, spec, out, data=data, progress=False)
    built = read_manifest(out)
    row: dict[str, Any] = {"chain": chain, "built": built["created"],
                           "build_s": None if resumed else round(time.perf_counter() - started, 1),
                           **score(out, data)}
    print(row, flush=True)
    return row


def score(path: str, data: Any = None) -> dict[str, Any]:
    """Accuracy of the variant at ``path`` on the validation and the whole test split (one thread)."""
    import torch

    torch.set_num_threads(1)
    from tightfit.compress.variant import load_variant
    from tightfit.data import load_dataset
    from tightfit.measure.quality import evaluate

    data = data if data is not None else load_dataset("rotten_tomatoes", seed=0)
    variant = load_variant(path, device="cpu", threads=1)
    row: dict[str, Any] = {}
    for split in ("validation", "test"):
        frame = getattr(data, split)
        quality = evaluate(variant.model, variant.tokenizer, frame, "classifier", batch_size=32, max_length=64,
                           runner=variant.runner)
        row[f"{split}_accuracy"], row[f"{split}_rows"] = round(quality["accuracy"], 4), len(frame)
    return row


def _run(item: str) -> tuple[int, float, float]:
    """``steps:hidden[:lr]`` -> (steps, hidden weight, lr or 0 for distill's default)."""
    steps, hidden, *lr = item.split(":")
    if len(lr) > 1:
        raise ValueError(item)
    return int(steps), float(hidden), float(lr[0]) if lr else 0.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="840:0,840:1,840:3,1680:0,2520:0",
                        help="comma-separated steps:hidden[:lr] runs (batch 32; hidden 0 = logits only; lr 1e-4)")
    parser.add_argument("--jobs", type=int, default=2, help="students built at once (1 thread each)")
    args = parser.parse_args(argv)
    from tightfit.assets import cache_dir

    base = cache_dir() / "bench-compression" / "baseline-ft280"
    if not base.is_dir():
        raise SystemExit(f"no cached baseline at {base}: run benchmarks/compression.py first")
    try:
        runs = [_run(item) for item in args.runs.split(",")]
    except ValueError:
        raise SystemExit(f"--runs takes steps:hidden[:lr] runs like 840:0,1680:1,2520:0:3e-4, got {args.runs!r}") from None
    chains = [STUDENT + f"distill:steps={steps}" + (f",hidden={w:g}" if w else "") + (f",lr={lr:g}" if lr else "")
              for steps, w, lr in runs]
    outs = [str(cache_dir() / "bench-distill-student" / (f"steps-{steps}-hidden-{w:g}" + (f"-lr-{lr:g}" if lr else "")))
            for steps, w, lr in runs]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=context) as pool:
        rows = list(pool.map(build_and_score, [str(base)] * len(chains), outs, chains))
        teacher = pool.submit(score, str(base)).result()  # the same splits, so each row's gap can be read
    write_results("distill_student", {
        "student": STUDENT + "distill", "teacher": "fp32 baseline-ft280 of benchmarks/compression.py",
        "teacher_accuracy": teacher,
        "rows": [{"steps": steps, "hidden": w, "lr": lr or 1e-4, **row}
                 for (steps, w, lr), row in zip(runs, rows, strict=True)],
    }, protocol={"command": "python benchmarks/distill_student.py " + " ".join(argv or sys.argv[1:]),
                 "threads_per_build": 1, "parallel_builds": max(1, args.jobs)})


if __name__ == "__main__":
    main()
