"""Compression benchmark: every default MiniLM variant against the fine-tuned fp32 baseline, in one run.

    python benchmarks/compression.py [--train-steps 280] [--distill-steps 840] [--eval-rows 0] [--rounds 5]

Builds (and caches, so a rerun resumes) the fine-tuned baseline and each variant under
$TIGHTFIT_CACHE/bench-compression, then measures them side by side on the Rotten Tomatoes test split:
accuracy, parameters, weight bytes on disk, and p50 CPU latency at batch 1 and 32 (seq_len 64, padded),
with baseline and variants interleaved round by round. Compiled variants are warmed up (compiled) first.
Writes benchmarks/results/compression.json and prints the ratios.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import median, write_results

SEQ_LEN = 64


def baseline_dir(root: Path, data: Any, steps: int) -> Path:
    """The fine-tuned fp32 baseline (cached by its step count)."""
    from tightfit.assets import load_model
    from tightfit.compress import quick_finetune
    from tightfit.compress.variant import MANIFEST, save_variant
    from tightfit.spec import VariantSpec

    target = root / f"baseline-ft{steps}"
    if (target / MANIFEST).exists():
        return target
    loaded = load_model("minilm")
    started = time.perf_counter()
    model = quick_finetune(loaded.model, loaded.tokenizer, data.train, steps=steps, batch_size=32, lr=1e-4,
                           seed=0, progress=True)
    save_variant(model, loaded.tokenizer, target, VariantSpec.parse("fp32"), base_model="minilm",
                 kind="classifier", extra={"finetune": {"steps": steps, "batch_size": 32, "lr": 1e-4,
                                                        "seconds": round(time.perf_counter() - started, 1)}})
    return target


def variant_specs(distill_steps: int) -> list[Any]:
    from tightfit.compress import default_variant_set
    from tightfit.spec import VariantSpec

    out = []
    for spec in default_variant_set("classifier"):
        chain = spec.chain.replace("distill", f"distill:steps={distill_steps}")
        out.append(VariantSpec.parse(chain, name=spec.name))
    return out


def _build_one(base: str, chain: str, name: str, target: str, data: Any, threads: int) -> float:
    """Build one variant in a worker process; returns the seconds it took."""
    import torch

    from tightfit.compress import build_variant
    from tightfit.spec import VariantSpec

    torch.set_num_threads(threads)
    started = time.perf_counter()
    build_variant(base, VariantSpec.parse(chain, name=name), target, data=data, progress=False)
    return round(time.perf_counter() - started, 1)


def _is_current(target: Path, chain: str, source: Path) -> bool:
    """A cached variant is reused only if it has this chain and was built after its source (a rebuilt parent,
    e.g. with more distillation steps, makes its children stale)."""
    from tightfit.compress.variant import MANIFEST, read_manifest

    if not (target / MANIFEST).exists():
        return False
    built = read_manifest(target)
    return bool(built["chain"] == chain and built["created"] >= read_manifest(source)["created"])


def build_all(
    root: Path, base: Path, specs: list[Any], data: Any, jobs: int, threads: int
) -> tuple[dict[str, Path], dict[str, str], dict[str, float]]:
    """Build (or reuse) every variant, in parallel processes. A spec whose chain extends another spec's
    chain is built from that variant's directory (its parent), so shared prefixes such as a distilled
    student are trained once. Returns the dirs, the full chains and the build seconds."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor


    dirs: dict[str, Path] = {"fp32": base}
    chains = {s.name: s.chain for s in specs}
    plan: dict[str, tuple[str | None, str]] = {}  # name -> (parent name or None, remaining chain)
    for spec in specs:
        if not spec.steps:
            continue
        parents = [p for p in specs if p.steps and p.name != spec.name and spec.chain.startswith(p.chain + "|")]
        parent = max(parents, key=lambda p: len(p.chain), default=None)
        plan[spec.name] = (parent.name, spec.chain[len(parent.chain) + 1 :]) if parent else (None, spec.chain)
    seconds: dict[str, float] = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=context) as pool:
        for wave in (False, True):  # first the variants built from the baseline, then their children
            futures = {}
            for name, (parent, chain) in plan.items():
                if (parent is not None) != wave:
                    continue
                source = base if parent is None else dirs[parent]
                target = root / base.name / name
                dirs[name] = target
                if _is_current(target, chain, source):
                    continue
                futures[name] = pool.submit(_build_one, str(source), chain, name, str(target), data, threads)
            for name, future in futures.items():
                seconds[name] = future.result()
                print(f"built {name} in {seconds[name]} s", flush=True)
    return dirs, chains, seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-steps", type=int, default=280, help="baseline fine-tune steps (batch 32)")
    parser.add_argument("--distill-steps", type=int, default=840,
                        help="distillation steps (batch 32; 840 = 3 epochs of the train split)")
    parser.add_argument("--eval-rows", type=int, default=0, help="test rows to score (0 = the whole split)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="use this fine-tuned fp32 variant dir as the baseline instead of fine-tuning one")
    parser.add_argument("--jobs", type=int, default=3, help="variants built in parallel processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadier on a busy machine)")
    parser.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from tightfit.assets import cache_dir
    from tightfit.compress._torch import quiet_transformers
    from tightfit.compress.variant import load_variant, read_manifest
    from tightfit.data import load_dataset
    from tightfit.measure.profile import count_params, fixed_inputs, forward_for, latency_ms
    from tightfit.measure.quality import evaluate

    quiet_transformers()
    root = cache_dir() / "bench-compression"
    data = load_dataset("rotten_tomatoes", seed=0)
    base = args.baseline or baseline_dir(root, data, args.train_steps)
    base_info = read_manifest(base)["extra"].get("finetune", {})
    specs = variant_specs(args.distill_steps)
    if args.only:
        keep = set(args.only.split(","))
        specs = [s for s in specs if s.name in keep or s.name == "fp32"]
    dirs, chains, build_seconds = build_all(root, base, specs, data, args.jobs, args.threads)

    frame = data.test if args.eval_rows <= 0 else data.test.head(args.eval_rows)
    loaded: dict[str, Any] = {}
    rows: dict[str, dict[str, Any]] = {}
    texts = data.test["text"].astype(str).tolist()
    for name, path in dirs.items():
        variant = load_variant(path, device="cpu")
        forward = forward_for(variant.model, variant.run_compiled)
        inputs = {b: fixed_inputs(variant.tokenizer, texts, b, SEQ_LEN) for b in (1, 32)}
        started = time.perf_counter()
        for batch in (1, 32):
            latency_ms(forward, inputs[batch], repeats=0, warmup=2)  # compiles the fixed shapes once
        quality = evaluate(variant.model, variant.tokenizer, frame, "classifier", batch_size=32,
                           max_length=SEQ_LEN, forward=forward)
        total, nonzero = count_params(variant.model)
        weights = path / variant.manifest["weights"]["file"]
        rows[name] = {
            "name": name, "chain": chains[name], "accuracy": quality["accuracy"],
            "f1_macro": quality["f1_macro"], "params": total, "params_nonzero": nonzero,
            "disk_bytes": weights.stat().st_size, "compiled": variant.run_compiled,
            "warmup_and_eval_s": round(time.perf_counter() - started, 1), "b1": [], "b32": [],
        }
        loaded[name] = (forward, inputs)
        print(f"{name}: accuracy {quality['accuracy']:.4f}, {total:,} params, {rows[name]['disk_bytes']:,} B",
              flush=True)

    for round_no in range(args.rounds):  # interleave: every variant once per round
        for name, (forward, inputs) in loaded.items():
            rows[name]["b1"].extend(latency_ms(forward, inputs[1], repeats=5, warmup=1))
            rows[name]["b32"].extend(latency_ms(forward, inputs[32], repeats=2, warmup=1))
        print(f"timing round {round_no + 1}/{args.rounds} done", flush=True)

    base_row = rows["fp32"]
    base_b32 = median(base_row["b32"])
    variants = []
    for row in rows.values():
        b1, b32 = median(row.pop("b1")), median(row.pop("b32"))
        row.update({
            "latency_ms_b1": round(b1, 3), "latency_ms_b32": round(b32, 3),
            "size_ratio": round(base_row["disk_bytes"] / row["disk_bytes"], 3),
            "speedup_b32": round(base_b32 / b32, 3),
            "accuracy_drop": round(100.0 * (base_row["accuracy"] - row["accuracy"]), 2),
            "param_reduction": round(1.0 - row["params"] / base_row["params"], 4),
        })
        variants.append(row)
    goals = evaluate_goals(variants)
    write_results("compression", {
        "dataset": "rotten_tomatoes", "split": "test", "eval_rows": len(frame), "seq_len": SEQ_LEN,
        "torch_threads": torch.get_num_threads(), "baseline": {"variant": "fp32 (eager)", "finetune": base_info},
        "distill_steps": args.distill_steps, "timing_rounds": args.rounds,
        "build_seconds": build_seconds, "variants": variants, "goals": goals,
    })
    print(f"{'variant':32} {'acc':>7} {'drop':>6} {'params':>11} {'size x':>7} {'b1 ms':>8} {'b32 ms':>8} {'speed x':>7}")
    for v in variants:
        print(f"{v['name']:32} {v['accuracy']:7.4f} {v['accuracy_drop']:6.2f} {v['params']:11,} "
              f"{v['size_ratio']:7.2f} {v['latency_ms_b1']:8.2f} {v['latency_ms_b32']:8.2f} {v['speedup_b32']:7.2f}")
    print(goals)
    print("\n| variant | chain | accuracy | drop (pts) | params | disk bytes | size x | b1 ms | b32 ms | speed-up b32 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for v in variants:
        print(f"| {v['name']} | `{v['chain']}` | {v['accuracy']:.4f} | {v['accuracy_drop']:.2f} | {v['params']:,} | "
              f"{v['disk_bytes']:,} | {v['size_ratio']:.2f} | {v['latency_ms_b1']:.1f} | {v['latency_ms_b32']:.1f} | "
              f"{v['speedup_b32']:.2f} |")


def evaluate_goals(variants: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's two goals, checked honestly against the measured rows."""
    close = [v for v in variants if v["name"] != "fp32" and v["accuracy_drop"] <= 1.0]
    best = max(close, key=lambda v: (v["size_ratio"] >= 4 and v["speedup_b32"] >= 3, v["speedup_b32"]), default=None)
    students = [v for v in variants if "prune_structured" in v["chain"] or "drop_layers" in v["chain"]]
    students = [v for v in students if "distill" in v["chain"]]
    best_student = max(students, key=lambda v: (v["param_reduction"] >= 0.5 and v["speedup_b32"] >= 2
                                                and v["accuracy_drop"] <= 2, v["speedup_b32"]), default=None)
    return {
        "best_within_1_point": best and best["name"],
        "best_within_1_point_met": bool(best and best["size_ratio"] >= 4 and best["speedup_b32"] >= 3),
        "student": best_student and best_student["name"],
        "student_met": bool(best_student and best_student["param_reduction"] >= 0.5
                            and best_student["speedup_b32"] >= 2 and best_student["accuracy_drop"] <= 2),
    }


if __name__ == "__main__":
    main()
