"""The serving planner, pool, request schema and autoscaling decision (no Ray needed)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from tightfit.errors import BudgetError, ConfigError
from tightfit.footprint import Footprint, save_footprints
from tightfit.memory.replica import footprint_for_source
from tightfit.memory.serving import ServingMemoryModel
from tightfit.serve.autoscale import desired_replicas
from tightfit.serve.plan import ServeOptions, plan_serving
from tightfit.serve.replica import RequestError, lru_evictions, validate_request

MIB = 2**20
MODEL = ServingMemoryModel()


@pytest.fixture(scope="module")
def minilm_dir():
    from tightfit.assets import minilm_path

    return str(minilm_path())


@pytest.fixture(scope="module")
def records(minilm_dir):
    """fp32 / bf16 / int8 records as the profiler writes them (sizes and load RSS as measured here)."""
    common: dict[str, Any] = {"kind": "classifier", "extra": {"variant_dir": minilm_dir}}
    return [
        Footprint(variant="fp32", chain="fp32", disk_bytes=90_868_376, peak_rss_load_bytes=462 * MIB,
                  accuracy=0.80, latency_ms_b1_p95=9.0, latency_ms_b32_p95=120.0, **common),
        Footprint(variant="bf16", chain="bf16", disk_bytes=45_440_084, peak_rss_load_bytes=579 * MIB,
                  accuracy=0.799, latency_ms_b1_p95=6.0, latency_ms_b32_p95=45.0, **common),
        Footprint(variant="int8", chain="int8_dynamic", disk_bytes=58_726_933, peak_rss_load_bytes=661 * MIB,
                  accuracy=0.77, latency_ms_b1_p95=7.0, latency_ms_b32_p95=50.0, **common),
        Footprint(variant="broken", status="failed", error="compress crashed", **common),
    ]


def test_budget_too_small_names_the_smallest_variant(records):
    with pytest.raises(BudgetError) as info:
        plan_serving(records, 500 * MIB, model=MODEL)
    message = str(info.value)
    assert "'fp32'" in message  # the smallest predicted need (lowest load RSS)
    assert "needs about" in message and "--memory-budget" in message


def test_picks_the_best_accuracy_that_fits_and_the_largest_batch(records):
    plan = plan_serving(records, 1 * 2**30, model=MODEL)
    # bf16 is within the 0.5-point tolerance of fp32 and smaller on disk (the one selection policy)
    assert plan.primary.name == "bf16"
    assert plan.predicted_peak_bytes <= plan.usable_bytes < plan.budget_bytes
    assert plan.primary.max_batch_size == 64
    assert "broken" in plan.rejected and "int8" in plan.rejected
    strict = plan_serving(records, 1 * 2**30, ServeOptions(accuracy_tolerance=0.0), model=MODEL)
    assert strict.primary.name == "fp32"
    # a tighter budget: fp32 still fits but with a smaller batch whose predicted peak stays inside
    tight = plan_serving(records, 680 * MIB, ServeOptions(accuracy_tolerance=0.0), model=MODEL)
    assert tight.primary.name == "fp32"
    assert 1 <= tight.primary.max_batch_size < strict.primary.max_batch_size
    assert tight.predicted_peak_bytes <= tight.usable_bytes


def test_the_planner_chooses_by_the_selection_policy(records):
    """What `tightfit compare` / the pipeline's select step chooses, serving chooses too."""
    from tightfit.select import select_variant
    from tightfit.spec import HardwareTarget

    for tolerance in (0.0, 0.005, 0.05):
        chosen = select_variant(records, HardwareTarget(latency_ms=40.0), tolerance=tolerance).chosen
        plan = plan_serving(records, 1 * 2**30, ServeOptions(latency_slo_ms=40.0, accuracy_tolerance=tolerance),
                            model=MODEL)
        assert chosen is not None and plan.primary.name == chosen.variant, tolerance
    assert [plan_serving(records, 1 * 2**30, ServeOptions(accuracy_tolerance=t), model=MODEL).primary.name
            for t in (0.0, 0.005, 0.05)] == ["fp32", "bf16", "bf16"]
    # a variant that loses on quality says so, and by how much, rather than "ranks first"
    plan = plan_serving(records, 1 * 2**30, ServeOptions(accuracy_tolerance=0.005), model=MODEL)
    assert "accuracy 0.7700 is more than 0.005 below the best 0.8000" in plan.rejected["int8"], plan.rejected
    assert "ranks first" in plan.rejected["fp32"]
    for bad in (-0.01, 1.0, float("nan")):
        with pytest.raises(ConfigError, match="accuracy_tolerance"):
            ServeOptions(accuracy_tolerance=bad)


def test_min_accuracy_latency_slo_and_explicit_variant(records):
    with pytest.raises(BudgetError):
        plan_serving(records, 1 * 2**30, ServeOptions(min_accuracy=0.9), model=MODEL)
    slo = plan_serving(records, 1 * 2**30, ServeOptions(latency_slo_ms=40.0), model=MODEL)
    assert slo.primary.latency_ms_batch is not None and 2 * slo.primary.latency_ms_batch <= 40.0
    assert slo.primary.max_batch_size < 64
    chosen = plan_serving(records, 1 * 2**30, model=MODEL, variant="int8")
    assert chosen.primary.name == "int8"
    with pytest.raises(ConfigError, match="not among"):
        plan_serving(records, 1 * 2**30, model=MODEL, variant="nope")


def test_backpressure_and_replica_memory_come_from_the_plan(records):
    plan = plan_serving(records, 1 * 2**30, ServeOptions(max_replicas=3), model=MODEL)
    options = plan.deployment_options()
    batch = plan.primary.max_batch_size
    assert options["max_ongoing_requests"] == 2 * batch and options["max_queued_requests"] == 2 * batch
    assert options["ray_actor_options"]["memory"] == plan.predicted_peak_bytes
    assert options["backpressure_config"]["status_code"] == 503 and options["backpressure_config"]["retry_after_s"] >= 1
    policy = options["autoscaling_config"]["policy"]["policy_function"]
    assert policy == "tightfit.serve.autoscale:memory_aware_policy"
    assert "fp32" in plan.describe() or "bf16" in plan.describe()


def test_the_batch_wait_is_one_sequences_share_of_a_full_batch(records):
    """Ray's batcher holds a batch that is not full for the whole wait: the plan waits about one sequence's
    time at its full batch, never more than Ray's default 10 ms, and not at all without batching."""
    for max_batch in (1, 8, 64):
        plan = plan_serving(records, 1 * 2**30, ServeOptions(max_batch=max_batch), model=MODEL)
        batch, batch_ms = plan.primary.max_batch_size, plan.primary.latency_ms_batch
        wait_ms = plan.batch_wait_timeout_s * 1000
        if batch == 1:
            assert wait_ms == 0
        else:
            assert batch_ms is not None and 1 <= wait_ms <= 10
            assert wait_ms == pytest.approx(min(10.0, max(1.0, batch_ms / batch)), abs=0.1)
            assert wait_ms < batch_ms / 2  # a wait that is a fraction of one batch, not of the whole queue


def test_serve_config_validates_with_rays_schema(records):
    from ray.serve.schema import ServeDeploySchema

    plan = plan_serving(records, 1 * 2**30, ServeOptions(max_replicas=2), model=MODEL)
    config = plan.to_serve_config()
    json.dumps(config)  # plain JSON, as a RayService embeds it
    schema = ServeDeploySchema.model_validate(config)
    deployments = {d.name: d for d in schema.applications[0].deployments}
    assert set(deployments) == {"TightfitServer"}
    assert deployments["TightfitServer"].ray_actor_options.memory == plan.predicted_peak_bytes
    assert schema.applications[0].import_path == "tightfit.ray_jobs.serve:app_builder"
    for deployment in deployments.values():  # the replicas keep pandas out (tightfit.serve.process)
        hook = deployment.ray_actor_options.runtime_env["env_vars"]["__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"]
        assert hook == "tightfit.serve.process.keep_pandas_out"


def test_the_replica_setup_hook_keeps_pandas_out_and_can_be_turned_off(monkeypatch):
    """The hook Ray runs first in a replica's worker makes ``import pandas`` an ImportError (so Serve
    skips its DataFrame encoder); ``TIGHTFIT_REPLICA_KEEP_PANDAS=1`` plans replicas without it."""
    import subprocess
    import sys

    from tightfit.serve.process import SETUP_HOOK, replica_env_vars

    module, func = SETUP_HOOK.rsplit(".", 1)
    code = (f"from {module} import {func}; {func}()\n"
            "try:\n    import pandas\nexcept ImportError:\n    print('kept out')\n"
            "import tightfit.serve.replica, tightfit.serve.plan\nprint('serving modules import')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["kept", "out", "serving", "modules", "import"], out.stderr
    monkeypatch.setenv("TIGHTFIT_REPLICA_KEEP_PANDAS", "1")
    assert replica_env_vars() == {}
    monkeypatch.delenv("TIGHTFIT_REPLICA_KEEP_PANDAS")
    assert replica_env_vars() == {"__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR": SETUP_HOOK}


def test_rayservice_manifest_from_the_same_plan(records, kuberay_crd_dir):
    import yaml

    from tightfit.kube.validate import validate_kuberay
    from tightfit.serve.deploy import rayservice_for_plan

    plan = plan_serving(records, 1 * 2**30, model=MODEL)
    manifest = rayservice_for_plan(plan, name="tf-serve", namespace="ml")
    validate_kuberay(manifest, kuberay_crd_dir)
    embedded = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    assert embedded["applications"] == plan.to_serve_config()["applications"]


def test_pool_members_fit_alone_and_are_evicted_by_bytes(records):
    plan = plan_serving(records, 2 * 2**30, ServeOptions(accuracy_tolerance=0.0, pool_size=3), model=MODEL)
    assert plan.pool[0].name == "fp32" and len(plan.pool) == 3
    assert all(v.resident_bytes <= plan.pool_bytes for v in plan.pool)
    held = min(plan.pool_bytes, sum(v.resident_bytes for v in plan.pool))
    assert plan.predicted_peak_bytes == plan.runtime_bytes + held + plan.primary.activation_bytes
    assert plan.predicted_peak_bytes <= plan.usable_bytes
    a, b, c = plan.pool
    room_for_two = a.resident_bytes + max(b.resident_bytes, c.resident_bytes)
    # LRU order a (oldest), b: loading c evicts a first, and only as much as c's bytes need
    assert lru_evictions([(a.name, a.resident_bytes), (b.name, b.resident_bytes)], c.resident_bytes, room_for_two) \
        == [a.name]
    assert lru_evictions([(b.name, b.resident_bytes)], c.resident_bytes, room_for_two) == []
    assert lru_evictions([(a.name, a.resident_bytes)], a.resident_bytes, a.resident_bytes) == [a.name]
    # Serve's model count: the most members that can ever be resident together
    tight = dataclasses.replace(plan, pool_bytes=room_for_two)
    assert tight.max_models_per_replica == 2 and plan.max_models_per_replica == 3
    assert dataclasses.replace(plan, pool_bytes=min(v.resident_bytes for v in plan.pool)).max_models_per_replica == 1


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{", 400, "not valid JSON"),
        (b"[1, 2]", 422, "JSON object"),
        (b'{"text": ""}', 422, "empty"),
        (b'{"text": "   "}', 422, "empty"),
        (b'{"text": 42}', 422, "must be a string"),
        (b'{"texts": ["ok", 3]}', 422, "must be a string"),
        (b'{"texts": []}', 422, "non-empty list"),
        (b'{"nope": "x"}', 422, "unknown field"),
        (b'{"text": "x", "variant": "ghost"}', 404, "unknown variant"),
        (b'{"text": "' + b"a" * 1_000_000 + b'"}', 413, "payload"),
    ],
)
def test_each_malformed_request_gets_its_4xx(records, body, status, fragment):
    plan = plan_serving(records, 1 * 2**30, model=MODEL)
    with pytest.raises(RequestError) as info:
        validate_request(body, plan, "classifier")
    assert info.value.status == status and fragment in info.value.message


def test_generation_endpoint_without_a_language_model_is_a_404(records):
    plan = plan_serving(records, 1 * 2**30, model=MODEL)
    with pytest.raises(RequestError) as info:
        validate_request(b'{"text": "hi"}', plan, "causal_lm")
    assert info.value.status == 404
    parsed = validate_request(b'{"texts": ["a", "b"]}', plan, "classifier")
    assert parsed.variant.name == plan.primary.name and parsed.texts == ["a", "b"]


def test_language_model_plan_accounts_for_the_kv_cache(tmp_path):
    """SmolLM2's shape (written as its config.json): concurrent sequences x tokens must fit."""
    config = {"architectures": ["LlamaForCausalLM"], "hidden_size": 576, "num_attention_heads": 9,
              "num_key_value_heads": 3, "num_hidden_layers": 30, "intermediate_size": 1536, "vocab_size": 49152}
    (tmp_path / "config.json").write_text(json.dumps(config))
    record = Footprint(variant="smol", kind="causal_lm", disk_bytes=538 * MIB, peak_rss_load_bytes=900 * MIB,
                       perplexity=12.0, extra={"variant_dir": str(tmp_path)})
    plan = plan_serving([record], 2 * 2**30, ServeOptions(max_new_tokens=64), model=MODEL)
    p = plan.primary
    assert p.kind == "causal_lm" and p.kv_cache_bytes == 46_080 * (128 + 64) * p.max_batch_size
    assert plan.predicted_peak_bytes <= plan.usable_bytes
    with pytest.raises(BudgetError, match="'smol'"):
        plan_serving([record], 1 * 2**30, model=MODEL)


def test_footprint_file_and_direct_variant(records, tmp_path, minilm_dir):
    from tightfit.serve.deploy import make_plan

    path = tmp_path / "footprints.json"
    save_footprints(path, records)
    plan = make_plan("1GiB", footprints=path, calibration=MODEL.save(tmp_path / "cal.json"))
    assert plan.primary.name == "bf16"
    direct = footprint_for_source("minilm")
    assert direct.disk_bytes and direct.disk_bytes > 80 * MIB and direct.extra["variant_dir"] == minilm_dir
    with pytest.raises(ConfigError, match="say what to serve"):
        make_plan("1GiB")


def test_autoscaling_decision_reads_rss_beside_load():
    assert desired_replicas(1, total_requests=10, target_per_replica=16, rss_fractions=[0.5]) == 1
    assert desired_replicas(1, total_requests=40, target_per_replica=16, rss_fractions=[0.5]) == 3
    assert desired_replicas(2, total_requests=4, target_per_replica=16, rss_fractions=[0.9, 0.4]) == 3
    assert desired_replicas(3, total_requests=4, target_per_replica=16, rss_fractions=[0.7, 0.7]) == 3
    assert desired_replicas(0, total_requests=0, target_per_replica=16, rss_fractions=[]) == 1


def test_the_request_size_limit_comes_from_the_plan(records):
    """Texts per request x token cap x bytes per token (+ the JSON around them), not a constant: a tighter
    token cap or batch gives a smaller limit."""
    from tightfit.serve.plan import BYTES_PER_TOKEN, REQUEST_OVERHEAD_BYTES

    wide = plan_serving(records, 1 * 2**30, ServeOptions(max_tokens=128), model=MODEL)
    narrow = plan_serving(records, 1 * 2**30, ServeOptions(max_tokens=32, max_batch=4), model=MODEL)
    for plan in (wide, narrow):
        most = max(v.max_batch_size * v.max_tokens for v in plan.pool)
        assert plan.max_request_bytes == most * BYTES_PER_TOKEN + REQUEST_OVERHEAD_BYTES
    assert narrow.max_request_bytes < wide.max_request_bytes
    assert wide.to_serve_config()["http_options"]["request_timeout_s"] == wide.request_timeout_s >= 60
