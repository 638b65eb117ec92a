"""Serving ONNX variants: the per-runtime memory model and planner (a pool may mix runtimes), and end to end a
real Ray Serve replica that serves ONNX variants over HTTP without importing torch."""

from __future__ import annotations

import dataclasses

import pytest
import requests
from serving_support import free_port, serve_until_healthy

from tightfit.memory.replica import footprint_for_source
from tightfit.memory.serving import ArchInfo, CalibrationPoint, ServingMemoryModel, fit_serving_model
from tightfit.names import RUNTIME_ONNXRUNTIME, RUNTIME_TORCH
from tightfit.serve.plan import ServeOptions, plan_serving, pool_runtime_bytes

MIB = 2**20


def test_the_runtime_term_is_per_runtime():
    model = ServingMemoryModel()
    arch = ArchInfo()
    torch_pred = model.predict(23 * MIB, arch, batch=1, seq_len=64, runtime=RUNTIME_TORCH)
    ort_pred = model.predict(23 * MIB, arch, batch=1, seq_len=64, runtime=RUNTIME_ONNXRUNTIME)
    assert ort_pred.runtime < torch_pred.runtime and ort_pred.weights == torch_pred.weights
    # fitting points of both runtimes gives each its own coefficients
    points = []
    for runtime, base, grow in ((RUNTIME_TORCH, 520 * MIB, 60 * MIB), (RUNTIME_ONNXRUNTIME, 120 * MIB, 30 * MIB)):
        for batch, extra in ((1, 0), (16, grow)):
            points.append(CalibrationPoint(weight_bytes=23 * MIB, arch=arch, dtype_bytes=4, batch=batch, seq_len=64,
                                           peak_rss_bytes=base + 150 * MIB + extra, idle_rss_bytes=base + 150 * MIB,
                                           load_rss_bytes=base, process_base_bytes=base // 2, runtime=runtime))
    fitted = fit_serving_model(points)
    assert fitted.runtime_bytes == 520 * MIB - 23 * MIB
    assert fitted.coefficients(RUNTIME_ONNXRUNTIME)["runtime_bytes"] == 120 * MIB - 23 * MIB
    assert fitted.coefficients(RUNTIME_ONNXRUNTIME)["activation_scale"] < fitted.activation_scale
    assert ServingMemoryModel.from_dict(fitted.to_dict()) == fitted


def test_the_planner_treats_runtimes_alike_and_a_pool_may_mix_them(onnx_variants):
    torch_fp32 = dataclasses.replace(footprint_for_source(str(onnx_variants["fp32"]), name="torch-fp32"),
                                     accuracy=0.80, peak_rss_load_bytes=520 * MIB)
    lean = dataclasses.replace(footprint_for_source(str(onnx_variants["onnx_int8_dynamic"]), name="ort-int8"),
                               accuracy=0.80, peak_rss_load_bytes=120 * MIB)
    assert (torch_fp32.runtime, lean.runtime) == (RUNTIME_TORCH, RUNTIME_ONNXRUNTIME)
    plan = plan_serving([torch_fp32, lean], 1536 * MIB, ServeOptions(pool_size=2, max_batch=8))
    assert plan.primary.name == "ort-int8" and plan.primary.runtime == RUNTIME_ONNXRUNTIME  # same quality, leaner
    assert [v.runtime for v in plan.pool] == [RUNTIME_ONNXRUNTIME, RUNTIME_TORCH]
    alone = [pool_runtime_bytes([v]) for v in plan.pool]
    assert plan.runtime_bytes == pool_runtime_bytes(plan.pool) == sum(alone)  # both runtimes stay imported
    small = plan_serving([torch_fp32, lean], 400 * MIB, ServeOptions(pool_size=2, max_batch=8))
    assert [v.name for v in small.pool] == ["ort-int8"] and "torch-fp32" in small.rejected


@pytest.fixture(scope="module")
def onnx_served(onnx_variants):
    """The fp32 and int8 ONNX forms of the fine-tuned MiniLM in one multiplexed pool, on a private Ray."""
    import ray
    from ray import serve

    from tightfit.serve.calibrate import with_load_rss
    from tightfit.settings import start_local_ray

    records = [dataclasses.replace(footprint_for_source(str(onnx_variants[d]), name=n), accuracy=acc)
               for n, d, acc in (("ort-fp32", "onnx", 0.80), ("ort-int8", "onnx_int8_dynamic", 0.79))]
    plan = plan_serving(with_load_rss(records), 768 * MIB,
                        ServeOptions(max_batch=8, pool_size=2, accuracy_tolerance=0.0))
    assert {v.name for v in plan.pool} == {"ort-fp32", "ort-int8"}, plan.rejected
    assert plan.primary.name == "ort-fp32" and all(v.runtime == RUNTIME_ONNXRUNTIME for v in plan.pool)
    start_local_ray(num_cpus=2, for_serving=True)  # every Ray service on 127.0.0.1
    try:
        yield {"url": serve_until_healthy(plan, free_port(), timeout_s=120), "plan": plan}
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.mark.slow
def test_an_onnx_replica_imports_no_torch_and_answers_like_the_torch_variant(onnx_served, onnx_variants, rt_full):
    from tightfit.compress import load_variant

    url = onnx_served["url"]
    torch_runner = load_variant(onnx_variants["fp32"]).runner
    texts = [t for t in rt_full.test["text"].astype(str).head(80) if torch_runner.count_tokens(t) <= 64][:48]
    expected = [r["label_id"] for r in torch_runner.classify(texts, max_length=64)]
    served: dict[str, list[int]] = {"ort-fp32": [], "ort-int8": []}
    for name in served:
        for start in range(0, len(texts), 8):
            response = requests.post(f"{url}/v1/classify", json={"texts": texts[start : start + 8], "variant": name},
                                     timeout=120)
            assert response.status_code == 200, response.text
            served[name] += [item["label_id"] for item in response.json()["results"]]
    assert served["ort-fp32"] == expected
    assert sum(a == b for a, b in zip(served["ort-int8"], expected, strict=True)) >= 0.95 * len(texts)
    stats = requests.get(f"{url}/v1/stats", timeout=30).json()
    assert set(stats["loaded_variants"]) == {"ort-fp32", "ort-int8"}
    assert stats["runtime_modules"] == {"torch": False, "transformers": False, "onnxruntime": True,
                                      "pandas": False, "pyarrow": False}
    assert stats["peak_rss_bytes"] <= onnx_served["plan"].budget_bytes
