"""Compression benchmark: every default MiniLM variant (torch and ONNX Runtime) against the fine-tuned fp32
baseline, beside fp32 + torch.compile (``fp32-compile``, the fair baseline for compiled variants) and the peer a
user would pick instead (``peer-ort-int8``: the fine-tuned fp32 model exported to ONNX with ORT's transformer
fusions and ORT's default dynamic int8), in one run.

    python benchmarks/compression.py                  # the full protocol (quiet machine, about 1.5 h on 2 cores)
    python benchmarks/compression.py --quick          # a reduced protocol that proves the script end to end

Builds (and caches, so a rerun resumes) the fine-tuned baseline and each variant under
$TIGHTFIT_CACHE/bench-compression, then measures them side by side on the Rotten Tomatoes test split:
accuracy, parameters, weight bytes on disk, p50 CPU latency at batch 1 and 32 (seq_len 64, padded; every
runtime on ``--threads`` threads), with all variants interleaved round by round (compiled ones warmed up
first), and the deployed process: peak RSS serving batch 32 and the cold start (process start to first
answer), each in a fresh process that imports only what the variant's replica imports, repeated
``--mem-rounds`` times. Writes benchmarks/results/compression.json: per variant ``runtime``,
``peak_rss_bytes``, ``cold_start_s`` and the ratios; at the top ``lean_best`` (the variant meeting the lean
goal, or the closest) with ``rss_ratio_vs_fp32``, ``speedup_b32``, ``speedup_vs_peer_ort_int8``,
``size_ratio``, ``cold_start_s`` and ``accuracy_drop``.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import is_current, median, spread, write_results

SEQ_LEN = 64
# A row may fix its own distillation (``distill:steps=n``); a bare ``distill`` takes ``--distill-steps``.
STUDENT_4LAYER = "drop_layers:keep=4|prune_structured:heads=0.5,ffn=0.75|prune_vocab|distill:steps=5040"
# Rows measured beside the default set: baselines a user would pick instead of a tightfit variant.
EXTRA_ROWS = {
    "fp32-compile": "compile",  # fp32 under torch.compile: the fair baseline for compiled variants
    "peer-ort-int8": "onnx_int8_dynamic:per_channel=false",  # full model -> ONNX + ORT fusions + ORT's default int8
    # half the depth on top of the lean student: where the 4x speed goal meets the 1-point accuracy goal
    "student-3layer-lean-ort-int8":
        "drop_layers:keep_every=2|prune_structured:heads=0.5,ffn=0.75|prune_vocab|distill|onnx_int8_dynamic",
    # between the two: two thirds of the depth (per-layer time dominates the 6-layer lean student's 3x), distilled
    # longer (its own steps: benchmarks/distill_student.py measured what they recover), in torch and under ORT int8
    "student-4layer-lean-distilled": STUDENT_4LAYER,
    "student-4layer-lean-ort-int8": STUDENT_4LAYER + "|onnx_int8_dynamic",
}
QUICK_ROWS = ("fp32", "fp32-compile", "peer-ort-int8", "ort-int8", "structured-lean-distilled", "structured-ort-int8",
              "structured-ort-int8-static")
# The lean goal: one variant within 1 accuracy point of fp32 that is at once all of these.
LEAN_GOALS = {"speedup_b32": 4.0, "speedup_vs_peer_ort_int8": 1.5, "size_ratio": 8.0, "rss_ratio_vs_fp32": 0.30,
              "cold_start_s": 1.0, "accuracy_drop": 1.0}
AT_MOST = ("rss_ratio_vs_fp32", "cold_start_s", "accuracy_drop")


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
    from tightfit.compress.build import LEAN_STUDENT
    from tightfit.spec import VariantSpec

    rows = [(s.name, s.chain) for s in default_variant_set("classifier", device="cpu")]
    # the lean student in torch: its ONNX rows build from it (one distillation), and it shows the runtime's share
    rows += [*EXTRA_ROWS.items(), ("structured-lean-distilled", LEAN_STUDENT)]
    return [VariantSpec.parse(re.sub(r"\bdistill(?=\||$)", f"distill:steps={distill_steps}", chain), name=name)
            for name, chain in rows]


def _build_one(base: str, chain: str, name: str, target: str, data: Any, threads: int) -> float:
    """Build one variant in a worker process; returns the seconds it took."""
    import torch

    from tightfit.compress import build_variant
    from tightfit.spec import VariantSpec

    torch.set_num_threads(threads)
    started = time.perf_counter()
    build_variant(base, VariantSpec.parse(chain, name=name), target, data=data, progress=False)
    return round(time.perf_counter() - started, 1)


def _distill_steps(chain: str) -> int:
    """The distillation steps a chain asks for (0 without ``distill``): how long its build takes."""
    found = re.search(r"\bdistill:steps=(\d+)", chain)
    return int(found.group(1)) if found else 0


def build_all(
    root: Path, base: Path, specs: list[Any], data: Any, jobs: int, threads: int
) -> tuple[dict[str, Path], dict[str, str], dict[str, float]]:
    """Build (or reuse) every variant, in parallel processes. A spec whose chain extends another spec's
    chain is built from that variant's directory (its parent), so shared prefixes such as a distilled
    student are trained once. Returns the dirs, the full chains and the build seconds."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed


    dirs: dict[str, Path] = {"fp32": base}
    chains = {s.name: s.chain for s in specs}
    plan: dict[str, tuple[str | None, str]] = {}  # name -> (parent name or None, remaining chain)
    for spec in specs:
        if not spec.steps:
            continue
        parents = [p for p in specs if p.steps and p.name != spec.name and spec.chain.startswith(p.chain + "|")]
        parent = max(parents, key=lambda p: len(p.chain), default=None)
        plan[spec.name] = (parent.name, spec.chain[len(parent.chain) + 1 :]) if parent else (None, spec.chain)
    dirs.update({name: root / base.name / name for name in plan})  # in the rows' order, whatever the build order
    seconds: dict[str, float] = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=context) as pool:
        for wave in (False, True):  # first the variants built from the baseline, then their children
            futures = {}
            # the longest distillation first, so the slowest build never waits for a free worker at the end
            for name, (parent, chain) in sorted(plan.items(), key=lambda item: -_distill_steps(item[1][1])):
                if (parent is not None) != wave:
                    continue
                source = base if parent is None else dirs[parent]
                target = dirs[name]
                if is_current(target, chain, source):
                    continue
                futures[name] = pool.submit(_build_one, str(source), chain, name, str(target), data, threads)
            names = {future: name for name, future in futures.items()}
            for future in as_completed(names):  # recorded as each finishes, so a stopped build keeps its figures
                name = names[future]
                seconds[name] = future.result()
                print(f"built {name} in {seconds[name]} s", flush=True)
                _record_build(root / base.name, name, seconds[name])
    return dirs, chains, _recorded_builds(root / base.name, dirs)


def _record_build(folder: Path, name: str, seconds: float) -> None:
    """Keep each build's seconds beside the cache, so a later run that reuses it still reports them."""
    import json

    path = folder / "build_seconds.json"
    known = json.loads(path.read_text()) if path.exists() else {}
    known[name] = seconds
    path.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n")


def _recorded_builds(folder: Path, dirs: dict[str, Path]) -> dict[str, float]:
    import json

    path = folder / "build_seconds.json"
    known = json.loads(path.read_text()) if path.exists() else {}
    return {name: known[name] for name in dirs if name in known}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="reduced protocol: short fine-tune and distillation, 400 test rows, 2 rounds, the lean rows")
    parser.add_argument("--train-steps", type=int, default=None, help="baseline fine-tune steps (batch 32; 280)")
    parser.add_argument("--distill-steps", type=int, default=None,
                        help="distillation steps (batch 32; 840 = 3 epochs of the train split)")
    parser.add_argument("--eval-rows", type=int, default=None, help="test rows to score (0 = the whole split)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (5)")
    parser.add_argument("--mem-rounds", type=int, default=None, help="fresh-process memory/cold-start rounds (3)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="use this fine-tuned fp32 variant dir as the baseline instead of fine-tuning one")
    parser.add_argument("--jobs", type=int, default=3, help="variants built in parallel processes")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads of every runtime (torch and ONNX Runtime; 1 is steadier on a busy machine)")
    parser.add_argument("--build-only", action="store_true",
                        help="build (or resume building) the baseline and variants, then stop: measure later, on a "
                             "quiet machine, in a run whose build step finds everything cached")
    parser.add_argument("--only", default="", help="comma-separated variant names (default: all; --quick: the lean rows)")
    args = parser.parse_args(argv)
    full = {"train_steps": 280, "distill_steps": 840, "eval_rows": 0, "rounds": 5, "mem_rounds": 3}
    quick = {"train_steps": 40, "distill_steps": 60, "eval_rows": 400, "rounds": 2, "mem_rounds": 1}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    import os

    os.environ["TIGHTFIT_THREADS"] = str(args.threads)  # fresh measurement processes use the same threads
    import torch

    torch.set_num_threads(args.threads)
    from tightfit.assets import cache_dir
    from tightfit.compress._torch import quiet_transformers
    from tightfit.compress.variant import read_manifest
    from tightfit.data import load_dataset

    quiet_transformers()
    root = cache_dir() / "bench-compression"
    data = load_dataset("rotten_tomatoes", seed=0)
    base = args.baseline or baseline_dir(root, data, args.train_steps)
    base_info = read_manifest(base)["extra"].get("finetune", {})
    specs = variant_specs(args.distill_steps)
    only = set(args.only.split(",")) if args.only else (set(QUICK_ROWS) if args.quick else set())
    if only:
        specs = [s for s in specs if s.name in only or s.name == "fp32"]
    dirs, chains, build_seconds = build_all(root, base, specs, data, args.jobs, args.threads)
    if args.build_only:
        print(f"built {len(dirs)} variants under {root / base.name} (seconds: {build_seconds})")
        return
    frame = data.test if args.eval_rows <= 0 else data.test.head(args.eval_rows)
    rows = measure_rows(dirs, chains, data, frame, args)
    variants = summarise(rows)
    lean = lean_best(variants)
    write_results("compression", {
        "dataset": "rotten_tomatoes", "split": "test", "eval_rows": len(frame), "seq_len": SEQ_LEN,
        "protocol": "quick" if args.quick else "full", "threads": args.threads,
        "torch_threads": torch.get_num_threads(), "baseline": {"variant": "fp32 (eager)", "finetune": base_info},
        "distill_steps": args.distill_steps, "timing_rounds": args.rounds, "memory_rounds": args.mem_rounds,
        "build_seconds": build_seconds, **lean, "lean_goals": LEAN_GOALS,
        "variants": variants, "goals": evaluate_goals(variants),
    })
    print_table(variants, lean)


def measure_rows(dirs: dict[str, Path], chains: dict[str, str], data: Any, frame: Any, args: Any) -> dict[str, Any]:
    """Accuracy, size, latency (interleaved rounds) and the deployed process (fresh processes) of every row."""
    from tightfit.compress.variant import load_variant
    from tightfit.measure.memory import measure_memory
    from tightfit.measure.profile import count_params, latency_ms
    from tightfit.measure.quality import evaluate

    texts = data.test["text"].astype(str).tolist()
    rows: dict[str, dict[str, Any]] = {}
    runners: dict[str, Any] = {}
    for name, path in dirs.items():
        variant = load_variant(path, device="cpu", threads=args.threads)
        runner = variant.runner
        inputs = {b: runner.encode([texts[i % len(texts)] for i in range(b)], max_length=SEQ_LEN) for b in (1, 32)}
        started = time.perf_counter()
        for batch in (1, 32):
            latency_ms(runner.forward, inputs[batch], repeats=0, warmup=2)  # compiles the fixed shapes once
        quality = evaluate(variant.model, variant.tokenizer, frame, "classifier", batch_size=32, max_length=SEQ_LEN,
                           runner=runner)
        counts = count_params(variant.model) if variant.model is not None else (
            (variant.manifest.get("onnx") or {}).get("source_params") or (None, None))
        total, nonzero = counts[0], counts[1]
        weights = path / variant.manifest["weights"]["file"]
        rows[name] = {
            "name": name, "chain": chains.get(name, "fp32"), "runtime": variant.runtime,
            "accuracy": quality["accuracy"], "f1_macro": quality["f1_macro"], "params": total,
            "params_nonzero": nonzero, "disk_bytes": weights.stat().st_size, "compiled": variant.run_compiled,
            "warmup_and_eval_s": round(time.perf_counter() - started, 1), "b1": [], "b32": [], "rss": [], "cold": [],
        }
        runners[name] = (runner, inputs)
        print(f"{name} ({variant.runtime}): accuracy {quality['accuracy']:.4f}, {rows[name]['disk_bytes']:,} B",
              flush=True)
    for round_no in range(args.rounds):  # interleave: every variant once per round
        for name, (runner, inputs) in runners.items():
            rows[name]["b1"].extend(latency_ms(runner.forward, inputs[1], repeats=5, warmup=1))
            rows[name]["b32"].extend(latency_ms(runner.forward, inputs[32], repeats=2, warmup=1))
        print(f"timing round {round_no + 1}/{args.rounds} done", flush=True)
    for round_no in range(args.mem_rounds):  # fresh processes, interleaved too
        for name, path in dirs.items():
            mem = measure_memory(path, seq_len=SEQ_LEN, batch=32, compiled=rows[name]["compiled"], device="cpu",
                                 threads=args.threads)
            rows[name]["rss"].append(int(mem["rss_serve_bytes"]))
            rows[name]["cold"].append(float(mem["cold_start_s"]))
            rows[name]["imported_torch"] = bool(mem["imported_torch"])
        print(f"memory round {round_no + 1}/{args.mem_rounds} done", flush=True)
    return rows


def summarise(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians, spreads and the ratios against fp32 eager (and against the peer)."""
    base_row = rows["fp32"]
    base_b32, base_rss = median(base_row["b32"]), median(base_row["rss"])
    peer_b32 = median(rows["peer-ort-int8"]["b32"]) if "peer-ort-int8" in rows else None
    variants = []
    for row in rows.values():
        b1, b32 = median(row["b1"]), median(row["b32"])
        rss, cold = median(row["rss"]), median(row["cold"])
        row.update({
            "latency_ms_b1": round(b1, 3), "latency_ms_b32": round(b32, 3),
            "latency_ms_b32_spread": spread(row.pop("b32")), "latency_ms_b1_spread": spread(row.pop("b1")),
            "peak_rss_bytes": int(rss), "peak_rss_bytes_spread": spread(row.pop("rss")),
            "cold_start_s": round(cold, 3), "cold_start_s_spread": spread(row.pop("cold")),
            "size_ratio": round(base_row["disk_bytes"] / row["disk_bytes"], 3),
            "speedup_b32": round(base_b32 / b32, 3),
            "speedup_vs_peer_ort_int8": round(peer_b32 / b32, 3) if peer_b32 else None,
            "rss_ratio_vs_fp32": round(rss / base_rss, 4),
            "accuracy_drop": round(100.0 * (base_row["accuracy"] - row["accuracy"]), 2),
            "param_reduction": round(1.0 - row["params"] / base_row["params"], 4) if row["params"] else None,
        })
        variants.append(row)
    return variants


def lean_goals_met(row: dict[str, Any]) -> dict[str, bool]:
    """Each lean goal, met or not, for one row."""
    met = {}
    for key, bound in LEAN_GOALS.items():
        value = row.get(key)
        met[key] = value is not None and (value <= bound if key in AT_MOST else value >= bound)
    return met


def lean_best(variants: list[dict[str, Any]]) -> dict[str, Any]:
    """The variant meeting every lean goal (the fastest if several), else the one meeting the most."""
    candidates = [v for v in variants if v["name"] not in ("fp32", "peer-ort-int8", "fp32-compile")]
    if not candidates:
        return {"lean_best": None, "lean_met": False}
    best = max(candidates, key=lambda v: (sum(lean_goals_met(v).values()), v["speedup_b32"]))
    met = lean_goals_met(best)
    out: dict[str, Any] = {"lean_best": best["name"], "lean_met": all(met.values()), "lean_goals_met": met}
    for key in ("rss_ratio_vs_fp32", "speedup_b32", "speedup_vs_peer_ort_int8", "size_ratio", "cold_start_s",
                "accuracy_drop"):
        out[key] = best[key]
    return out


def print_table(variants: list[dict[str, Any]], lean: dict[str, Any]) -> None:
    print("\n| variant | runtime | chain | accuracy | drop (pts) | disk bytes | size x | b32 ms | speed-up b32 | "
          "x peer | peak RSS MiB | RSS x fp32 | cold start s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for v in variants:
        peer = f"{v['speedup_vs_peer_ort_int8']:.2f}" if v["speedup_vs_peer_ort_int8"] else "-"
        print(f"| {v['name']} | {v['runtime']} | `{v['chain']}` | {v['accuracy']:.4f} | {v['accuracy_drop']:.2f} | "
              f"{v['disk_bytes']:,} | {v['size_ratio']:.2f} | {v['latency_ms_b32']:.1f} | {v['speedup_b32']:.2f} | "
              f"{peer} | {v['peak_rss_bytes'] / 2**20:.0f} | {v['rss_ratio_vs_fp32']:.2f} | {v['cold_start_s']:.2f} |")
    print({k: v for k, v in lean.items()})


def evaluate_goals(variants: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's two goals, checked honestly against the measured rows."""
    close = [v for v in variants if v["name"] != "fp32" and v["accuracy_drop"] <= 1.0]
    best = max(close, key=lambda v: (v["size_ratio"] >= 4 and v["speedup_b32"] >= 3, v["speedup_b32"]), default=None)
    students = [v for v in variants if "prune_structured" in v["chain"] or "drop_layers" in v["chain"]]
    students = [v for v in students if "distill" in v["chain"]]
    best_student = max(students, key=lambda v: ((v["param_reduction"] or 0) >= 0.5 and v["speedup_b32"] >= 2
                                                and v["accuracy_drop"] <= 2, v["speedup_b32"]), default=None)
    return {
        "best_within_1_point": best and best["name"],
        "best_within_1_point_met": bool(best and best["size_ratio"] >= 4 and best["speedup_b32"] >= 3),
        "student": best_student and best_student["name"],
        "student_met": bool(best_student and (best_student["param_reduction"] or 0) >= 0.5
                            and best_student["speedup_b32"] >= 2 and best_student["accuracy_drop"] <= 2),
    }


if __name__ == "__main__":
    main()
