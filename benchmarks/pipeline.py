"""Benchmark the default pipeline locally: wall time, the steps' own compute time, cached rerun.

Runs ``fit_for_serving`` with the quick profile through kfp.local in a fresh run directory, then reruns it
unchanged three times (served from cache). Writes ``benchmarks/results/pipeline.json``:

- ``wall_s``: the first run's wall time;
- ``compute_s``: the sum of every step's own compute time (each component records ``elapsed_s``, from
  its body's start, library imports included, to its end; interpreter start-up and the KFP executor are
  orchestration). Two loop iterations run at once locally, so this sum can exceed the wall time;
- ``orchestration_overhead``: (wall - compute) / compute (goal <= 0.15);
- ``cached_rerun_ratio``: the median unchanged rerun's wall time / the first run's (goal <= 0.10).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import median, write_results


def step_times(run_root: Path) -> dict[str, float]:
    """``elapsed_s`` of every task of one pipeline run directory, keyed by its path."""
    out: dict[str, float] = {}
    for path in sorted(run_root.rglob("executor_output.json")):
        data = json.loads(path.read_text())
        for artifact in data.get("artifacts", {}).values():
            for item in artifact.get("artifacts", []):
                elapsed = (item.get("metadata") or {}).get("elapsed_s")
                if elapsed is not None:
                    out[str(path.parent.relative_to(run_root))] = float(elapsed)
    return out


def main() -> None:
    from tightfit.pipelines.local import run_local

    from tightfit.config import load_config

    config = load_config(profile="quick")
    with tempfile.TemporaryDirectory(prefix="tightfit-bench-") as tmp:
        runs = Path(tmp) / "runs"
        first = run_local(config, pipeline="fit_for_serving", run_dir=runs)
        run_dirs = sorted(p for p in (runs / "pipeline").iterdir() if p.name.startswith("fit-for-serving-"))
        times = step_times(run_dirs[0])
        reruns = [run_local(config, pipeline="fit_for_serving", run_dir=runs).wall_s for _ in range(3)]
    compute = sum(times.values())
    rerun = median(reruns)
    figures = {
        "pipeline": "fit_for_serving",
        "profile": "quick",
        "variants": [v.variant for v in config.variants],
        "chosen": first.chosen,
        "wall_s": round(first.wall_s, 2),
        "compute_s": round(compute, 2),
        "orchestration_overhead": round((first.wall_s - compute) / compute, 4),
        "cached_rerun_s": round(rerun, 3),
        "cached_rerun_ratio": round(rerun / first.wall_s, 6),
        "step_compute_s": {k: round(v, 2) for k, v in times.items()},
        "notes": "kfp.local SubprocessRunner(use_venv=False), caching on; at most 2 loop iterations at once; "
        "2 CPU cores shared with other work",
    }
    write_results("pipeline", figures)
    print(f"wall {figures['wall_s']} s, compute {figures['compute_s']} s, "
          f"orchestration_overhead {figures['orchestration_overhead']:.3f}, "
          f"cached_rerun_ratio {figures['cached_rerun_ratio']:.6f}")


if __name__ == "__main__":
    main()
