"""Serving benchmark: tightfit's plan vs a naive Ray Serve deployment, same budget, same offered load.

Both run side by side on one private Ray (2 CPUs, one 1-CPU replica each) behind real HTTP on 127.0.0.1:
- naive: the fine-tuned fp32 variant, no batching, Ray Serve's default settings (max_ongoing_requests 5,
  unbounded queue, no memory reservation);
- tightfit: `plan_serving` over the fp32 / bf16 / int8 records under the same per-replica budget
  (variant, @serve.batch size, token cap, backpressure, ray_actor_options.memory), with the memory
  model calibrated on fresh replicas first.
A closed-loop asyncio client (CONCURRENCY connections for ROUND_S seconds) alternates between the two,
ROUNDS times each; medians are reported. Replica RSS is sampled every 20 ms; the memory prediction is
checked against the replica's ru_maxrss after a full-capacity probe (full batches at the token cap).
Writes benchmarks/results/serving.json.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _common import median, write_results

from tightfit.settings import cache_dir, start_local_ray

BUDGET = 800 * 2**20
CONCURRENCY = 32
ROUND_S = 15.0
ROUNDS = 2
THREADS = 1  # torch threads = CPUs per replica, both deployments


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_records(work: Path) -> tuple[list[Any], Any]:
    """fp32 (fine-tuned), bf16 and int8 variants with accuracy, latency and load RSS measured here."""
    import torch
    from fixtures_models import FINETUNED_MINILM_VERSION, _finetuned_minilm

    from tightfit import load_variant
    from tightfit.compress import build_variant
    from tightfit.data import load_dataset
    from tightfit.measure.quality import evaluate
    from tightfit.memory.replica import footprint_for_source
    from tightfit.serve.calibrate import with_load_rss
    from tightfit.spec import VariantSpec

    torch.set_num_threads(THREADS)
    base = _finetuned_minilm(None, FINETUNED_MINILM_VERSION, train_rows=3200, steps=120)
    dirs = {"fp32": base}
    for chain in ("bf16", "int8_dynamic"):
        out = work / chain
        if not (out / "manifest.json").exists():
            build_variant(base, VariantSpec.parse(chain), out, progress=False)
        dirs[chain] = out
    data = load_dataset("rotten_tomatoes", seed=0)
    test = data.test.head(400)
    records = []
    for name, path in dirs.items():
        record = footprint_for_source(str(path), name=name)
        variant = load_variant(path)
        record.accuracy = evaluate(variant.model, variant.tokenizer, test, "classifier")["accuracy"]
        for batch in (1, 32):
            texts = list(test["text"].head(batch))
            enc = variant.tokenizer(texts, padding="max_length", truncation=True, max_length=64, return_tensors="pt")
            times = []
            with torch.inference_mode():
                for _ in range(12 if batch == 1 else 5):
                    t0 = time.perf_counter()
                    variant.model(**enc)
                    times.append((time.perf_counter() - t0) * 1000)
            times.sort()
            setattr(record, f"latency_ms_b{batch}_p50", times[len(times) // 2])
            setattr(record, f"latency_ms_b{batch}_p95", times[int(0.95 * (len(times) - 1))])
        records.append(record)
        print(f"  {name}: accuracy {record.accuracy:.3f}, b1 {record.latency_ms_b1_p50:.1f} ms, "
              f"b32 {record.latency_ms_b32_p50:.1f} ms")
    return with_load_rss(records), data


async def _closed_loop(url: str, texts: list[str], seconds: float, concurrency: int) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    end = time.perf_counter() + seconds

    async def worker(k: int, session: aiohttp.ClientSession) -> None:
        i = k
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            async with session.post(url, json={"text": texts[i % len(texts)]}) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1
                if response.status == 200:
                    latencies.append((time.perf_counter() - t0) * 1000)
            i += concurrency

    start = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        await asyncio.gather(*(worker(k, session) for k in range(concurrency)))
    wall = time.perf_counter() - start
    latencies.sort()
    ok = statuses.get(200, 0)
    return {
        "rps": ok / wall,
        "p50_ms": latencies[len(latencies) // 2] if latencies else None,
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] if latencies else None,
        "statuses": statuses,
    }


class RssSampler:
    """Samples one process's RSS every 20 ms in a thread."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self.proc.memory_info().rss)
            except Exception:  # the process died: that is what oom_kills counts
                return
            time.sleep(0.02)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    import ray
    import requests
    from ray import serve

    from tightfit.serve.app import TightfitServer, build_app
    from tightfit.serve.calibrate import calibrate_serving_memory, text_of_tokens
    from tightfit.serve.ingress import TightfitIngress
    from tightfit.serve.plan import ServeOptions, plan_serving

    work = cache_dir("bench-serving")
    work.mkdir(parents=True, exist_ok=True)
    print("building and measuring variants ...")
    records, data = build_records(work)
    texts = [t for t in data.test["text"].tolist() if t.strip()][:400]
    port = _free_port()
    start_local_ray(num_cpus=2)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    try:
        print("calibrating the serving memory model on fresh replicas ...")
        by_name = {r.variant: r for r in records}
        model = calibrate_serving_memory([by_name["fp32"], by_name["bf16"]], base_url=base)
        for point in model.calibration_points:
            print(f"  calibration: batch {point['batch']}, replica idle {point['idle_rss_bytes'] >> 20} MiB, "
                  f"peak {point['peak_rss_bytes'] >> 20} MiB, load {point['load_rss_bytes'] >> 20} MiB")
        for r in records:
            print(f"  {r.variant}: load RSS {(r.extra or {}).get('serving_load_rss_bytes', 0) >> 20} MiB")
        plan = plan_serving(records, BUDGET, ServeOptions(cpus_per_replica=THREADS), model=model)
        print(plan.describe())
        naive_plan = plan_serving([by_name["fp32"]], BUDGET, ServeOptions(max_batch=1, cpus_per_replica=THREADS), model=model)
        naive_model: Any = TightfitServer  # Serve's defaults: no memory reservation, default concurrency
        naive_ingress: Any = TightfitIngress
        naive = naive_model.options(num_replicas=1, ray_actor_options={"num_cpus": THREADS}).bind(naive_plan.to_dict())
        serve.run(naive_ingress.options(**naive_plan.ingress_options()).bind(naive_plan.to_dict(), naive),
                  name="naive", route_prefix="/naive")
        serve.run(build_app(plan), name="tightfit", route_prefix="/tightfit")
        pids = {k: requests.get(f"{base}/{k}/healthz", timeout=30).json()["pid"] for k in ("naive", "tightfit")}
        runs: dict[str, list[dict[str, Any]]] = {"naive": [], "tightfit": []}
        max_rss: dict[str, int] = {"naive": 0, "tightfit": 0}
        for round_no in range(ROUNDS):
            for name in ("naive", "tightfit"):
                with RssSampler(pids[name]) as sampler:
                    result = asyncio.run(_closed_loop(f"{base}/{name}/v1/classify", texts, ROUND_S, CONCURRENCY))
                max_rss[name] = max(max_rss[name], max(sampler.samples, default=0))
                runs[name].append(result)
                print(f"  round {round_no + 1} {name}: {result['rps']:.1f} req/s, p99 {result['p99_ms']:.0f} ms, "
                      f"statuses {result['statuses']}")
        # full-capacity probe: full batches of max-token texts, the worst case the plan admits
        probe_text = text_of_tokens(plan.primary.source, plan.primary.max_tokens)
        limit = requests.get(f"{base}/tightfit/v1/stats", timeout=30).json()["batch_limits"][plan.primary.name]
        with RssSampler(pids["tightfit"]) as sampler:
            for _ in range(3):
                requests.post(f"{base}/tightfit/v1/classify", json={"texts": [probe_text] * limit}, timeout=300)
        max_rss["tightfit"] = max(max_rss["tightfit"], max(sampler.samples, default=0))
        stats = {k: requests.get(f"{base}/{k}/v1/stats", timeout=30).json() for k in ("naive", "tightfit")}
        restarts = sum(int(stats[k]["pid"] != pids[k]) for k in pids)
        measured_peak = int(stats["tightfit"]["peak_rss_bytes"])
    finally:
        serve.shutdown()
        ray.shutdown()
    naive_rps, tf_rps = median([r["rps"] for r in runs["naive"]]), median([r["rps"] for r in runs["tightfit"]])
    naive_p99, tf_p99 = median([r["p99_ms"] for r in runs["naive"]]), median([r["p99_ms"] for r in runs["tightfit"]])
    figures = {
        "rps_ratio": round(tf_rps / naive_rps, 3),
        "p99_ratio": round(tf_p99 / naive_p99, 3),
        "oom_kills": restarts,
        "max_rss_over_budget": round(max(max_rss["tightfit"], measured_peak) / BUDGET, 4),
        "memory_prediction_error": round(abs(measured_peak - plan.predicted_peak_bytes) / measured_peak, 4),
        "budget_bytes": BUDGET,
        "offered_load": {"concurrency": CONCURRENCY, "round_s": ROUND_S, "rounds": ROUNDS, "client": "closed-loop aiohttp"},
        "tightfit": {
            "variant": plan.primary.name, "max_batch_size": plan.primary.max_batch_size,
            "batch_limit_in_replica": limit, "max_ongoing_requests": plan.max_ongoing_requests,
            "max_queued_requests": plan.max_queued_requests, "predicted_peak_bytes": plan.predicted_peak_bytes,
            "measured_peak_bytes": measured_peak, "max_sampled_rss_bytes": max_rss["tightfit"],
            "rps": tf_rps, "p99_ms": tf_p99, "rounds": runs["tightfit"], "accuracy": plan.primary.accuracy,
        },
        "naive": {
            "variant": "fp32", "max_batch_size": 1, "max_ongoing_requests": 5, "max_queued_requests": -1,
            "max_sampled_rss_bytes": max_rss["naive"], "peak_rss_bytes": stats["naive"]["peak_rss_bytes"],
            "max_rss_over_budget": round(max_rss["naive"] / BUDGET, 4),
            "rps": naive_rps, "p99_ms": naive_p99, "rounds": runs["naive"], "accuracy": by_name["fp32"].accuracy,
        },
        "memory_model": {k: v for k, v in model.to_dict().items() if k != "calibration_points"},
        "variants": [{"name": r.variant, "accuracy": r.accuracy, "latency_ms_b1_p50": r.latency_ms_b1_p50,
                      "latency_ms_b32_p50": r.latency_ms_b32_p50, "disk_bytes": r.disk_bytes,
                      "load_rss_bytes": (r.extra or {}).get("serving_load_rss_bytes")} for r in records],
    }
    write_results("serving", figures)
    for key in ("rps_ratio", "p99_ratio", "oom_kills", "max_rss_over_budget", "memory_prediction_error"):
        print(f"{key}: {figures[key]}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
