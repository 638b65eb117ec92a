"""End to end with kfp.local on real data (MiniLM + Rotten Tomatoes): artifacts, MLflow runs, the selection,
failures that still reach ``select``, and cached reruns that redo only what failed or changed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tightfit import names
from tightfit.config import PipelineConfig, config_from_dict
from tightfit.footprint import Footprint

pytestmark = pytest.mark.slow

# Measured on every variant on CPU. gpu_peak_bytes (no GPU), perplexity (LMs) and the sparse-only
# compressed size are left unset by design; every other footprint metric must be there.
NOT_ON_CPU_CLASSIFIER = {names.GPU_PEAK_BYTES, names.PERPLEXITY, names.DISK_BYTES_COMPRESSED}
ROBUST_TARGET = {"memory": "1GiB", "disk": "64MiB", "min_accuracy": 0.55}


def _executed_tasks(log_file: Path) -> list[str]:
    text = re.sub(r"\x1b\[[0-9;]*m", "", log_file.read_text())
    return re.findall(r"Executing task '([^']+)'", text)


def _mlflow_runs(uri: str, experiment: str) -> tuple[Any, list[Any]]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment} missing in {uri}"
    return client, client.search_runs([exp.experiment_id], max_results=200)


def _quick(**over: Any) -> PipelineConfig:
    import yaml

    from tightfit.config import DEFAULT_CONFIG

    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    for key, value in over.items():
        raw[key] = value
    return config_from_dict(raw, profile="quick")


def test_fit_for_serving_quick_end_to_end(tmp_path: Path) -> None:
    from tightfit.pipelines.local import run_local

    # Budgets that do not hinge on latency (this machine is shared; p95 latency swings with load).
    config = _quick(target=ROBUST_TARGET)
    summary = run_local(config, pipeline="fit_for_serving", run_dir=tmp_path / "runs")

    # The selection: a variant was chosen, it fits the memory budget as measured, and it is on the front.
    assert summary.chosen is not None, summary.selection
    records = {r.variant: r for r in summary.records}
    assert set(records) == {v.variant for v in config.variants}
    chosen = records[summary.chosen]
    assert chosen.ok and chosen.peak_rss_serve_bytes is not None
    assert chosen.peak_rss_serve_bytes <= config.target.memory_bytes
    assert summary.chosen in summary.selection["front"]
    from tightfit.select.choose import pareto_front

    assert summary.chosen in [r.variant for r in pareto_front(summary.records)]
    # The fine-tuned baseline learned something real: above chance on the held-out split.
    assert chosen.accuracy is not None and chosen.accuracy > 0.6

    # Artifacts: the HTML report with the inline Pareto plot, the PNG, the serving plan + RayService.
    report = Path(summary.report_path or "")
    assert report.exists() and "data:image/png;base64" in report.read_text()
    assert summary.chosen in report.read_text()
    assert Path(summary.pareto_path or "").stat().st_size > 1000
    manifests = list((tmp_path / "runs" / "pipeline").rglob("rayservice.yaml"))
    assert len(manifests) == 1
    import yaml

    rayservice = yaml.safe_load(manifests[0].read_text())
    assert rayservice["kind"] == "RayService"
    serve = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    memory = serve["applications"][0]["deployments"][0]["ray_actor_options"]["memory"]
    assert 0 < memory <= config.target.memory_bytes

    # MLflow: one parent, one nested run per variant with every footprint metric, a training run.
    client, runs = _mlflow_runs(summary.tracking_uri, config.tracking.experiment)
    parents = [r for r in runs if r.data.tags.get(names.TAG_ROLE) == names.ROLE_PARENT]
    assert len(parents) == 1
    parent_id = parents[0].info.run_id
    nested = [r for r in runs if r.data.tags.get(names.MLFLOW_PARENT_RUN_ID_TAG) == parent_id]
    assert sorted(r.data.tags[names.TAG_VARIANT] for r in nested) == sorted(records)
    expected = set(names.FOOTPRINT_METRICS) - NOT_ON_CPU_CLASSIFIER
    for run in nested:
        missing = expected - set(run.data.metrics)
        assert not missing, (run.data.tags[names.TAG_VARIANT], missing)
        assert run.data.params[names.PARAM_CHAIN] == records[run.data.tags[names.TAG_VARIANT]].chain
    assert any(r.data.tags.get(names.TAG_ROLE) == names.ROLE_TRAINING for r in runs)
    assert parents[0].data.tags.get(names.TAG_SELECTED) == summary.chosen
    # Registered with the configured alias.
    version = client.get_model_version_by_alias(config.tracking.registered_model, config.tracking.alias)
    assert version.run_id in {r.info.run_id for r in nested}

    # An unchanged rerun is served from cache.
    again = run_local(config, pipeline="fit_for_serving", run_dir=tmp_path / "runs")
    assert _executed_tasks(again.log_file) == []
    assert again.chosen == summary.chosen
    assert again.wall_s < 0.25 * summary.wall_s


def test_failed_variant_reaches_select_and_rerun_redoes_only_it(tmp_path: Path) -> None:
    from tightfit.pipelines.local import run_local

    variants = [
        {"variant": "fp32", "chain": "fp32"},
        {"variant": "int8-dynamic", "chain": "int8_dynamic"},
        # A valid spec that cannot be built here: fp16 needs a GPU.
        {"variant": "fp16-gpu-only", "chain": "fp16"},
    ]
    config = _quick(
        target={"memory": "1GiB", "disk": "64MiB"},  # an untrained head: no accuracy floor
        profiles={"quick": {"data": {"limit": 200}, "variants": variants, "measure": {"quick": True}}},
    )
    runs_dir = tmp_path / "runs"
    first = run_local(config, pipeline="compress_sweep", run_dir=runs_dir)

    assert "fp16-gpu-only" in first.failed
    assert re.search(r"GPU|cuda", first.failed["fp16-gpu-only"]), first.failed
    by_name = {r.variant: r for r in first.records}
    assert not by_name["fp16-gpu-only"].ok and by_name["fp32"].ok and by_name["int8-dynamic"].ok
    assert first.chosen in {"fp32", "int8-dynamic"}
    assert first.evicted_cache_entries >= 1
    # The other variants finished and are logged; the failed one is a FAILED run with its error.
    _, runs = _mlflow_runs(first.tracking_uri, config.tracking.experiment)
    status = {r.data.tags.get(names.TAG_VARIANT): r for r in runs if r.data.tags.get(names.TAG_VARIANT)}
    assert status["fp32"].info.status == "FINISHED" and status["int8-dynamic"].info.status == "FINISHED"
    assert status["fp16-gpu-only"].info.status == "FAILED"
    assert "GPU" in status["fp16-gpu-only"].data.tags[names.TAG_ERROR] or "cuda" in status[
        "fp16-gpu-only"
    ].data.tags[names.TAG_ERROR]

    # Rerun: everything that succeeded comes from cache; only the failed variant (and the fan-in) reruns.
    second = run_local(config, pipeline="compress_sweep", run_dir=runs_dir)
    executed = _executed_tasks(second.log_file)
    # Loop tasks are named compress-2/profile-2 (the baseline's are compress/profile).
    assert executed.count("compress-2") == 1, executed
    assert set(executed) <= {"compress-2", "profile-2", "select"}, executed
    assert second.failed.keys() == {"fp16-gpu-only"}
    assert [r.variant for r in second.records if r.ok] == [r.variant for r in first.records if r.ok]


def test_footprint_records_round_trip_through_the_fan_in() -> None:
    from tightfit.components.steps import record_json, records_from_json

    record = Footprint(variant="v", chain="bf16", params_total=7, accuracy=0.5, extra={"k": 1})
    assert records_from_json([record_json(record)]) == [record]
