"""A 4-bit SmolLM2 served over HTTP (Ray Serve, 127.0.0.1): a budget the fp32 model cannot be planned into,
the KV cache counted in bf16, and the served continuation equal to the same greedy generation in-process.
On ONNX Runtime (``onnx_int4``), a smaller budget still that torch's int4 cannot be planned into, an fp32 KV
cache, and a replica that never imports torch."""

from __future__ import annotations

import pytest
import requests
from serving_support import free_port, serve_until_healthy

pytestmark = pytest.mark.slow

BUDGET = 2**30  # int4 replica: ~0.75-0.87 GiB planned (torch + transformers ~0.55-0.65 GiB, 117 MiB of weights,
# Ray's share, 8 % headroom; the spread is between machines); fp32 needs ~1.15-1.3 GiB
PROMPTS = ["The capital of France is", "Once upon a time, a small robot"]


def test_int4_variant_generates_over_http_within_a_budget_fp32_cannot_fit(smollm2_int4_dir):

    from tightfit.errors import BudgetError
    from tightfit.memory.replica import footprint_for_source
    from tightfit.memory.serving import ArchInfo, kv_cache_bytes
    from tightfit.serve.calibrate import with_load_rss
    from tightfit.serve.plan import ServeOptions, plan_serving

    options = ServeOptions(max_tokens=48, max_new_tokens=16, max_batch=8)
    fp32 = with_load_rss([footprint_for_source("smollm2")])[0]
    with pytest.raises(BudgetError):
        plan_serving([fp32], BUDGET, options)
    record = with_load_rss([footprint_for_source(str(smollm2_int4_dir), kind="causal_lm", name="int4-g32")])[0]
    plan = plan_serving([record], BUDGET, options)
    primary = plan.primary
    arch = ArchInfo.from_dir(smollm2_int4_dir, kind="causal_lm")
    # the KV cache of the planned batch: 48 prompt + 16 new tokens per sequence, bf16 (the int4 model computes in bf16)
    assert primary.kv_cache_bytes == kv_cache_bytes(arch, primary.max_batch_size, 48 + 16, 2) > 0
    assert plan.predicted_peak_bytes <= BUDGET
    stats = _serve_and_compare(plan)
    assert stats["peak_rss_bytes"] <= BUDGET


LEAN_BUDGET = 640 * 2**20  # ORT int4 replica: ~0.56 GiB planned (Serve + ORT ~0.39 GiB, 135 MiB of weights, an fp32
# KV cache of 8 x 64 tokens, 8 % headroom); torch's int4 needs ~0.75-0.87 GiB


def test_onnx_int4_decoder_serves_over_http_within_a_budget_torch_int4_cannot_fit(smollm2_int4_dir,
                                                                                  smollm2_ort_int4_dir):

    from tightfit.errors import BudgetError
    from tightfit.memory.replica import footprint_for_source
    from tightfit.memory.serving import ArchInfo, kv_cache_bytes
    from tightfit.serve.calibrate import with_load_rss
    from tightfit.serve.plan import ServeOptions, plan_serving

    options = ServeOptions(max_tokens=48, max_new_tokens=16, max_batch=8)
    torch_int4 = with_load_rss([footprint_for_source(str(smollm2_int4_dir), kind="causal_lm", name="int4-g32")])[0]
    with pytest.raises(BudgetError):
        plan_serving([torch_int4], LEAN_BUDGET, options)
    record = with_load_rss([footprint_for_source(str(smollm2_ort_int4_dir), kind="causal_lm",
                                                 name="ort-int4-g32")])[0]
    plan = plan_serving([record], LEAN_BUDGET, options)
    primary = plan.primary
    arch = ArchInfo.from_dir(smollm2_ort_int4_dir, kind="causal_lm")
    # the graph's KV cache is fp32: 48 prompt + 16 new tokens per sequence at 4 bytes an entry
    assert primary.kv_cache_bytes == kv_cache_bytes(arch, primary.max_batch_size, 48 + 16, 4) > 0
    assert plan.predicted_peak_bytes <= LEAN_BUDGET
    stats = _serve_and_compare(plan)
    assert stats["runtime_modules"] == {"torch": False, "transformers": False, "onnxruntime": True,
                                      "pandas": False, "pyarrow": False}
    assert stats["peak_rss_bytes"] <= LEAN_BUDGET


def _serve_and_compare(plan) -> dict:
    """Serve ``plan`` on a private Ray (127.0.0.1), check the served continuations equal in-process greedy
    generation of the planned variant, and return the replica's ``/v1/stats``."""
    import ray
    from ray import serve

    from tightfit.serve.replica import generate, load_for_serving
    from tightfit.settings import start_local_ray

    port = free_port()
    start_local_ray(num_cpus=2, for_serving=True)
    try:
        url = serve_until_healthy(plan, port, timeout_s=180)
        response = requests.post(f"{url}/v1/generate", json={"texts": PROMPTS, "max_new_tokens": 8}, timeout=300)
        assert response.status_code == 200, response.text
        served = [r["text"] for r in response.json()["results"]]
        assert served == [r["text"] for r in generate(load_for_serving(plan.primary), PROMPTS, 8)]
        assert "Paris" in served[0]
        return dict(requests.get(f"{url}/v1/stats", timeout=10).json())
    finally:
        serve.shutdown()
        ray.shutdown()
