"""Benchmark the default pipeline locally: orchestration overhead against the same steps in one process.

In one run, ``rounds`` times (interleaved, the side that runs first alternating between rounds):
``fit_for_serving`` through kfp.local (a fresh run directory, so nothing is cached), and the **same component
functions** (each component's Python body, ``component.python_func``) called one after another in one fresh
Python process, in the DAG's order, with the same arguments and the same artifact files. Every run of either
side compiles into its own empty torch.compile cache (``TORCHINDUCTOR_CACHE_DIR``): a run that read another's
compiled kernels skipped minutes of work (the 2026-11-28 21:19 run's first kfp.local run filled a cold cache
that every later run read). Then three unchanged kfp.local reruns (cache hits).
Writes ``benchmarks/results/pipeline.json``:

- ``orchestration_overhead`` = kfp.local wall / ``sequential_wall_s`` - 1 (medians; goal <= 0.15): what KFP's
  task processes, executor, artifact and cache bookkeeping and its scheduling cost, or save (kfp.local runs
  two loop iterations at once), against plain Python calls; the earlier figure, (wall - summed step times) /
  summed step times, was negative by construction;
- ``sequential_wall_s``: the in-process wall time of the same steps;
- ``cached_rerun_ratio``: the median unchanged rerun's wall time / the first run's (goal <= 0.10).

``--profile full`` (the default) measures the pipeline ``make run`` runs (the default config, every variant)
and writes the top-level figures; ``--profile quick`` measures the quick profile (3 variants, 400 rows, a
few minutes) and writes them under ``quick_profile``. Each keeps the other's figures, and each carries its
own machine, conditions and protocol. What a task costs is about the same in both (a fresh process that
imports torch, transformers and MLflow); the quick profile's steps are short, so it shows that cost large.

``--quick`` is the reduced protocol (1 round, 200 rows, 2 variants, no cached reruns): it proves the
script end to end and claims nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import median, spread, write_results

from tightfit import settings


def step_times(run_root: Path) -> dict[str, float]:
    """``elapsed_s`` of every task of one kfp.local run directory, keyed by its path."""
    out: dict[str, float] = {}
    for path in sorted(run_root.rglob("executor_output.json")):
        data = json.loads(path.read_text())
        for artifact in data.get("artifacts", {}).values():
            for item in artifact.get("artifacts", []):
                elapsed = (item.get("metadata") or {}).get("elapsed_s")
                if elapsed is not None:
                    out[str(path.parent.relative_to(run_root))] = float(elapsed)
    return out


def profile_windows(root: Path) -> dict[str, dict[str, Any]]:
    """Per variant of the profile stage under ``root`` (its ``footprints`` artifact): the seconds its
    measurement took, the timing attempts it needed (a noisy attempt is measured again) and the cores other
    processes kept busy meanwhile: where a slower profile stage lost its time."""
    from tightfit.components.profile_steps import PROFILE_ENDED_AT, PROFILE_STARTED_AT

    found = [p for p in root.rglob("footprints") if p.is_file()]
    if not found:
        return {}
    out = {}
    for record in json.loads(found[0].read_text()):
        extra = record.get("extra") or {}
        out[record["variant"]] = {
            "s": round(extra.get(PROFILE_ENDED_AT, 0.0) - extra.get(PROFILE_STARTED_AT, 0.0), 1),
            "attempts": extra.get("measure_attempts"), "other_cores": extra.get("measure_other_cores")}
    return out


class Steps:
    """Calls component bodies in this process: output artifacts get files under ``root/<step>/``, inputs
    are the artifacts earlier calls produced, parameters come from ``values`` by name."""

    def __init__(self, root: Path, values: dict[str, Any]) -> None:
        self.root = root
        self.values = values
        self.seconds: dict[str, float] = {}

    def __call__(self, component: Any, step: str, **given: Any) -> tuple[Any, dict[str, Any]]:
        from kfp.dsl.types import type_annotations as ta

        func = component.python_func
        kwargs: dict[str, Any] = {}
        outputs: dict[str, Any] = {}
        for name, param in inspect.signature(func).parameters.items():
            if ta.is_artifact_wrapped_in_Output(param.annotation):
                cls = ta.get_io_artifact_class(param.annotation)
                artifact = cls(uri=str(self.root / step / name))
                Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
                kwargs[name] = outputs[name] = artifact
            elif name in given:
                kwargs[name] = given[name]
            elif name in self.values:
                kwargs[name] = self.values[name]
            elif param.default is inspect.Parameter.empty:
                raise KeyError(f"{step}: no value for {name!r}")
        started = time.perf_counter()
        returned = func(**kwargs)
        self.seconds[step] = time.perf_counter() - started
        return returned, outputs


def pipeline_values(config: Any, tracking_uri: str) -> dict[str, Any]:
    """The arguments a kfp.local run gets: the pipeline's defaults overridden by ``pipeline_arguments``."""
    from tightfit.pipelines.local import build_pipeline, pipeline_arguments

    spec = build_pipeline("fit_for_serving", config).component_spec
    values = {name: inp.default for name, inp in (spec.inputs or {}).items()}
    values.update(pipeline_arguments("fit_for_serving", config, tracking_uri))
    return values


def run_sequential(config: Any, run_dir: Path) -> dict[str, Any]:
    """``fit_for_serving``'s component bodies in DAG order in this process (same arguments, same files)."""
    from tightfit.components.compress import compress
    from tightfit.components.deploy import deploy
    from tightfit.components.finetune import finetune
    from tightfit.components.prepare_data import prepare_data
    from tightfit.components.profile_all import profile_all
    from tightfit.components.register import register
    from tightfit.components.select import select
    from tightfit.components.start_tracking import start_tracking

    from tightfit.settings import local_tracking_uri

    run_dir.mkdir(parents=True, exist_ok=True)
    v = pipeline_values(config, local_tracking_uri(run_dir))
    steps = Steps(run_dir / "steps", v)
    started = time.perf_counter()
    with settings.environ({settings.ENV_HOME: str(run_dir)}):  # as run_local does: outbox and Ray files land there
        steps(start_tracking, "start_tracking", base_model=v["model"], run_name=v["run_name"])
        _, data = steps(prepare_data, "prepare_data", limit=v["data_limit"])
        _, tuned = steps(finetune, "finetune", data=data["data"], base_model=v["model"], address=v["ray_address"])
        _, base = steps(compress, "compress-baseline", baseline=tuned["model"], data=data["data"],
                        variant_name="baseline", chain="fp32")
        built = []
        for i, item in enumerate(v["variants"]):
            _, out = steps(compress, f"compress-{i}", baseline=tuned["model"], data=data["data"],
                           variant_name=item["variant"], chain=item["chain"])
            built.append(out["variant"])
        footprints, _ = steps(profile_all, "profile_all", baseline=base["variant"], variants=built, data=data["data"])
        chosen, picked = steps(select, "select", footprints=footprints, variants=built)
        steps(register, "register", chosen=picked["chosen"], selection=chosen.selection)
        if v["deploy_enabled"] and chosen.found:
            steps(deploy, "deploy", chosen=picked["chosen"], selected=picked["selected"])
    return {"wall_s": time.perf_counter() - started, "chosen": chosen.chosen_variant,
            "step_s": {k: round(s, 2) for k, s in steps.seconds.items()},
            "profile": profile_windows(run_dir / "steps" / "profile_all")}


def own_compile_cache(run_dir: Path) -> contextlib.AbstractContextManager[None]:
    """Point torch.compile's on-disk cache (``TORCHINDUCTOR_CACHE_DIR``, inherited by every task process) at an
    empty folder of ``run_dir`` for the duration: every run compiles from nothing, as a first run does."""
    return settings.environ({"TORCHINDUCTOR_CACHE_DIR": str(run_dir / "inductor-cache")})


def sequential_in_fresh_process(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """``run_sequential`` in a fresh Python process (as a user's script would run the steps: nothing this
    benchmark process imported or compiled carries over), with its own empty compile cache. ``wall_s`` is that
    process's whole wall time, interpreter start and imports included; ``steps_wall_s`` the steps' own."""
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--sequential-run", str(run_dir),
               "--profile", args.profile, *(["--quick"] if args.quick else [])]
    started = time.perf_counter()
    with own_compile_cache(run_dir):
        subprocess.run(command, check=True)
    wall = time.perf_counter() - started
    result: dict[str, Any] = json.loads((run_dir / "result.json").read_text())
    return {**result, "steps_wall_s": round(result["wall_s"], 2), "wall_s": wall}


def quick_config() -> Any:
    """The reduced protocol's config: the quick profile on 200 rows and two variants."""
    import yaml

    from tightfit.config import DEFAULT_CONFIG, config_from_dict

    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["profiles"]["quick"]["data"] = {"limit": 200}
    raw["profiles"]["quick"]["variants"] = raw["profiles"]["quick"]["variants"][:2]
    return config_from_dict(raw, profile="quick")


QUICK_SECTION = "quick_profile"


def write_profile(figures: dict[str, Any], protocol: dict[str, Any], *, section: str | None) -> None:
    """Write this run's figures at the top level (``section`` None: the default pipeline) or under
    ``section`` with their own machine, conditions and protocol, keeping what the file holds for the other
    profile."""
    from _common import MONITOR, machine_info

    path = Path(__file__).resolve().parent / "results" / "pipeline.json"
    existing = json.loads(path.read_text()) if path.exists() else {}
    existing.pop("benchmark", None)
    kept = existing.pop(QUICK_SECTION, None)
    if section is None:
        write_results("pipeline", {**figures, **({QUICK_SECTION: kept} if kept else {})}, protocol=protocol)
        return
    own = {"machine": machine_info(), "conditions": MONITOR.conditions(), "protocol": protocol, **figures}
    write_results("pipeline", {**existing, section: own})


def main() -> None:
    from tightfit.pipelines.local import run_local

    from tightfit.config import load_config

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="reduced protocol: proves the script, claims nothing")
    parser.add_argument("--profile", choices=("full", "quick"), default="full",
                        help="full: the default pipeline (make run), top-level figures; quick: its quick profile")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sequential-run", metavar="DIR", help=argparse.SUPPRESS)  # one in-process run, then exit
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    profile = "quick" if args.quick else args.profile
    config = quick_config() if args.quick else load_config(profile=None if profile == "full" else "quick")
    if args.sequential_run:
        result = run_sequential(config, Path(args.sequential_run))
        (Path(args.sequential_run) / "result.json").write_text(json.dumps(result))
        return
    kfp_runs, seq_runs, first_times = [], [], {}
    with tempfile.TemporaryDirectory(prefix="tightfit-bench-") as tmp:
        for round_no in range(rounds):  # interleaved: the machine's drift hits both alike
            # Which side goes first alternates between rounds, and each run compiles into its own empty
            # inductor cache: neither side reads what the other compiled (a cold cache adds minutes).
            kfp_first = round_no % 2 == 0
            if not kfp_first:
                seq_runs.append(sequential_in_fresh_process(args, Path(tmp) / f"seq-{round_no}"))
            runs = Path(tmp) / f"kfp-{round_no}"
            with own_compile_cache(runs):
                summary = run_local(config, pipeline="fit_for_serving", run_dir=runs)
            kfp_runs.append({"wall_s": summary.wall_s, "chosen": summary.chosen, "first": kfp_first,
                             "profile": profile_windows(runs / "pipeline")})
            if round_no == 0:
                run_dirs = sorted(p for p in (runs / "pipeline").iterdir() if p.name.startswith("fit-for-serving-"))
                first_times = step_times(run_dirs[0])
            if kfp_first:
                seq_runs.append(sequential_in_fresh_process(args, Path(tmp) / f"seq-{round_no}"))
            seq_runs[-1]["first"] = not kfp_first
            print(f"round {round_no + 1}: kfp.local {summary.wall_s:.1f} s, in-process {seq_runs[-1]['wall_s']:.1f} s",
                  flush=True)
        reruns = [] if args.quick else [
            run_local(config, pipeline="fit_for_serving", run_dir=Path(tmp) / "kfp-0").wall_s for _ in range(3)
        ]
    kfp_wall = median([r["wall_s"] for r in kfp_runs])
    seq_wall = median([r["wall_s"] for r in seq_runs])
    overheads = [k["wall_s"] / s["wall_s"] - 1 for k, s in zip(kfp_runs, seq_runs, strict=True)]
    figures = {
        "pipeline": "fit_for_serving",
        "profile": profile,
        "variants": [item.variant for item in config.variants],
        "chosen": kfp_runs[0]["chosen"],
        "wall_s": round(kfp_wall, 2),
        "sequential_wall_s": round(seq_wall, 2),
        "orchestration_overhead": round(kfp_wall / seq_wall - 1, 4),
        "cached_rerun_s": round(median(reruns), 3) if reruns else None,
        "cached_rerun_ratio": round(median(reruns) / kfp_runs[0]["wall_s"], 6) if reruns else None,
        "spread": {"orchestration_overhead": spread(overheads), "wall_s": spread([r["wall_s"] for r in kfp_runs]),
                   "sequential_wall_s": spread([r["wall_s"] for r in seq_runs])},
        "rounds": {"kfp_local": kfp_runs, "sequential": seq_runs},
        "kfp_step_compute_s": {k: round(v, 2) for k, v in first_times.items()},
        "notes": "kfp.local SubprocessRunner(use_venv=False), a fresh run dir per round (no cache hits); at most "
        "2 loop iterations at once; the in-process run calls the same component bodies in the DAG's order in a "
        "fresh Python process (its wall_s from outside: start and imports included); the side that runs first "
        "alternates between rounds; every run compiles into its own empty TORCHINDUCTOR_CACHE_DIR",
    }
    protocol = {"quick": args.quick, "rounds": rounds,
                "command": "python benchmarks/pipeline.py " + " ".join(sys.argv[1:])}
    write_profile(figures, protocol, section=None if profile == "full" else QUICK_SECTION)
    print(f"kfp.local {kfp_wall:.1f} s, in-process {seq_wall:.1f} s, orchestration_overhead "
          f"{figures['orchestration_overhead']:.3f} (goal <= 0.15), cached_rerun_ratio {figures['cached_rerun_ratio']}")


if __name__ == "__main__":
    main()
