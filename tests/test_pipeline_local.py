"""kfp.local runs: what KFP reports per task (a small pipeline, fast), then end to end on real data (MiniLM +
Rotten Tomatoes): artifacts, MLflow runs, the selection, a failed variant that fails its task while the
others are selected, and cached reruns that redo only what failed or changed."""

from pathlib import Path
from typing import Any

import pytest
from kfp import dsl
from tightfit.components.common import TaskFailure

from tightfit import names
from tightfit.config import PipelineConfig, config_from_dict
from tightfit.footprint import Footprint

# Measured on every variant on CPU. gpu_peak_bytes (no GPU), perplexity (LMs) and the sparse-only
# compressed size are left unset by design; every other footprint metric must be there.
NOT_ON_CPU_CLASSIFIER = {names.GPU_PEAK_BYTES, names.PERPLEXITY, names.DISK_BYTES_COMPRESSED}
ROBUST_TARGET = {"memory": "1GiB", "disk": "64MiB", "min_accuracy": 0.55}


# A two-step sweep in miniature (no ``from __future__ import annotations`` here: KFP reads the annotations).
@dsl.component(base_image="python:3.11", install_kfp_package=False)
def toy_attempt(variant: str, chain: str) -> str:
    from tightfit.components.common import fail_task

    from tightfit.errors import ConfigError

    with fail_task("compress", variant):
        if chain == "bad":
            raise ConfigError("this chain cannot be built here")
    return variant


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def toy_gather(built: list) -> str:
    return ",".join(built)


@dsl.pipeline
def toy_sweep(variants: list) -> str:
    with dsl.ParallelFor(variants) as item:
        attempt = toy_attempt(variant=item.variant, chain=item.chain)
    return toy_gather(built=dsl.Collected(attempt.output)).output


def test_kfp_reports_each_task_and_the_cause_of_a_failure(tmp_path: Path) -> None:
    """The task states and failure lines ``run_local`` relies on, as kfp.local 2.17.3 reports them."""
    from kfp import local
    from tightfit.pipelines.kfp_watch import run_once

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               enable_caching=True, raise_on_error=True)
    items = [{"variant": "a", "chain": "good"}, {"variant": "b", "chain": "bad"}, {"variant": "c", "chain": "good"}]
    with (tmp_path / "log").open("w") as log:
        first = run_once(toy_sweep, {"variants": items}, log)
        again = run_once(toy_sweep, {"variants": items}, log)
        rest = run_once(toy_sweep, {"variants": [items[0], items[2]]}, log)

    # The failed task failed (and made the run fail: kfp.local skips the fan-in); the others finished.
    assert not first.succeeded and "toy-sweep" in first.error
    assert first.started == ["toy-attempt"] * 3 and first.failed_tasks == ["toy-attempt"]
    assert first.skipped == ["toy-gather"]
    assert first.variant_failures() == {
        "b": TaskFailure(step="compress", variant="b", cause="ConfigError: this chain cannot be built here")
    }
    assert first.step_failures() == []
    # Nothing failed is cached: the same run again redoes only the failed task.
    assert again.started == ["toy-attempt"] and again.cache_hits == ["toy-attempt"] * 2
    # The variants that succeeded fan in from the cache.
    assert rest.succeeded and rest.output == "a,c"
    assert rest.started == ["toy-gather"] and rest.cache_hits == ["toy-attempt"] * 2


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


@pytest.mark.slow
def test_fit_for_serving_quick_end_to_end(tmp_path: Path) -> None:
    from tightfit.pipelines.local import run_local

    # Budgets that do not hinge on latency (this machine is shared; p95 latency swings with load).
    config = _quick(target=ROBUST_TARGET)
    summary = run_local(config, pipeline="fit_for_serving", run_dir=tmp_path / "runs")
    assert [run.succeeded for run in summary.kfp_runs] == [True]
    assert summary.deploy_plan is not None

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
    (cached,) = again.kfp_runs
    assert cached.succeeded and cached.started == [] and "deploy" in cached.cache_hits
    assert again.chosen == summary.chosen and again.deploy_plan == summary.deploy_plan
    assert again.wall_s < 0.25 * summary.wall_s
    # Deployment switched off: the outer dsl.If is false, deploy neither runs nor comes from the cache.
    config.deploy.enabled = False
    off = run_local(config, pipeline="fit_for_serving", run_dir=tmp_path / "runs")
    assert off.kfp_runs[0].succeeded and off.kfp_runs[0].started == []
    assert "deploy" not in off.kfp_runs[0].cache_hits and off.deploy_plan is None


@pytest.mark.slow
def test_a_failed_variant_fails_its_task_the_others_are_selected_and_a_rerun_redoes_only_it(tmp_path: Path) -> None:
    from tightfit.pipelines.local import run_local

    variants = [
        {"variant": "fp32", "chain": "fp32"},
        {"variant": "bf16", "chain": "bf16"},
        # Valid in a config (keep_every >= 2), but MiniLM has 6 layers: it fails when compress applies it.
        {"variant": "too-shallow", "chain": "drop_layers:keep_every=7"},
    ]
    config = _quick(
        target={"memory": "1GiB", "disk": "64MiB"},  # an untrained head: no accuracy floor
        profiles={"quick": {"data": {"limit": 200}, "variants": variants, "measure": {"quick": True}}},
    )
    runs_dir = tmp_path / "runs"
    first = run_local(config, pipeline="compress_sweep", run_dir=runs_dir)

    # KFP: the variant's compress task failed (so kfp.local skipped select); a second run over the other two,
    # every task of which came from the cache, selected among them.
    every, rest = first.kfp_runs
    assert not every.succeeded and every.failed_tasks == ["compress-2"] and "select" in every.skipped
    assert rest.succeeded and rest.variants == ["fp32", "bf16"] and rest.started == ["select"]  # the rest: cache
    cause = "ConfigError: keep_every=7 would drop all 6 layers; use at most 6"
    assert first.failed == {"too-shallow": cause} and first.failures["too-shallow"].step == "compress"
    by_name = {r.variant: r for r in first.records}
    assert list(by_name) == ["fp32", "bf16", "too-shallow"]
    assert by_name["fp32"].ok and by_name["bf16"].ok and by_name["too-shallow"].error == f"{cause} (at compress)"
    assert first.chosen in {"fp32", "bf16"}
    assert first.selection["failed"] == {"too-shallow": f"{cause} (at compress)"}  # select saw it as failed
    assert "too-shallow" in Path(first.report_path or "").read_text()  # and the report lists it
    # The others are measured and logged; the failed variant is a FAILED run carrying its cause.
    _, runs = _mlflow_runs(first.tracking_uri, config.tracking.experiment)
    status = {r.data.tags.get(names.TAG_VARIANT): r.info.status for r in runs if r.data.tags.get(names.TAG_VARIANT)}
    assert status == {"fp32": "FINISHED", "bf16": "FINISHED", "too-shallow": "FAILED"}

    # Rerun: only the failed variant's compress runs again (and fails again); the rest, select included, is
    # served from the cache.
    second = run_local(config, pipeline="compress_sweep", run_dir=runs_dir)
    every_again, rest_again = second.kfp_runs
    assert every_again.started == ["compress-2"] and every_again.failed_tasks == ["compress-2"]
    assert rest_again.succeeded and rest_again.started == []
    assert second.failed == first.failed and second.chosen == first.chosen


def test_footprint_records_round_trip_through_the_fan_in() -> None:
    from tightfit.components.steps import record_json, records_from_json

    record = Footprint(variant="v", chain="bf16", params_total=7, accuracy=0.5, extra={"k": 1})
    assert records_from_json([record_json(record)]) == [record]
