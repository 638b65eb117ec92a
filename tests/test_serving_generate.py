"""Text generation end to end: SmolLM2-135M served by Ray Serve over real HTTP on 127.0.0.1.

The served continuation must equal the same greedy generation run in-process; malformed generation requests
get their 4xx; and the memory model calibrated on this replica (KV cache counted exactly) predicts the
measured peaks.
"""

from __future__ import annotations

import pytest
import requests
from serving_support import free_port, serve_until_healthy

pytestmark = pytest.mark.slow

BUDGET = 1536 * 2**20
PROMPTS = ["The capital of France is", "Once upon a time, a small robot"]


@pytest.fixture(scope="module")
def lm_served():
    """SmolLM2 planned under a 1.5 GiB budget (prompt cap 48 tokens, 16 new tokens) on a private Ray + Serve."""
    import ray
    from ray import serve

    from tightfit.memory.replica import footprint_for_source
    from tightfit.serve.calibrate import with_load_rss
    from tightfit.serve.plan import ServeOptions, plan_serving
    from tightfit.settings import start_local_ray

    record = with_load_rss([footprint_for_source("smollm2")])[0]
    plan = plan_serving([record], BUDGET, ServeOptions(max_tokens=48, max_new_tokens=16, max_batch=8))
    port = free_port()
    start_local_ray(num_cpus=2, for_serving=True)
    try:
        url = serve_until_healthy(plan, port, timeout_s=180)
        yield {"url": url, "plan": plan, "record": record, "port": port}
    finally:
        serve.shutdown()
        ray.shutdown()


def test_served_generation_equals_in_process_greedy(lm_served):
    from tightfit.serve.replica import generate, load_for_serving

    url, plan = lm_served["url"], lm_served["plan"]
    assert plan.primary.kind == "causal_lm" and plan.primary.kv_cache_bytes > 0
    assert plan.predicted_peak_bytes <= BUDGET
    response = requests.post(f"{url}/v1/generate", json={"texts": PROMPTS, "max_new_tokens": 8}, timeout=300)
    assert response.status_code == 200, response.text
    served = response.json()["results"]
    local = generate(load_for_serving(plan.primary), PROMPTS, 8)
    assert [r["text"] for r in served] == [r["text"] for r in local]
    assert all(r["text"].strip() and 1 <= r["new_tokens"] <= 8 for r in served)
    single = requests.post(f"{url}/v1/generate", json={"text": PROMPTS[0], "max_new_tokens": 8}, timeout=300).json()
    assert single["text"] == local[0]["text"] and single["variant"] == "smollm2"
    stats = requests.get(f"{url}/v1/stats", timeout=10).json()
    assert stats["peak_rss_bytes"] <= BUDGET


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"text": "word " * 200}, 422, "tokens"),
        ({"text": "hi", "max_new_tokens": 10_000}, 422, "max_new_tokens"),
        ({"text": "hi", "max_new_tokens": 0}, 422, "max_new_tokens"),
        ({"text": ""}, 422, "empty"),
    ],
)
def test_bad_generation_requests_get_their_4xx(lm_served, body, status, fragment):
    response = requests.post(f"{lm_served['url']}/v1/generate", json=body, timeout=60)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]


def test_classify_route_without_a_classifier_is_a_404(lm_served):
    response = requests.post(f"{lm_served['url']}/v1/classify", json={"text": "a fine film"}, timeout=30)
    assert response.status_code == 404 and "no classifier variant" in response.json()["error"]


def test_calibration_on_a_generating_replica_predicts_its_peaks(lm_served):
    """Calibrate from a fresh LM replica at three batch sizes (KV cache counted exactly, one fitted
    activation scale; each batch's peak read after resetting the replica's, loading's kept apart) and check
    the fitted model explains every measured replica peak."""
    from tightfit.memory.serving import fit_serving_model, prediction_error
    from tightfit.serve.calibrate import measure_replica

    base = f"http://127.0.0.1:{lm_served['port']}"
    points = measure_replica(lm_served["record"], base_url=base, batch_sizes=(1, 4, 8), max_tokens=32, new_tokens=8)
    assert [p.new_tokens for p in points] == [8, 8, 8] and points[-1].kv_bytes > points[0].kv_bytes > 0
    assert points[-1].peak_rss_bytes > points[0].peak_rss_bytes
    assert all(p.settled_rss_bytes and p.replica_load_peak_bytes for p in points)  # both moments measured
    model = fit_serving_model(points)
    for p in points:
        predicted = model.predict(
            p.weight_bytes, p.arch, batch=p.batch, seq_len=p.seq_len, dtype_bytes=p.dtype_bytes,
            new_tokens=p.new_tokens, load_rss_bytes=p.load_rss_bytes, settled_rss_bytes=p.settled_rss_bytes,
        ).total
        assert prediction_error(predicted, p.replica_peak_bytes) <= 0.15, (p.batch, predicted, p.replica_peak_bytes)
