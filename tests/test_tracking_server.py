"""A real variant sweep logged to a real ``mlflow server`` on 127.0.0.1; outage mid-run; champion loads back."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
from test_tracking_support import SAMPLE_TEXTS, labels_before_logging, log_summary, real_sweep

from tightfit import names, track
from tightfit.footprint import Footprint
from tightfit.select import registry_aliases
from tightfit.spec import HardwareTarget
from tightfit.track.server import LocalMlflowServer

pytestmark = pytest.mark.slow

EXPERIMENT = "server-sweep"
MODEL_NAME = "tightfit-test-classifier"
DIGEST = "0123456789abcdef"


@pytest.fixture(scope="module")
def server(module_tmp: Path):
    srv = LocalMlflowServer(module_tmp / "mlflow-server")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def sweep(finetuned_minilm_dir: Path) -> list[tuple[Footprint, Path]]:
    return real_sweep(Path(finetuned_minilm_dir))


@pytest.fixture(scope="module")
def logged(server: LocalMlflowServer, sweep, module_tmp: Path) -> dict:
    """Log the sweep with its models under one parent, the summary, and the registry aliases."""
    t = track.Tracker(server.uri, EXPERIMENT, outbox_dir=module_tmp / "outbox")
    records = [r for r, _ in sweep]
    target = HardwareTarget.parse(min_accuracy=0.5)
    parent = track.start_parent("real-sweep", base_model="minilm", dataset="rotten_tomatoes", target=target, tracker=t)
    for record, variant_dir in sweep:
        track.log_variant(record, parent=parent, variant_dir=variant_dir, base_model="minilm",
                          dataset="rotten_tomatoes", dataset_digest=DIGEST, tracker=t)
    selection = log_summary(parent, records, t, target)
    chosen_aliases = registry_aliases(records, target)
    track.register_aliases(parent, chosen_aliases, model_name=MODEL_NAME, tracker=t)
    aliases = {alias: variant for variant, items in chosen_aliases.items() for alias in items}
    assert t.outbox.pending() == []
    return {"tracker": t, "parent": parent, "selection": selection, "aliases": aliases}


def test_every_metric_reads_back_by_name(server: LocalMlflowServer, sweep, logged: dict) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(server.uri)
    back = {r.variant: r for r in track.read_footprints(EXPERIMENT, logged["parent"], tracking_uri=server.uri)}
    assert set(back) == {r.variant for r, _ in sweep}
    for record, _ in sweep:
        measured = record.metrics()
        assert {names.ACCURACY, names.DISK_BYTES, names.PEAK_RSS_SERVE_BYTES, names.LATENCY_MS_B1_P95} <= set(measured)
        run = client.get_run(back[record.variant].extra["mlflow_run_id"])
        for metric in names.FOOTPRINT_METRICS:
            if metric in measured:
                assert run.data.metrics[metric] == pytest.approx(measured[metric]), (record.variant, metric)
                assert getattr(back[record.variant], metric) == pytest.approx(getattr(record, metric))
            else:
                assert metric not in run.data.metrics
        # the model is stored once, in the run's LoggedModel (test below), not copied into the run too
        assert names.ARTIFACT_MODEL not in {a.path for a in client.list_artifacts(run.info.run_id)}
    # The measured sweep behaves as compression promises: bf16 about half of fp32's bytes.
    assert back["bf16"].disk_bytes < 0.6 * (back["fp32"].disk_bytes or 0)  # type: ignore[operator]


def test_each_variant_is_a_logged_model_compared_by_footprint(server: LocalMlflowServer, sweep, logged: dict) -> None:
    """MLflow 3's model view: one LoggedModel per variant (params = spec, metrics = footprint on the
    dataset, linked to its run), searchable and ordered by a footprint metric; the champion points at it."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(server.uri)
    models = track.search_variant_models(EXPERIMENT, tracking_uri=server.uri,
                                         order_by=[{"field_name": f"metrics.{names.DISK_BYTES}", "ascending": True}])
    by_size = sorted(sweep, key=lambda item: item[0].disk_bytes or 0)
    assert [m.name for m in models] == [r.variant for r, _ in by_size]
    runs = {r.variant: r.extra["mlflow_run_id"]
            for r in track.read_footprints(EXPERIMENT, logged["parent"], tracking_uri=server.uri)}
    for model, (record, _) in zip(models, by_size, strict=True):
        assert str(model.status) == "READY" and model.model_type == names.LOGGED_MODEL_TYPE
        assert model.source_run_id == runs[record.variant]
        assert client.get_run(model.source_run_id).data.tags[names.TAG_MODEL_ID] == model.model_id
        assert model.params[names.PARAM_CHAIN] == record.chain
        metrics = {m.key: m for m in model.metrics}
        assert set(metrics) == set(record.metrics())
        for key, value in record.metrics().items():
            assert metrics[key].value == pytest.approx(value)
            assert (metrics[key].dataset_name, metrics[key].dataset_digest) == ("rotten_tomatoes", DIGEST)
        assert "MLmodel" in {a.path for a in client.list_logged_model_artifacts(model.model_id)}
    # the fluent API a user would call sees the same (filtered by a footprint figure)
    from tightfit.track.flavor import using_mlflow_uri

    with using_mlflow_uri(server.uri):
        exp_id = mlflow.get_experiment_by_name(EXPERIMENT).experiment_id  # type: ignore[union-attr]
        small = mlflow.search_logged_models(experiment_ids=[exp_id], output_format="list",
                                            filter_string=f"metrics.{names.DISK_BYTES} < {60 * 2**20}")
    assert {m.name for m in small} == {r.variant for r, _ in sweep if (r.disk_bytes or 0) < 60 * 2**20}
    # the registered champion's version is the chosen variant's LoggedModel
    version = client.get_model_version_by_alias(MODEL_NAME, names.ALIAS_CHAMPION)
    chosen = {m.name: m for m in models}[logged["aliases"][names.ALIAS_CHAMPION]]
    assert version.source == f"models:/{chosen.model_id}" and version.run_id == chosen.source_run_id


def test_champion_loads_back_and_predicts_the_same_labels(server: LocalMlflowServer, sweep, logged: dict) -> None:
    from tightfit.track.flavor import load_registered

    chosen = logged["selection"].chosen
    assert chosen is not None and logged["aliases"][names.ALIAS_CHAMPION] == chosen.variant
    variant_dir = dict((r.variant, d) for r, d in sweep)[chosen.variant]
    from tightfit.data import load_dataset

    texts = SAMPLE_TEXTS + load_dataset("rotten_tomatoes", seed=0, limit=600).test["text"].astype(str).tolist()[:26]
    expected = labels_before_logging(variant_dir, texts)
    before = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    model = load_registered(MODEL_NAME, names.ALIAS_CHAMPION, tracking_uri=server.uri)
    assert model.predict(texts).tolist() == expected
    # loading leaves no URI behind for later subprocesses (a pipeline once inherited a stopped server's)
    assert {key: os.environ.get(key) for key in before} == before
    assert len(set(expected)) == 2, "a fine-tuned classifier is not constant on 32 real reviews"

    from mlflow import MlflowClient

    client = MlflowClient(server.uri)
    tiers = {names.budget_alias(t): t for t in names.BUDGET_TIERS_BYTES}
    tier_aliases = [a for a in logged["aliases"] if a in tiers]
    assert tier_aliases, "every measured variant fits some memory tier"
    peaks = {r.variant: r.peak_rss_serve_bytes for r, _ in sweep}
    for alias in tier_aliases:
        version = client.get_model_version_by_alias(MODEL_NAME, alias)
        assert version.run_id
        assert peaks[logged["aliases"][alias]] <= tiers[alias]


def test_server_outage_mid_run_buffers_then_arrives(server: LocalMlflowServer, sweep, tmp_path: Path) -> None:
    t = track.Tracker(server.uri, "outage", outbox_dir=tmp_path, retry_interval_s=0)
    records = [r for r, _ in sweep]
    parent = track.start_parent("outage", tracker=t)
    track.log_variant(records[0], parent=parent, tracker=t)
    assert t.outbox.pending() == []

    server.stop()
    try:
        with pytest.warns(track.TrackingUnavailableWarning, match="unreachable"):
            for record in records[1:]:
                track.log_variant(record, parent=parent, tracker=t)  # the compute work goes on
        with warnings.catch_warnings():
            warnings.simplefilter("error", track.TrackingUnavailableWarning)
            log_summary(parent, records, t)
        pending = len(t.outbox.pending())
        assert t.offline and pending >= 3 * (len(records) - 1)
    finally:
        server.start()

    report = t.sync()
    assert report.complete and report.applied == pending and not t.offline
    back = track.read_footprints("outage", parent, tracking_uri=server.uri)
    assert [r.variant for r in back] == [r.variant for r in records]
    for original, read in zip(records, back, strict=True):
        assert read.metrics() == pytest.approx(original.metrics())
    assert t.sync().applied == 0  # nothing left, nothing duplicated
    assert len(track.read_footprints("outage", parent, tracking_uri=server.uri)) == len(records)
    # the LoggedModels buffered during the outage arrived too, once each
    assert sorted(m.name for m in track.search_variant_models("outage", tracking_uri=server.uri)) == sorted(
        r.variant for r in records
    )
