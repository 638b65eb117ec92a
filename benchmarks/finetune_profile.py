"""Where the 2-worker fine-tuning gap goes -> benchmarks/results/finetune_profile.json.

``finetune.py`` measures Ray Train at 0.97x torchrun's samples/s with 1 worker and 0.87x with 2 on this
2-core machine (``scaling_vs_torchrun`` 0.90). This script accounts for the CPU of every process on the
machine while the two training processes run, for tightfit's Ray Train path and for ``torchrun``, same
model, data and step (``finetune.ray_run`` and ``finetune.torchrun_rate``): a sampler process reads each
process's CPU time (psutil, as ``_common.LoadMonitor``) every 0.5 s, and the intervals in which the two training processes together
use more than 1.6 cores are the training intervals. Written per run: the cores the training processes got,
the cores every other process took in those intervals (grouped by process name), and the samples/s. Per
thread of the training processes (``/proc/<pid>/task/<tid>/schedstat``): the compute threads' time on a core,
their time runnable but waiting on the run queue while other threads held the cores, and the processes' other
threads (gloo's, Ray's core worker). And a third Ray 2x1 run per round with Ray Train's four helper actors
that hold no work while the workers train stopped (SIGSTOP, resumed after; ``HELPERS``): what their standing
wakeups cost the rate. A measurement, not a way to run.

With both cores training, any CPU another process takes is taken from a training process, and DDP's
all-reduce makes the other rank wait for it. The sampler's own CPU is reported apart (``sampler_cores``).
The sampler is itself such a process: each round also runs both without it (``unsampled``), so the file
shows what a process waking twice a second costs each path. Only the unsampled rates compare with
``finetune.py``'s.

``idle_ray_actor``: what each of those Ray processes costs on its own. A local Ray started as fine-tuning
starts it holds a few actors that run nothing; their CPU is read per thread from /proc over 30 s. Ray's
core worker re-arms a 10 ms timer on every Python process's main thread to check for signals (Ray 2.60,
``CoreWorker::RunTaskExecutionLoop``, not configurable), so each process wakes about 100 times a second
whether or not it has work: the count of Ray's Python processes is what the other processes' CPU scales with.

    python benchmarks/finetune_profile.py [--rounds 2] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median, write_results
from finetune import SCALING_ROWS, ray_run, torchrun_rate

TRAINING_PROCESS = re.compile(r"RayTrainWorker|^(?!.*torch\.distributed\.run).*_ddp_worker\.py")  # not torchrun itself
BUSY_CORES = 1.6  # both training processes running: an interval counts as training above this
SAMPLE_S = 0.5

SAMPLER = """
import json, os, re, sys, time
import psutil
training = re.compile(sys.argv[3])
def schedstat(pid):
    threads = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            run_ns, wait_ns = f.read().split()[:2]
        threads[tid] = [int(run_ns), int(wait_ns)]
    return threads
with open(sys.argv[1], "w") as out:
    while True:
        snap, threads = {}, {}
        for proc in psutil.process_iter(["pid", "cmdline", "cpu_times"]):
            times = proc.info["cpu_times"]
            if times is not None:
                name = " ".join(proc.info["cmdline"] or [])[:120]
                snap[str(proc.info["pid"])] = [name, times.user + times.system]
                if training.search(name):
                    try:
                        threads[str(proc.info["pid"])] = schedstat(proc.info["pid"])
                    except OSError:
                        pass
        out.write(json.dumps({"t": time.time(), "p": snap, "threads": threads}) + "\\n")
        out.flush()
        time.sleep(float(sys.argv[2]))
"""


def _kind(name: str) -> str:
    """A process's name for grouping: Ray's actor/worker title, else the program's base name."""
    if name.startswith("ray::"):
        return name.split()[0]
    parts = name.split()
    if not parts:
        return "(kernel or unnamed)"
    program = os.path.basename(parts[0])
    if program.startswith("python") and len(parts) > 1:
        script = next((p for p in parts[1:] if not p.startswith("-")), "")
        return f"python {'/'.join(Path(script).parts[-2:])}"
    return program


def account(samples: list[dict[str, Any]], sampler_pid: int) -> dict[str, Any]:
    """CPU per process kind in the intervals where the training processes run on > ``BUSY_CORES`` cores."""
    busy_s, training, sampler = 0.0, 0.0, 0.0
    compute_run, compute_wait, helpers = 0.0, 0.0, 0.0
    others: dict[str, float] = {}
    for before, after in itertools.pairwise(samples):
        dt = after["t"] - before["t"]
        used = {pid: cpu - before["p"].get(pid, [name, 0.0])[1] for pid, (name, cpu) in after["p"].items()}
        names = {pid: name for pid, (name, _) in after["p"].items()}
        train = sum(c for pid, c in used.items() if TRAINING_PROCESS.search(names[pid]))
        if train / dt < BUSY_CORES:
            continue
        busy_s += dt
        training += train
        for pid, threads in after.get("threads", {}).items():
            earlier = before.get("threads", {}).get(pid, {})
            deltas = [(run - earlier[tid][0], wait - earlier[tid][1]) for tid, (run, wait) in threads.items()
                      if tid in earlier]
            if deltas:  # the busiest thread is the one that trains; the rest are gloo's and Ray's helpers
                run, wait = max(deltas)
                compute_run, compute_wait = compute_run + run / 1e9, compute_wait + wait / 1e9
                helpers += sum(d[0] for d in deltas) / 1e9 - run / 1e9
        for pid, cpu in used.items():
            if cpu <= 0 or TRAINING_PROCESS.search(names[pid]):
                continue
            if int(pid) == sampler_pid:
                sampler += cpu
                continue
            kind = _kind(names[pid])
            others[kind] = others.get(kind, 0.0) + cpu
    per = max(busy_s, 1e-9)
    return {
        "training_intervals_s": round(busy_s, 1),
        "training_processes_cores": round(training / per, 3),
        "other_processes_cores": round(sum(others.values()) / per, 3),
        "sampler_cores": round(sampler / per, 3),
        # per thread, from /proc/<pid>/task/<tid>/schedstat: the compute threads' time on a core, their time
        # runnable but waiting for one (taken by other threads), and the training processes' other threads
        "compute_threads_cores": round(compute_run / per, 3),
        "compute_threads_runqueue_wait_cores": round(compute_wait / per, 3),
        "helper_threads_cores": round(helpers / per, 3),
        "other_processes": {k: round(v / per, 4) for k, v in sorted(others.items(), key=lambda kv: -kv[1])},
    }


def profiled(run: Any) -> dict[str, Any]:
    """Run ``run()`` with the /proc sampler beside it; its result plus the CPU accounting."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as handle:
        trace = Path(handle.name)
    sampler = subprocess.Popen([sys.executable, "-c", SAMPLER, str(trace), str(SAMPLE_S), TRAINING_PROCESS.pattern])
    try:
        result = run()
    finally:
        sampler.terminate()
        sampler.wait(timeout=30)
    samples = [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]
    trace.unlink(missing_ok=True)
    return {"samples_per_s": result["samples_per_s"], **account(samples, sampler.pid)}


IDLE_ACTORS = 4
IDLE_WINDOW_S = 30.0
HELPERS = ("ray::_Autoscali", "ray::PlacementG", "ray::DatasetMan", "ray::Preemption")
"""Ray Train's helper actors that hold no work while the workers train (/proc comm names, cut to 15 chars): Ray
Data's autoscaling coordinator, the placement-group cleaner, the dataset manager, the preemption watcher."""


def _comms() -> dict[int, str]:
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            found[int(pid)] = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
    return found


def helpers_frozen(run: Any) -> dict[str, Any]:
    """Run ``run()`` (Ray 2x1) with Ray Train's idle helper actors stopped (SIGSTOP) while the workers train,
    and resumed (SIGCONT) after: what those processes' standing wakeups cost the training. A measurement
    device, never a way to run: it stops once both workers and the preemption watcher are up, 10 s later."""
    import signal
    import threading
    import time

    stopped: list[tuple[int, str]] = []
    done = threading.Event()

    def freeze() -> None:
        while not done.is_set():
            comms = _comms()
            if sum(c == "ray::RayTrainWo" for c in comms.values()) == 2 and "ray::Preemption" in comms.values():
                break
            time.sleep(1.0)
        if done.wait(10.0):
            return
        for pid, comm in _comms().items():
            if comm in HELPERS:
                os.kill(pid, signal.SIGSTOP)
                stopped.append((pid, comm))

    watcher = threading.Thread(target=freeze, daemon=True)
    watcher.start()
    try:
        result = run()
    finally:
        done.set()
        watcher.join(timeout=30)
        for pid, _ in stopped:
            with contextlib.suppress(OSError):  # gone with Ray's shutdown
                os.kill(pid, signal.SIGCONT)
    return {"samples_per_s": result["samples_per_s"], "stopped": sorted(comm for _, comm in stopped)}


def _thread_stats(pid: int) -> dict[str, tuple[float, int]]:
    """Per thread of ``pid``: (CPU seconds, voluntary context switches), from /proc (psutil has no switch
    counts per thread)."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()  # after the name, which may hold spaces
        status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        found_switches = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M)
        switches = int(found_switches.group(1))  # type: ignore[union-attr]
        found[tid] = ((int(fields[11]) + int(fields[12])) / tick, switches)
    return found


def idle_actors() -> dict[str, Any]:
    """What one Ray Python process costs while it does nothing: a local Ray started as fine-tuning starts it,
    ``IDLE_ACTORS`` actors that hold no task, their CPU over ``IDLE_WINDOW_S`` by thread. Every Ray Python
    process (the Train controller and its helper actors, Ray Data's coordinators, the training workers) runs
    the same core-worker loop, so this is each one's standing cost beside the training."""
    import time

    import ray

    from tightfit import settings

    settings.start_local_ray(num_cpus=3, log_to_driver=False)
    try:
        @ray.remote(num_cpus=0)
        class Idle:
            def pid(self) -> int:
                return os.getpid()

        actors = [Idle.remote() for _ in range(IDLE_ACTORS)]  # type: ignore[attr-defined]
        pids = ray.get([actor.pid.remote() for actor in actors])
        time.sleep(5.0)
        before, started = {pid: _thread_stats(pid) for pid in pids}, time.monotonic()
        time.sleep(IDLE_WINDOW_S)
        after, window = {pid: _thread_stats(pid) for pid in pids}, time.monotonic() - started
    finally:
        ray.shutdown()
    per_actor = []
    for pid in pids:
        main = str(pid)  # the main thread's id is the process's
        used = {tid: (after[pid][tid][0] - before[pid][tid][0]) / window for tid in after[pid] if tid in before[pid]}
        per_actor.append({
            "process_cores": round(sum(used.values()), 4),
            "main_thread_cores": round(used.get(main, 0.0), 4),
            "main_thread_wakeups_per_s": round((after[pid][main][1] - before[pid][main][1]) / window, 1),
            "threads": len(after[pid]),
        })
    return {"actors": IDLE_ACTORS, "window_s": IDLE_WINDOW_S,
            "process_cores": median([a["process_cores"] for a in per_actor]),
            "main_thread_cores": median([a["main_thread_cores"] for a in per_actor]),
            "main_thread_wakeups_per_s": median([a["main_thread_wakeups_per_s"] for a in per_actor]),
            "per_actor": per_actor}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="256 rows, 1 round: proves the script, claims nothing")
    args = parser.parse_args()
    rows, rounds = (256, 1) if args.quick else (SCALING_ROWS, args.rounds)
    runs: dict[str, list[dict[str, Any]]] = {"ray_2x1": [], "torchrun_2x1": []}
    unsampled: dict[str, list[float]] = {"ray_2x1": [], "torchrun_2x1": []}
    frozen: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        for round_no in range(rounds):
            print(f"round {round_no + 1}/{rounds}: Ray 2x1, torchrun 2x1, each with the /proc sampler and without; "
                  "Ray 2x1 with its idle helper actors stopped")
            runs["ray_2x1"].append(profiled(lambda: ray_run(2, tmp, limit=rows)))
            unsampled["ray_2x1"].append(ray_run(2, tmp, limit=rows)["samples_per_s"])
            frozen.append(helpers_frozen(lambda: ray_run(2, tmp, limit=rows)))
            runs["torchrun_2x1"].append(profiled(lambda: torchrun_rate(2, rows, 2, tmp)))
            unsampled["torchrun_2x1"].append(torchrun_rate(2, rows, 2, tmp)["samples_per_s"])
    idle = idle_actors()
    figures: dict[str, Any] = {
        kind: {"other_processes_cores": median([r["other_processes_cores"] for r in found]),
               "training_processes_cores": median([r["training_processes_cores"] for r in found]),
               "compute_threads_cores": median([r["compute_threads_cores"] for r in found]),
               "compute_threads_runqueue_wait_cores": median([r["compute_threads_runqueue_wait_cores"] for r in found]),
               "samples_per_s": median([r["samples_per_s"] for r in found]),
               "unsampled_samples_per_s": median(unsampled[kind]), "unsampled_runs": unsampled[kind], "runs": found}
        for kind, found in runs.items()
    }
    frozen_rate = median([r["samples_per_s"] for r in frozen])
    figures["ray_2x1_helpers_stopped"] = {
        "samples_per_s": frozen_rate, "runs": frozen,
        "vs_unsampled_ray_2x1": frozen_rate / median(unsampled["ray_2x1"]),
        "vs_unsampled_torchrun_2x1": frozen_rate / median(unsampled["torchrun_2x1"]),
    }
    figures["idle_ray_actor"] = idle
    path = write_results("finetune_profile", figures,
                         protocol={"rows": rows, "epochs": 2, "rounds": rounds, "quick": args.quick,
                                   "sample_s": SAMPLE_S, "busy_cores": BUSY_CORES})
    for kind in runs:
        found = figures[kind]
        print(f"{kind}: others {found['other_processes_cores']:.3f} cores, training "
              f"{found['training_processes_cores']:.3f} (compute threads {found['compute_threads_cores']:.3f}, waiting "
              f"{found['compute_threads_runqueue_wait_cores']:.3f}), {found['samples_per_s']:.1f} samples/s sampled, "
              f"{found['unsampled_samples_per_s']:.1f} without the sampler")
    stopped = figures["ray_2x1_helpers_stopped"]
    print(f"ray_2x1 with its idle helper actors stopped: {stopped['samples_per_s']:.1f} samples/s "
          f"({stopped['vs_unsampled_ray_2x1']:.3f} of Ray as is, {stopped['vs_unsampled_torchrun_2x1']:.3f} of torchrun)")
    print(f"an idle Ray actor: {idle['process_cores']:.4f} cores, its main thread {idle['main_thread_cores']:.4f} "
          f"waking {idle['main_thread_wakeups_per_s']:.0f} times a second")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
