"""Calibrate the serving memory model from real replicas.

For each variant a fresh Ray Serve replica (the real serving app, so the Ray worker, FastAPI and Serve
overheads are all in) loads it, warms up, and serves batches of 2-3 sizes at the full token cap; its
RSS when idle, its peak while loading, and its peak RSS (VmHWM, which catches spikes between samples)
after each batch, reset before it so loading's transient does not hide the forward, are the calibration
points. `fit_serving_model` turns them into coefficients.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

from tightfit.errors import BackendError
from tightfit.footprint import Footprint
from tightfit.memory.replica import footprint_for_source, source_of
from tightfit.memory.rss import median_figures
from tightfit.memory.rss import peak_rss_bytes as peak_rss
from tightfit.memory.serving import (
    ArchInfo,
    CalibrationPoint,
    ServingMemoryModel,
    activation_dtype_bytes,
    fit_serving_model,
)
from tightfit.names import RUNTIME_ONNXRUNTIME
from tightfit.serve.plan import ServeOptions, plan_serving
from tightfit.serve.replica import classify, generate, load_for_serving
from tightfit.settings import MEMORY_ROUNDS, MODEL_THREAD_PREFIX

CALIBRATION_APP = "tightfit-calibrate"


class LoadRss(NamedTuple):
    """A fresh plain process's RSS loading a variant as a replica does, in bytes."""

    base: int  # after importing the runtime (torch + transformers, or ONNX Runtime + tokenizers)
    peak: int  # the peak after loading + a warm-up forward (a load transient included)
    settled: int  # the RSS once that is over: what the replica's idle memory sits on


def measure_load_rss(source: str, kind: str = "classifier", timeout_s: float = 300.0, rounds: int = 1) -> LoadRss:
    """The RSS of a fresh plain process loading ``source`` with the replica's own loader on a model thread,
    as a replica loads: what a replica holds before Ray's share. ``rounds`` > 1: the medians over that many
    fresh processes (one process is one draw: a torchao int8 variant's load peak has two modes about 60 MiB
    apart)."""
    records = []
    for _ in range(max(1, rounds)):
        proc = subprocess.run(
            [sys.executable, "-m", "tightfit.serve.calibrate", source, kind],
            capture_output=True, text=True, timeout=timeout_s, check=False,
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise BackendError(f"measuring the load RSS of {source} failed: {proc.stderr.strip()[-400:]}")
        records.append(json.loads(lines[-1]))
    medians = median_figures(records, ("base", "peak", "settled"))
    return LoadRss(int(medians["base"]), int(medians["peak"]), int(medians["settled"]))


def with_load_rss(
    records: Sequence[Footprint], sources: dict[str, str] | None = None, rounds: int = 1
) -> list[Footprint]:
    """Records with ``extra.serving_load_rss_bytes`` and ``extra.serving_settled_rss_bytes``: the load peak
    and the RSS once loading is over, measured with the replica's own loader (plus a warm-up forward; the
    medians of ``rounds`` fresh processes), which the plan prefers to the profiler's figures."""
    out = []
    for record in records:
        source = (sources or {}).get(record.variant) or source_of(record)
        if record.ok and source and not (record.extra or {}).get("serving_load_rss_bytes"):
            extra = dict(record.extra or {})
            measured = measure_load_rss(source, record.kind, rounds=rounds)
            extra["serving_load_rss_bytes"], extra["serving_settled_rss_bytes"] = measured.peak, measured.settled
            record = dataclasses.replace(record, extra=extra)
        out.append(record)
    return out


def text_of_tokens(source: str, tokens: int) -> str:
    """A text that tokenizes to exactly ``tokens`` tokens (special tokens included) for this tokenizer."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source)
    words = ["the film was good and long"] * tokens
    ids = tok(" ".join(words), add_special_tokens=False)["input_ids"]
    specials = len(tok("a", add_special_tokens=True)["input_ids"]) - len(tok("a", add_special_tokens=False)["input_ids"])
    return str(tok.decode(ids[: max(1, tokens - specials)]))


def _wait_json(url: str, timeout_s: float = 120.0) -> dict[str, Any]:
    import requests

    deadline = time.time() + timeout_s
    while True:
        try:
            response = requests.get(url, timeout=10)
            if response.status_code == 200:
                return dict(response.json())
        except requests.RequestException:
            pass
        if time.time() > deadline:
            raise BackendError(f"calibration replica did not answer {url} within {timeout_s:.0f} s")
        time.sleep(0.5)


def measure_replica(
    record: Footprint,
    *,
    base_url: str,
    batch_sizes: Sequence[int] = (1, 16, 48),
    max_tokens: int = 64,
    new_tokens: int = 16,
    load_rounds: int = 1,
) -> list[CalibrationPoint]:
    """Serve ``record``'s variant in a fresh replica (Serve must be running) and measure its peaks:
    classifiers through ``/v1/classify``, causal LMs through ``/v1/generate`` with ``new_tokens`` each. The
    load RSS beside it: the median of ``load_rounds`` fresh plain processes (``measure_load_rss``)."""
    import requests
    from ray import serve

    from tightfit.serve.app import build_app
    from tightfit.serve.schema import DEPLOYMENT_NAME

    generating = record.kind == "causal_lm"
    new_tokens = new_tokens if generating else 0
    options = ServeOptions(
        max_tokens=max_tokens, max_batch=max(batch_sizes), headroom=0.0, pool_size=1, max_new_tokens=max(1, new_tokens)
    )
    plan = plan_serving([record], 64 * 2**30, options)
    plan.primary.max_batch_size = max(batch_sizes)
    plan.max_ongoing_requests = max(2 * max(batch_sizes), plan.max_ongoing_requests)
    plan.max_queued_requests = max(2 * max(batch_sizes), plan.max_queued_requests)
    serve.run(build_app(plan), name=CALIBRATION_APP, route_prefix="/calibrate")
    replica = serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=CALIBRATION_APP)
    try:
        idle = _wait_json(f"{base_url}/calibrate/v1/stats")
        load = measure_load_rss(plan.primary.source, plan.primary.kind, rounds=load_rounds)
        text = text_of_tokens(plan.primary.source, max_tokens)
        arch = ArchInfo.from_dir(plan.primary.source, kind=plan.primary.kind)
        points = []
        for batch in sorted(batch_sizes):
            body: dict[str, Any] = {"texts": [text] * batch}
            if generating:
                body["max_new_tokens"] = new_tokens
            route = "generate" if generating else "classify"
            replica.reset_peak.remote().result(timeout_s=60)  # the batch's own peak, not loading's
            response = requests.post(f"{base_url}/calibrate/v1/{route}", json=body, timeout=300)
            if response.status_code != 200:
                raise BackendError(f"calibration batch {batch} failed: {response.status_code} {response.text[:200]}")
            stats = _wait_json(f"{base_url}/calibrate/v1/stats")
            points.append(
                CalibrationPoint(
                    weight_bytes=plan.primary.weight_bytes,
                    arch=arch,
                    dtype_bytes=activation_dtype_bytes(record.chain),
                    batch=batch,
                    seq_len=max_tokens,
                    peak_rss_bytes=int(stats["peak_rss_bytes"]),
                    idle_rss_bytes=int(idle["rss_bytes"]),
                    load_rss_bytes=load.peak,
                    process_base_bytes=load.base,
                    new_tokens=new_tokens,
                    runtime=record.runtime,
                    settled_rss_bytes=load.settled,
                    replica_load_peak_bytes=int(idle["peak_rss_bytes"]),  # loading's, before any batch
                )
            )
        return points
    finally:
        serve.delete(CALIBRATION_APP)


def calibrate_serving_memory(
    records: Sequence[Footprint],
    *,
    base_url: str,
    batch_sizes: Sequence[int] = (1, 16, 48),
    max_tokens: int = 64,
    new_tokens: int = 16,
    load_rounds: int = MEMORY_ROUNDS,
) -> ServingMemoryModel:
    """Measure each variant in a fresh replica and fit the serving memory model to all the points (each
    variant's load RSS: the median of ``load_rounds`` fresh plain processes)."""
    points: list[CalibrationPoint] = []
    for record in records:
        points.extend(measure_replica(
            record, base_url=base_url, batch_sizes=batch_sizes, max_tokens=max_tokens, new_tokens=new_tokens,
            load_rounds=load_rounds,
        ))
    return fit_serving_model(points, source=f"calibrated on {', '.join(r.variant for r in records)}")


def _measure_here(source: str, kind: str) -> None:
    """Child side of `measure_load_rss`: print the RSS figures as JSON (the runtime a replica of this
    variant imports counts in the base: torch + transformers, or ONNX Runtime + tokenizers)."""
    import psutil

    record = footprint_for_source(source, kind=kind)
    if record.runtime == RUNTIME_ONNXRUNTIME:
        import onnxruntime  # noqa: F401
        import tokenizers  # noqa: F401
    else:
        import torch  # noqa: F401
        import transformers  # noqa: F401

    base = psutil.Process().memory_info().rss
    plan = plan_serving([record], 64 * 2**30, ServeOptions(pool_size=1))

    def load_and_warm() -> None:
        loaded = load_for_serving(plan.primary, 1)
        if kind == "causal_lm":
            generate(loaded, ["Hello"], 1)
        else:
            classify(loaded, ["warm up"])

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=MODEL_THREAD_PREFIX) as executor:
        executor.submit(load_and_warm).result()  # where a replica loads and serves (its malloc arena counts)
    peak = peak_rss()  # VmHWM: ru_maxrss would carry the forking parent's peak over exec
    settled = psutil.Process().memory_info().rss
    print(json.dumps({"base": base, "peak": peak, "settled": settled}))


if __name__ == "__main__":
    _measure_here(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "classifier")
