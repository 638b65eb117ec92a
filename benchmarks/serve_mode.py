"""Ray Serve's default mode against its throughput-optimized mode, on tightfit's app ->
benchmarks/results/serve_mode.json.

tightfit runs Serve with ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` (``tightfit.settings.SERVE_RAY_ENV``). The mode
is read when Ray's processes start, so each side runs in its own fresh process with its own local Ray, the
two modes alternating (``rounds`` times, the order flipped every round). The parent measures the variant (the
ONNX Runtime int8 student of ``serving.py``) once, before any side runs, and hands every side the same record,
so both modes plan and serve one identical plan (800 MiB, 1 CPU; until 2026-11-28 each side measured and
planned on its own, and one round's default side planned batch 32 against 48). Each side warms up, then takes open-loop Poisson
load at fixed rates (``_load.run_open_loop``), and reads the CPU time of every process of its Ray from
/proc before and after each rate (psutil), grouped as proxy, model replica, client and the rest (runs before
2026-11-29 also had an ingress deployment between proxy and replica).
Figures per mode and rate (medians over rounds): achieved rps, p99, CPU ms per answered request (whole
machine and by group); ``cpu_per_request_ratio`` = throughput-optimized / default at the lowest rate (both
modes keep up there); ``max_sustained_rate`` per mode (p99 within 500 ms in every round, at that rate and every lower one).
Run ``python benchmarks/serving.py`` first: it builds the variant this reads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _common import median, spread, write_results
from serving import SLO_MS

MODES = {"default": "0", "throughput_optimized": "1"}
VARIANT = "student-ort-int8"
FULL = {"rates": [40, 60, 70, 80, 90], "seconds": 20.0, "rounds": 2}
QUICK = {"rates": [20], "seconds": 4.0, "rounds": 1}
GROUPS = (("proxy", "ProxyActor"), ("replica", "TightfitServer"))


def _group(proc: Any, me: int) -> str | None:
    try:
        text = " ".join(proc.cmdline()) + " " + proc.name()
    except Exception:  # a process that ended between listing and reading
        return None
    if proc.pid == me:
        return "client"
    for name, marker in GROUPS:
        if marker in text:
            return name
    return "ray_other" if ("ray" in text or "gcs_server" in text or "raylet" in text) else None


def _cpu_seconds() -> dict[int, tuple[str, float]]:
    """CPU seconds of this process and its descendants (the Ray it started), by pid, with their group."""
    import psutil

    me = psutil.Process()
    out = {}
    for proc in [me, *me.children(recursive=True)]:
        group = _group(proc, me.pid)
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        if group is not None:
            out[proc.pid] = (group, times.user + times.system)
    return out


def measure_variant(eval_rows: int, out: Path) -> None:
    """Measure the variant once (as ``serving.py`` does) and save its record for every side to plan from."""
    from serving import measure_records

    from tightfit.data import load_dataset
    from tightfit.footprint import save_footprints
    from tightfit.settings import cache_dir

    path = cache_dir("bench-serving") / VARIANT
    if not (path / "manifest.json").exists():
        raise SystemExit(f"{path} is missing: run `python benchmarks/serving.py` first (it builds {VARIANT})")
    save_footprints(out, measure_records({VARIANT: path}, load_dataset("rotten_tomatoes", seed=0), eval_rows))


def child(rates: list[int], seconds: float, records_path: Path) -> dict[str, Any]:
    """One mode (from the environment): plan the measured variant, serve it, load it at each rate, read the CPU."""
    from _load import run_open_loop
    from ray import serve
    from serving import deploy_tightfit

    from tightfit.data import load_dataset
    from tightfit.footprint import load_footprints
    from tightfit.settings import start_local_ray
    from tightfit.track.server import free_port

    records = load_footprints(records_path)
    data = load_dataset("rotten_tomatoes", seed=0)
    texts = [t for t in data.test["text"].astype(str).tolist() if t.strip()][:400]
    bodies = [{"text": t} for t in texts]
    port = free_port()
    start_local_ray(num_cpus=4, for_serving=True)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        deployment, plan = deploy_tightfit(records, None, f"http://127.0.0.1:{port}")
        run_open_loop(deployment.url, bodies, 10, seconds=5.0, max_requests=100, timeout_s=10.0)  # warm-up
        by_rate = {}
        for rate in rates:
            before, started = _cpu_seconds(), time.perf_counter()
            result = run_open_loop(deployment.url, bodies, rate, seconds=seconds, max_requests=int(rate * seconds) + 10,
                                   timeout_s=10.0, seed=rate)
            wall, after = time.perf_counter() - started, _cpu_seconds()
            cores: dict[str, float] = {}
            for pid, (group, cpu) in after.items():
                cores[group] = cores.get(group, 0.0) + (cpu - before.get(pid, (group, 0.0))[1]) / wall
            answered = max(result.ok, 1) / wall
            by_rate[str(rate)] = {
                "achieved_rps": result.achieved_rps, "p99_ms": None if result.p99_ms == float("inf") else result.p99_ms,
                "p50_ms": result.p50_ms, "statuses": result.statuses,
                "cores": {g: round(c, 4) for g, c in sorted(cores.items())},
                "cpu_ms_per_request": round(1000 * sum(cores.values()) / answered, 2),
                "cpu_ms_per_request_by_group": {g: round(1000 * c / answered, 2) for g, c in sorted(cores.items())},
            }
            print(f"  {os.environ.get('RAY_SERVE_THROUGHPUT_OPTIMIZED')} rate {rate}: {result.achieved_rps:.1f} rps, "
                  f"p99 {result.p99_ms:.0f} ms, CPU {by_rate[str(rate)]['cpu_ms_per_request']} ms/request",
                  file=sys.stderr)
        return {"plan": {"variant": plan.primary.name, "max_batch_size": plan.primary.max_batch_size}, "by_rate": by_rate}
    finally:
        serve.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="reduced protocol: proves the script, claims nothing")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rates", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--records", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child([int(r) for r in args.rates.split(",")], args.seconds, args.records)))
        return
    protocol = dict(QUICK if args.quick else FULL)
    records_path = Path(tempfile.mkdtemp(prefix="serve-mode-")) / "records.json"
    print("measuring the variant once for both modes ...", flush=True)
    measure_variant(100 if args.quick else 200, records_path)
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for round_no in range(protocol["rounds"]):
        order = list(MODES) if round_no % 2 == 0 else list(reversed(MODES))
        for mode in order:
            env = {**os.environ, "RAY_SERVE_THROUGHPUT_OPTIMIZED": MODES[mode]}
            cmd = [sys.executable, __file__, "--child", "--rates", ",".join(map(str, protocol["rates"])),
                   "--seconds", str(protocol["seconds"]), "--records", str(records_path)]
            print(f"round {round_no + 1}: {mode} ...", flush=True)
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise SystemExit(f"the {mode} side failed:\n{proc.stderr[-3000:]}")
            # the child's answer is its last JSON line: Ray forwards its workers' log lines to the child's
            # stdout, prefixed "(ProxyActor pid=...)", and one may come after the answer
            answer = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            if not answer:
                raise SystemExit(f"the {mode} side printed no result:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
            runs[mode].append(json.loads(answer[-1]))
    summary: dict[str, Any] = {}
    for mode, sides in runs.items():
        by_rate = {}
        for rate in map(str, protocol["rates"]):
            rounds = [s["by_rate"][rate] for s in sides]
            p99s = [r["p99_ms"] for r in rounds]
            groups = sorted({g for r in rounds for g in r["cpu_ms_per_request_by_group"]})
            by_rate[rate] = {
                "achieved_rps": median([r["achieved_rps"] for r in rounds]),
                "p99_ms": None if any(p is None for p in p99s) else median(p99s),
                "sustained_every_round": all(p is not None and p <= SLO_MS for p in p99s),
                "cpu_ms_per_request": median([r["cpu_ms_per_request"] for r in rounds]),
                "cpu_ms_per_request_spread": spread([r["cpu_ms_per_request"] for r in rounds]),
                "cpu_ms_per_request_by_group": {g: median([r["cpu_ms_per_request_by_group"].get(g, 0.0) for r in rounds])
                                                for g in groups},
                "rounds": rounds,
            }
        held = None  # the last rate of the unbroken run of sustained rates from the lowest (serving.py's rule)
        for rate in protocol["rates"]:
            if not by_rate[str(rate)]["sustained_every_round"]:
                break
            held = rate
        summary[mode] = {"max_sustained_rate": held, "by_rate": by_rate, "plan": sides[0]["plan"],
                         "plans": [s["plan"] for s in sides]}  # every round's, the same record behind each
    low = str(protocol["rates"][0])
    ratio = summary["throughput_optimized"]["by_rate"][low]["cpu_ms_per_request"] / summary["default"]["by_rate"][low]["cpu_ms_per_request"]
    figures = {"cpu_per_request_ratio": round(ratio, 3), "cpu_per_request_rate": int(low),
               "max_sustained_rate": {m: s["max_sustained_rate"] for m, s in summary.items()},
               "slo_ms": SLO_MS, "variant": VARIANT, "modes": summary}
    write_results("serve_mode", figures, protocol={"quick": args.quick, **protocol, "order": "alternating per round",
                                                    "command": "python benchmarks/serve_mode.py " + " ".join(sys.argv[1:])})
    print(f"cpu_per_request_ratio at {low} rps: {figures['cpu_per_request_ratio']}; "
          f"max_sustained_rate: {figures['max_sustained_rate']}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
