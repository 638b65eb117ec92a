"""Tracking against a local SQLite store: run layout, names, read-back, outbox, idempotent resync.

The footprint records here are hand-built inputs (the real measured sweep is in test_tracking_server.py).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from test_tracking_support import log_summary

from tightfit import names, settings, track
from tightfit.footprint import Footprint
from tightfit.spec import HardwareTarget, VariantSpec
from tightfit.track.server import free_port

MiB = 2**20


def _records() -> list[Footprint]:
    return [
        Footprint(variant="fp32", accuracy=0.81, f1_macro=0.8, params_total=22_713_986, params_nonzero=22_713_986,
                  disk_bytes=87 * MiB, peak_rss_serve_bytes=600 * MiB, peak_rss_load_bytes=550 * MiB,
                  latency_ms_b1_p95=10.5, seq_len=64, noise="", latency_ms_b1_cv=0.02, load_avg_1m=0.4),
        Footprint(variant="bf16", chain="bf16", accuracy=0.80, disk_bytes=44 * MiB, peak_rss_serve_bytes=420 * MiB,
                  peak_rss_load_bytes=300 * MiB, latency_ms_b1_p95=4.0, compression_ratio=1.98, extra={"note": "cast"},
                  noise="latency_ms_b1", latency_ms_b1_cv=0.31, measure_cpu_share=0.6),
        Footprint(variant="pruned", chain="prune_unstructured:sparsity=0.5", accuracy=0.7, disk_bytes=60 * MiB,
                  peak_rss_serve_bytes=500 * MiB, peak_rss_load_bytes=450 * MiB, latency_ms_b1_p95=9.0),
        Footprint(variant="int4", chain="int4_weight_only", status="failed", error="UnsupportedError: needs a GPU"),
    ]


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the module (creating its tables takes seconds); tests use their own experiments."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def _runs(uri: str, experiment: str = names.DEFAULT_EXPERIMENT) -> list:
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    return list(client.search_runs([exp.experiment_id], max_results=1000)) if exp else []


def test_tracking_uri_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(settings.ENV_TRACKING_URI, raising=False)
    monkeypatch.setenv(settings.ENV_HOME, str(tmp_path / "home"))
    assert track.resolve_tracking_uri() == f"sqlite:///{tmp_path / 'home' / settings.LOCAL_DB_FILE}"
    monkeypatch.setenv(settings.ENV_TRACKING_URI, "http://127.0.0.1:1")
    assert track.resolve_tracking_uri() == "http://127.0.0.1:1"
    assert track.resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_sweep_layout_names_and_read_back(tmp_path: Path, store_uri: str) -> None:
    t = track.Tracker(store_uri, "sweep", outbox_dir=tmp_path / "run")
    records = _records()
    parent = track.start_parent("sweep-1", pipeline_run_id="p1", base_model="minilm", dataset="rotten_tomatoes",
                                   target=HardwareTarget.parse(memory="512MiB"), tracker=t)
    for r in records:
        track.log_variant(r, parent=parent, base_model="minilm", dataset="rotten_tomatoes", tracker=t)
    log_summary(parent, records, t, HardwareTarget.parse(memory="512MiB"))
    assert t.outbox.pending() == []

    runs = _runs(store_uri, "sweep")
    parents = [r for r in runs if r.data.tags[names.TAG_ROLE] == names.ROLE_PARENT]
    children = [r for r in runs if r.data.tags[names.TAG_ROLE] == names.ROLE_VARIANT]
    assert len(parents) == 1 and len(children) == len(records)
    parent_run = parents[0]
    assert parent_run.info.status == "FINISHED"
    assert parent_run.data.params[names.PARAM_TARGET] == "memory <= 512.0 MiB"
    assert parent_run.data.metrics[names.VARIANTS_FAILED] == 1
    assert parent_run.data.tags[names.TAG_SELECTED] == "bf16"
    by_name = {r.data.tags[names.TAG_VARIANT]: r for r in children}
    for record in records:
        run = by_name[record.variant]
        assert run.data.tags[names.MLFLOW_PARENT_RUN_ID_TAG] == parent_run.info.run_id
        assert run.data.params == VariantSpec.parse(record.chain, name=record.variant).to_params()
        for tag in (names.TAG_METHOD, names.TAG_BASE_MODEL, names.TAG_DATASET, names.TAG_VERSION, names.TAG_GIT_SHA):
            assert run.data.tags[tag], tag
        for metric, value in record.metrics().items():
            assert run.data.metrics[metric] == pytest.approx(value), metric
        assert run.info.status == ("FINISHED" if record.ok else "FAILED")
    assert by_name["pruned"].data.tags[names.TAG_METHOD] == "prune_unstructured"
    assert by_name["int4"].data.tags[names.TAG_ERROR] == "UnsupportedError: needs a GPU"
    assert {v for v, r in by_name.items() if r.data.tags[names.TAG_PARETO] == "true"} == {"fp32", "bf16"}

    back = track.read_footprints("sweep", tracking_uri=store_uri)
    assert [b.variant for b in back] == [r.variant for r in records]
    for original, read in zip(records, back, strict=True):
        assert read.metrics() == pytest.approx(original.metrics())
        assert (read.chain, read.status, read.error) == (original.chain, original.status, original.error)
        assert read.noise == original.noise  # the noise check travels as a tag ("" = timed and clean)
        assert isinstance(read.params_total, int | None) and isinstance(read.disk_bytes, int | None)
    assert back[1].extra["note"] == "cast"
    assert track.read_footprints("sweep", parent, tracking_uri=store_uri)[0].variant == "fp32"
    assert [b.variant for b in track.read_footprints("sweep", tracking_uri=store_uri, include_failed=False)] == [
        "fp32", "bf16", "pruned"]

    client = _client(store_uri)
    artifacts = {a.path for a in client.list_artifacts(parent_run.info.run_id)}
    assert {names.ARTIFACT_FOOTPRINT_TABLE, names.ARTIFACT_PARETO_PLOT, names.ARTIFACT_SELECTION} <= artifacts
    table = json.loads(Path(client.download_artifacts(parent_run.info.run_id, names.ARTIFACT_FOOTPRINT_TABLE,
                                                      str(tmp_path))).read_text())
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert [r["variant"] for r in rows] == [r.variant for r in records]
    assert rows[1]["chosen"] is True and rows[0]["pareto"] is True and rows[2]["pareto"] is False
    assert rows[0][names.PARAMS_TOTAL] == 22_713_986
    assert not list((t.outbox.artifact_dir / parent).glob("*")), "synced artifact copies are dropped"


def test_training_run_per_worker_metrics(tmp_path: Path, store_uri: str) -> None:
    t = track.Tracker(store_uri, "train", outbox_dir=tmp_path)
    run = track.start_run(names.ROLE_TRAINING, "finetune", params={names.PARAM_EPOCHS: 2}, tracker=t)
    for epoch in range(2):
        track.log_metrics(run, {names.EPOCH: epoch, names.VAL_ACCURACY: 0.6 + 0.1 * epoch,
                                   names.worker_metric(0, names.PEAK_RSS_BYTES): 1e9 + epoch,
                                   names.worker_metric(1, names.PEAK_RSS_BYTES): 2e9}, step=epoch, tracker=t)
    track.end_run(run, tracker=t)
    run_id = t.run_id(run)
    assert run_id is not None
    history = _client(store_uri).get_metric_history(run_id, names.VAL_ACCURACY)
    assert [(m.step, round(m.value, 3)) for m in history] == [(0, 0.6), (1, 0.7)]
    data = _client(store_uri).get_run(run_id).data
    assert data.metrics["worker1.peak_rss_bytes"] == 2e9
    assert data.tags[names.TAG_ROLE] == names.ROLE_TRAINING
    with pytest.raises(Exception, match="unknown run role"):
        track.start_run("bogus", "x", tracker=t)


def test_offline_buffers_with_one_warning_then_syncs_without_duplicates(tmp_path: Path, store_uri: str) -> None:
    outbox_dir = tmp_path / "run"
    dead = track.Tracker(f"http://127.0.0.1:{free_port()}", "offline", outbox_dir=outbox_dir, retry_interval_s=0)
    records = _records()
    with pytest.warns(track.TrackingUnavailableWarning, match="unreachable"):
        parent = track.start_parent("offline", pipeline_run_id="p-off", tracker=dead)
    with warnings.catch_warnings():
        warnings.simplefilter("error", track.TrackingUnavailableWarning)  # only one warning per outage
        for r in records:
            track.log_variant(r, parent=parent, tracker=dead)
        log_summary(parent, records, dead)
    assert dead.offline and len(dead.outbox.pending()) > 10
    assert dead.run_id(parent) is None

    # The store is back (here: a SQLite one); the same outbox syncs into it.
    back = track.Tracker(store_uri, "offline", outbox_dir=outbox_dir)
    report = back.sync()
    assert report.complete and report.applied > 10
    assert len(_runs(store_uri, "offline")) == len(records) + 1

    # A crash after applying but before acknowledging: replaying every op must not duplicate a run.
    lines = back.outbox.path.read_text().splitlines()
    back.outbox.path.write_text("\n".join(line for line in lines if '"done"' not in line) + "\n")
    assert back.sync().complete
    assert len(_runs(store_uri, "offline")) == len(records) + 1

    # Logging the same variant again under the same parent updates its run instead of adding one.
    track.log_variant(records[0], parent=parent, tracker=back)
    assert len(_runs(store_uri, "offline")) == len(records) + 1
    assert [r.variant for r in track.read_footprints("offline", tracking_uri=store_uri)] == [
        r.variant for r in records]


def test_read_errors_are_clear(tmp_path: Path, store_uri: str) -> None:
    from tightfit.errors import BackendError, ConfigError

    with pytest.raises(BackendError, match="unreachable"):
        track.read_footprints("x", tracking_uri=f"http://127.0.0.1:{free_port()}")
    track.Tracker(store_uri, "exists", outbox_dir=tmp_path).sync()
    with pytest.raises(ConfigError, match="no MLflow experiment 'missing'"):
        track.read_footprints("missing", tracking_uri=store_uri)


def test_system_metrics_are_host_context_on_the_run(tmp_path: Path, store_uri: str) -> None:
    import time

    t = track.Tracker(store_uri, "system", outbox_dir=tmp_path)
    run = track.start_run(names.ROLE_PARENT, "with-system-metrics", tracker=t)
    with track.system_metrics(run, interval_s=0.5, tracker=t) as sampling:
        time.sleep(2.0)
    assert sampling
    metrics = _client(store_uri).get_run(t.run_id(run)).data.metrics  # type: ignore[arg-type]
    assert any(k.startswith("system/cpu") for k in metrics), sorted(metrics)
    assert not set(metrics) & set(names.FOOTPRINT_METRICS)


def test_outbox_compacts_to_the_run_map(tmp_path: Path, store_uri: str) -> None:
    t = track.Tracker(store_uri, "compact", outbox_dir=tmp_path)
    parent = track.start_parent("compact", tracker=t)
    track.log_variant(_records()[0], parent=parent, tracker=t)
    run_id = t.run_id(parent)
    assert run_id is not None and t.outbox.path.stat().st_size > 200
    with t.outbox.locked():
        assert t.outbox.compact(max_bytes=0)
    assert t.outbox.read()[0] == [] and t.run_id(parent) == run_id
    track.log_variant(_records()[1], parent=parent, tracker=t)  # still nests under the same parent run
    assert len(_runs(store_uri, "compact")) == 3


def test_a_refused_op_is_skipped_and_does_not_block_the_rest(tmp_path: Path, store_uri: str) -> None:
    from tightfit.track.outbox import OP_LOG

    t = track.Tracker(store_uri, "refused", outbox_dir=tmp_path)
    run = track.start_run(names.ROLE_TRAINING, "r", params={names.PARAM_EPOCHS: 1}, tracker=t)
    t.push(OP_LOG, run, params={names.PARAM_EPOCHS: "2"})  # MLflow refuses changing a param
    track.log_metrics(run, {names.VAL_ACCURACY: 0.7}, tracker=t)
    assert t.outbox.pending() == [] and not t.offline
    data = _client(store_uri).get_run(t.run_id(run)).data  # type: ignore[arg-type]
    assert data.params[names.PARAM_EPOCHS] == "1" and data.metrics[names.VAL_ACCURACY] == 0.7
    assert '"rejected"' in t.outbox.path.read_text()
    # ... and it is kept, whole and with MLflow's reason, in the dead-letter file: never dropped silently.
    letters = t.outbox.dead_letters()
    assert len(letters) == 1 and letters[0].op.kind == OP_LOG and letters[0].op.record_id == run
    assert letters[0].op.payload["params"] == {names.PARAM_EPOCHS: "2"}
    assert "INVALID_PARAMETER_VALUE" in letters[0].reason or "param" in letters[0].reason.lower()


def test_ops_for_a_run_that_never_reached_mlflow_are_dead_letters(tmp_path: Path, store_uri: str) -> None:
    from tightfit.track.outbox import OP_END, OP_LOG, new_record_id

    t = track.Tracker(store_uri, "orphans", outbox_dir=tmp_path)
    ghost = new_record_id()  # its start op was never buffered (e.g. lost with another machine's outbox)
    t.push(OP_LOG, ghost, metrics=[[names.VAL_ACCURACY, 0.5, 0, 0]])
    t.push(OP_END, ghost, status="FINISHED")
    assert t.outbox.pending() == []
    letters = t.outbox.dead_letters()
    assert [(d.op.kind, d.op.record_id) for d in letters] == [(OP_LOG, ghost), (OP_END, ghost)]
    assert all(f"record {ghost}" in d.reason for d in letters)
    report = t.outbox.dead_letter_report(limit=1)
    assert report[0].startswith("2 MLflow operation(s) refused or not applied, kept in ")
    assert str(t.outbox.dead_letter_path) in report[0] and report[-1] == "  ... and 1 more"
