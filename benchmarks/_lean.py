"""The serving benchmark's lean-runtime section (issue 17): what the deployed replica of an ONNX variant costs.

Self-contained: its own Ray (the node's reservable memory set to ``LEAN_NODE_MEMORY``), its own variants.
Writes ``serve_replica_floor_bytes`` (a Serve replica that imports nothing of tightfit), ``replica_peak_rss_bytes``
(the lean variant's replica under load, from /proc) and ``replicas_per_node_ratio`` (lean over torch fp32 at a
fixed node memory), with their details under ``lean``.

Packing, two ways, both measured: the planner with its shipped memory model (``per_node``, the figure) and
with a model calibrated on this node first (``per_node_calibrated``: ``calibrate_serving_memory`` on both
variants, as docs/serving.md advises for a tight fit). Each packing is then checked: every started replica
serves full batches at the token cap and its peak RSS (VmHWM) is set against what the plan booked for it
(``max_peak_over_reservation``); a packing whose replicas outgrow their booking is not a packing to claim.
Beside RSS, ``physical`` sums the replicas' PSS (shared library pages counted once, not once per replica):
what the packed replicas hold of the node's physical memory.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from _common import MONITOR, machine_info, write_results
from _load import RssSampler, closed_loop

from tightfit.settings import cache_dir, start_local_ray
from tightfit.track.server import free_port

THREADS = 1  # CPUs per replica, as in serving.py
LEAN_NODE_MEMORY = 2 * 2**30
LEAN_BUDGET = 512 * 2**20
LEAN_CONCURRENCY = 16
LEAN_ROUND_S = 15.0
PACK_BATCH = 8  # the batch the packing plans book activations for, and the batches the packed replicas serve
CALIBRATION_BATCHES = (1, PACK_BATCH, 16)
STABLE_S = 45.0  # replicas counted once the running count has held this long


def _proc_bytes(path: Path, keys: tuple[str, ...]) -> dict[str, int]:
    """The ``keys`` of a /proc status-style file (``Key:  N kB``), in bytes."""
    found: dict[str, int] = {}
    for line in path.read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in keys:
            found[key] = int(line.split()[1]) * 1024
    return found


def _vm_hwm(pid: int) -> int:
    """Peak RSS (VmHWM) of a process on this host, from /proc."""
    return _proc_bytes(Path(f"/proc/{pid}/status"), ("VmHWM",)).get("VmHWM", 0)


def _physical(pids: list[int]) -> dict[str, Any]:
    """What the replicas hold of the node's physical memory, beside their RSS: the sum of their proportional
    set sizes (PSS: a page mapped by n processes counts 1/n in each, so the libraries every replica maps,
    onnxruntime's, Ray's, Python's, count about once), and a peak estimate that adds each replica's heap freed
    since its peak (VmHWM - VmRSS). RSS counts the shared pages once per replica; the planner books RSS."""
    rows = [{**_proc_bytes(Path(f"/proc/{pid}/status"), ("VmRSS", "VmHWM", "RssAnon", "RssFile")),
             **_proc_bytes(Path(f"/proc/{pid}/smaps_rollup"), ("Pss", "Pss_Anon", "Pss_File"))} for pid in pids]
    pss = sum(r["Pss"] for r in rows)
    peak = pss + sum(max(0, r["VmHWM"] - r["VmRSS"]) for r in rows)
    return {"pss_sum_bytes": pss, "pss_file_sum_bytes": sum(r["Pss_File"] for r in rows),
            "peak_pss_sum_estimate_bytes": peak, "within_node_memory": peak <= LEAN_NODE_MEMORY,
            "replica_rss_file_bytes": sorted(r["RssFile"] for r in rows),
            "replica_rss_anon_bytes": sorted(r["RssAnon"] for r in rows)}


def lean_variant_dirs(work: Path, quick: bool) -> dict[str, str]:
    """The torch fp32 fixture and the lean variant: ``lean_best`` of results/compression.json where its
    directory is cached, else the default lean chain built here (a short distillation: memory does not depend
    on how long the student trained)."""
    import json

    from fixtures_models import FINETUNED_MINILM_VERSION, _finetuned_minilm

    from tightfit.compress import build_variant
    from tightfit.compress.build import LEAN_STUDENT
    from tightfit.data import load_dataset
    from tightfit.spec import VariantSpec

    base = _finetuned_minilm(None, FINETUNED_MINILM_VERSION, train_rows=3200, steps=120)
    dirs = {"torch-fp32": str(base)}
    results = Path(__file__).resolve().parent / "results" / "compression.json"
    best = json.loads(results.read_text()).get("lean_best") if results.exists() else None
    cached = sorted(cache_dir("bench-compression").glob(f"*/{best}/manifest.json")) if best else []
    if cached:
        dirs["lean"] = str(cached[-1].parent)
        return dirs
    out = work / "lean"
    if not (out / "manifest.json").exists():
        steps = 20 if quick else 200
        chain = LEAN_STUDENT.replace("distill", f"distill:steps={steps}") + "|onnx_int8_dynamic"
        build_variant(base, VariantSpec.parse(chain, name="structured-ort-int8"), out,
                      data=load_dataset("rotten_tomatoes", seed=0), progress=False)
    dirs["lean"] = str(out)
    return dirs


def _replica_floor(base_url: str, *, keep_pandas_out: bool = False) -> int:
    """Peak RSS of a Ray Serve replica that imports nothing of tightfit (a FastAPI-less echo deployment);
    with ``keep_pandas_out``, the same replica with the setup hook tightfit's replicas carry
    (``tightfit.serve.process``: Ray's imports of pandas and pyarrow kept out)."""
    import requests
    from ray import serve

    from tightfit.serve.process import KEPT_OUT
    from tightfit.serve.schema import replica_runtime_env

    options: dict[str, Any] = {"num_cpus": 0.1, **(replica_runtime_env() if keep_pandas_out else {})}

    @serve.deployment(name="Floor", num_replicas=1, ray_actor_options=options)
    class Floor:
        async def __call__(self, request: Any) -> dict[str, Any]:
            return {"pid": os.getpid(), "kept": [m for m in KEPT_OUT if sys.modules.get(m) is not None]}

    floor_app: Any = Floor
    serve.run(floor_app.bind(), name="floor", route_prefix="/floor")
    try:
        first = requests.get(f"{base_url}/floor", timeout=60).json()
        pid = int(first["pid"])
        if keep_pandas_out and first["kept"]:
            raise RuntimeError(f"the setup hook did not keep {first['kept']} out of the replica (a Ray that renamed "
                               "its hook?)")
        for _ in range(50):
            requests.get(f"{base_url}/floor", timeout=30)
        return _vm_hwm(pid)
    finally:
        serve.delete("floor")


def _serve_full_batches(name: str, text: str, requests_each: int, replicas: int) -> dict[str, int]:
    """Full batches (``PACK_BATCH`` texts at the token cap) to every replica of app ``name`` through its
    deployment handle, ``requests_each`` waves of ``replicas`` at once: what each packed replica holds when it
    serves the batch the plan booked for. Returns the answers by status."""
    from ray import serve

    from tightfit.serve.schema import DEPLOYMENT_NAME

    handle = serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=name)
    raw = json.dumps({"texts": [text] * PACK_BATCH}).encode()

    statuses: dict[str, int] = {}
    for _ in range(requests_each):  # waves of one request per replica: the router's queue holds 2 x batch
        answers = [handle.handle.remote("classify", raw) for _ in range(replicas)]
        for answer in answers:
            status = str(answer.result(timeout_s=300)[0])
            statuses[status] = statuses.get(status, 0) + 1
    return statuses


def _packed_and_started(plan: Any, name: str, timeout_s: float, text: str) -> dict[str, Any]:
    """How many replicas of ``plan`` the node's free memory packs (Ray's available ``memory`` resource over the
    plan's reservation), and how many Serve actually starts: the app asks for one replica more than packs, so
    the last stays pending; the count is read once it has not changed for STABLE_S. The started replicas
    then serve full batches, and each one's peak RSS is set against its reservation."""
    import psutil
    import ray
    from ray import serve

    from tightfit.serve.app import TightfitServer
    from tightfit.serve.schema import DEPLOYMENT_NAME

    reservation = int(plan.deployment_options()["ray_actor_options"]["memory"])
    deadline = time.time() + 120  # an app deleted just before may still hold its reservation for a while
    while ray.available_resources().get("memory", 0) < 0.99 * ray.cluster_resources().get("memory", 0):
        if time.time() > deadline:
            break
        time.sleep(1)
    free = int(ray.available_resources().get("memory", 0))
    packed = free // reservation
    options = {**plan.deployment_options(), "num_replicas": packed + 1}
    options.pop("autoscaling_config", None)
    options["ray_actor_options"] = {**options["ray_actor_options"], "num_cpus": 0.05}
    app: Any = TightfitServer
    # serve.run waits until every replica runs, which the extra one never does: Ray's non-waiting variant
    from ray.serve.api import _run

    _run(app.options(**options).bind(plan.to_dict()), name=name, route_prefix=f"/{name}", _blocking=False)

    def running() -> int:
        states: dict[Any, int] = dict(serve.status().applications[name].deployments[DEPLOYMENT_NAME].replica_states)
        return sum(n for state, n in states.items() if str(getattr(state, "value", state)) == "RUNNING")

    deadline = time.time() + timeout_s
    started, changed = 0, time.time()
    while time.time() < deadline:
        now = running()
        if now != started:
            started, changed = now, time.time()
        if started > packed or (started > 0 and time.time() - changed > STABLE_S):
            break
        time.sleep(2)
    pids = [p.pid for p in psutil.process_iter(["cmdline"])
            if any(f"ServeReplica:{name}:" in part for part in (p.info["cmdline"] or []))]
    idle = sorted(psutil.Process(pid).memory_info().rss for pid in pids)
    statuses = _serve_full_batches(name, text, 3, max(1, started)) if started else {}
    peaks = sorted(_vm_hwm(pid) for pid in pids)
    physical = _physical(pids)
    serve.delete(name)
    return {"reservation_bytes": reservation, "free_memory_bytes": free, "packed": int(packed), "started": started,
            "replica_rss_bytes": idle, "rss_sum_bytes": int(sum(idle)),
            "full_batches": {"batch": PACK_BATCH, "statuses": statuses, "replica_peak_rss_bytes": peaks,
                             "peak_sum_bytes": int(sum(peaks)),
                             "max_peak_over_reservation": round(max(peaks, default=0) / reservation, 4)},
            "physical": physical}


def lean_runtime_figures(work: Path, quick: bool = False) -> dict[str, Any]:
    """serve_replica_floor_bytes, replica_peak_rss_bytes (the lean variant's replica under load, from /proc)
    and replicas_per_node_ratio (lean over torch fp32, at LEAN_NODE_MEMORY), measured on a private Ray."""
    import dataclasses

    import ray
    import requests
    from ray import serve

    from tightfit.data import load_dataset
    from tightfit.memory.replica import footprint_for_source
    from tightfit.serve.app import build_app
    from tightfit.serve.calibrate import calibrate_serving_memory, text_of_tokens, with_load_rss
    from tightfit.serve.plan import ServeOptions, plan_serving

    dirs = lean_variant_dirs(work, quick)
    records = {name: dataclasses.replace(footprint_for_source(path, name=name), accuracy=0.8)
               for name, path in dirs.items()}
    records = {r.variant: r for r in with_load_rss(list(records.values()))}
    texts = [t for t in load_dataset("rotten_tomatoes", seed=0).test["text"].astype(str).tolist() if t.strip()][:400]
    port = free_port()
    start_local_ray(for_serving=True, num_cpus=2, _memory=LEAN_NODE_MEMORY)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    timeout_s = 240.0 if quick else 600.0
    try:
        floor = _replica_floor(base)
        floor_no_pandas = _replica_floor(base, keep_pandas_out=True)
        lean_plan = plan_serving([records["lean"]], LEAN_BUDGET, ServeOptions(cpus_per_replica=THREADS, max_batch=32))
        serve.run(build_app(lean_plan), name="lean", route_prefix="/lean")
        health = requests.get(f"{base}/lean/healthz", timeout=60).json()
        with RssSampler(int(health["pid"])) as sampler:
            load = asyncio.run(closed_loop(f"{base}/lean/v1/classify", texts, 5.0 if quick else LEAN_ROUND_S,
                                            LEAN_CONCURRENCY))
        stats = requests.get(f"{base}/lean/v1/stats", timeout=30).json()
        peak = max(max(sampler.samples, default=0), _vm_hwm(int(health["pid"])))
        serve.delete("lean")
        calibrated = calibrate_serving_memory([records["lean"], records["torch-fp32"]], base_url=base,
                                              batch_sizes=CALIBRATION_BATCHES)
        options = ServeOptions(cpus_per_replica=THREADS, max_batch=PACK_BATCH)
        texts_at_cap = {name: text_of_tokens(dirs[name], options.tokens_for("classifier")) for name in dirs}
        node: dict[str, dict[str, Any]] = {"default_model": {}, "calibrated": {}}
        for how, model in (("default_model", None), ("calibrated", calibrated)):
            for name in ("lean", "torch-fp32"):
                record = records[name]
                plan = plan_serving([record], LEAN_NODE_MEMORY, options, model=model)
                node[how][name] = {"variant": record.chain, "runtime": plan.primary.runtime,
                                   **_packed_and_started(plan, f"pack-{how.replace('_', '-')}-{name}", timeout_s,
                                                         texts_at_cap[name])}
    finally:
        serve.shutdown()
        ray.shutdown()

    def ratio(how: str) -> float:
        return round(node[how]["lean"]["started"] / max(1, node[how]["torch-fp32"]["started"]), 3)

    return {
        "serve_replica_floor_bytes": int(floor),
        "serve_replica_floor_no_pandas_bytes": int(floor_no_pandas),
        "replica_peak_rss_bytes": int(peak),
        # the shipped model's packing; `max_peak_over_reservation` says whether each packing's bookings held
        # its replicas' full-batch peaks (the calibrated one sat 0.5-1.3 % under them in the 2026-11-27/28 runs)
        "replicas_per_node_ratio": ratio("default_model"),
        "replicas_per_node_ratio_calibrated": ratio("calibrated"),
        "lean": {
            "variant_dir": dirs["lean"], "chain": records["lean"].chain, "budget_bytes": LEAN_BUDGET,
            "over_floor_bytes": int(peak - floor), "goal_over_floor_bytes": 128 * 2**20,
            "load": {"concurrency": LEAN_CONCURRENCY, "round_s": 5.0 if quick else LEAN_ROUND_S, "rps": load["rps"],
                     "p99_ms": load["p99_ms"], "statuses": load["statuses"]},
            "replica_imported": stats.get("runtime_modules"), "max_batch_size": lean_plan.primary.max_batch_size,
            "node_memory_bytes": LEAN_NODE_MEMORY, "pack_batch": PACK_BATCH,
            "per_node": node["default_model"], "per_node_calibrated": node["calibrated"],
            "calibration": {"batches": list(CALIBRATION_BATCHES),
                            "model": {k: v for k, v in calibrated.to_dict().items() if k != "calibration_points"}},
            "protocol": "quick" if quick else "full",
        },
    }


def main_lean(quick: bool) -> None:
    """Run only the lean-runtime section and merge its keys into results/serving.json."""
    work = cache_dir("bench-serving")
    work.mkdir(parents=True, exist_ok=True)
    figures = lean_runtime_figures(work, quick=quick)
    # the lean section carries its own machine and conditions; the file's top-level ones stay those of the run
    # that measured the rest (an earlier run, perhaps on another machine)
    figures["lean"] = {**figures["lean"], "machine": machine_info(), "conditions": MONITOR.conditions()}
    path = Path(__file__).resolve().parent / "results" / "serving.json"
    existing = json.loads(path.read_text()) if path.exists() else {}
    existing = {k: v for k, v in existing.items() if k != "benchmark"}
    write_results("serving", {**existing, **figures})
    for key in ("serve_replica_floor_bytes", "replica_peak_rss_bytes", "replicas_per_node_ratio",
                "replicas_per_node_ratio_calibrated"):
        print(f"{key}: {figures[key]}")


