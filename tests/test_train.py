"""Ray Train fine-tuning end to end: real MiniLM, real Rotten Tomatoes slice, 2 workers, MLflow, faults."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tightfit import names

pytestmark = pytest.mark.slow

LIMIT = 320  # rows per split: 320 train, 320 validation, 320 test


def _config(tmp: Path, **overrides):
    from tightfit.train import FinetuneConfig

    values: dict[str, Any] = dict(
        model="minilm", dataset="rotten_tomatoes", workers=2, cpus_per_worker=1, epochs=2, global_batch=8,
        lr=2e-4, seed=0, limit=LIMIT, max_length=64, out_dir=str(tmp / "out"),
        tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", target_accuracy=0.55,
    )
    values.update(overrides)
    return FinetuneConfig(**values)


@pytest.fixture(scope="module")
def baseline(module_tmp):
    """One unfaulted 2-worker run shared by the accuracy, tracking, progress and fault tests."""
    import io

    from tightfit.progress import LineReporter
    from tightfit.train.run import run_finetune

    tmp = module_tmp / "baseline"
    tmp.mkdir()
    log = io.StringIO()
    result = run_finetune(_config(tmp), progress=LineReporter(log))
    (tmp / "progress.log").write_text(log.getvalue())
    return result, tmp


def test_progress_reports_each_step_and_the_epochs(baseline) -> None:
    """What `tightfit finetune` prints in a log: the plan, Ray, the epochs with throughput and validation
    accuracy, each step's end with its duration."""
    import re

    result, tmp = baseline
    lines = (tmp / "progress.log").read_text().splitlines()
    text = "\n".join(lines)
    assert re.search(r"plan: 2 worker\(s\), micro-batch \d+ x \d+ accumulation", text), text
    for label in ("start Ray", "train (320 rows)", "evaluate and save"):
        assert sum(f"start   {label}" in line for line in lines) == 1, text
        assert sum(bool(re.search(rf"done    {re.escape(label)} \(\d", line)) for line in lines) == 1, text
    final = result.history[-1]["val_accuracy"]
    assert re.search(rf"train \(320 rows\) 2/2 epochs  epoch 2: [\d.]+ samples/s, loss [\d.]+, val acc {final:.3f}", text)


def _untrained_accuracy(tmp: Path, frame) -> float:
    import torch

    from tightfit.assets import load_model
    from tightfit.train.support import evaluate_classifier

    torch.manual_seed(0)
    loaded = load_model("minilm")
    loaded.model.save_pretrained(tmp / "untrained")
    loaded.tokenizer.save_pretrained(tmp / "untrained")
    return evaluate_classifier(tmp / "untrained", frame, max_length=64)["accuracy"]


def test_two_workers_learn_well_above_untrained_head_and_majority(baseline, tmp_path) -> None:
    from tightfit.data import load_dataset

    result, _ = baseline
    test = load_dataset("rotten_tomatoes", seed=0, limit=LIMIT).test
    majority = float(test["label"].value_counts(normalize=True).max())
    untrained = _untrained_accuracy(tmp_path, test)
    accuracy = result.metrics[names.TEST_ACCURACY]
    assert accuracy >= majority + 0.05, (accuracy, majority)
    assert accuracy >= untrained + 0.08, (accuracy, untrained)
    # The HF-format model dir loads back on its own, tokenizer included.
    assert (result.model_dir / "config.json").exists() and (result.model_dir / "tokenizer.json").exists()
    assert result.metrics["workers"] == 2 and result.metrics["epoch"] == 2
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(result.model_dir).id2label == {0: "rotten", 1: "fresh"}  # the dataset's names


def test_every_rank_and_the_footprint_reach_mlflow(baseline) -> None:
    from mlflow import MlflowClient

    result, tmp = baseline
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[names.TAG_ROLE] == names.ROLE_TRAINING
    for rank in (0, 1):
        peaks = client.get_metric_history(result.run_id, names.worker_metric(rank, names.PEAK_RSS_BYTES))
        assert [m.step for m in peaks] == [1, 2] and all(m.value > 2e8 for m in peaks)
        speed = client.get_metric_history(result.run_id, names.worker_metric(rank, names.SAMPLES_PER_S))
        assert all(m.value > 0 for m in speed)
    metrics = run.data.metrics
    assert metrics[names.MICRO_BATCH] * metrics[names.ACCUMULATION_STEPS] * metrics[names.WORKERS] >= 8
    assert 0 <= metrics[names.MEMORY_PREDICTION_ERROR] < 0.25  # calibrated model: about 0.02 measured
    assert metrics[names.TEST_ACCURACY] == pytest.approx(result.metrics[names.TEST_ACCURACY])
    assert names.TIME_TO_TARGET_S in metrics
    artifacts = {a.path for a in client.list_artifacts(result.run_id, names.ARTIFACT_MODEL)}
    assert f"{names.ARTIFACT_MODEL}/model.safetensors" in artifacts


def test_a_worker_killed_mid_epoch_resumes_from_its_checkpoint_and_matches(baseline, tmp_path) -> None:
    """SIGKILL a real Ray Train worker process (found through Ray's state API) during epoch 2: the worker
    group restarts from the epoch-1 checkpoint and ends with the unbroken run's metrics."""
    import os
    import signal
    import threading

    import psutil
    import ray
    from ray.util.state import list_actors
    from reliability_log import record
    from serving_support import free_port

    from tightfit.settings import start_local_ray
    from tightfit.train.run import run_finetune

    clean, _ = baseline
    port = free_port()
    start_local_ray(num_cpus=3, dashboard_port=port, log_to_driver=False)  # the state API reads the dashboard
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = run_finetune(_config(tmp_path, run_name="sigkill", max_failures=1))
        except BaseException as exc:  # surfaced by the assertions below
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    started = time.perf_counter()
    try:
        thread.start()
        storage = tmp_path / "out" / "ray_results" / "sigkill"
        deadline = time.time() + 300
        while not list(storage.glob("checkpoint_*")) and thread.is_alive() and time.time() < deadline:
            time.sleep(0.2)  # epoch 1 done and checkpointed: epoch 2 is under way
        workers = list_actors(address=f"http://127.0.0.1:{port}", detail=True, filters=[
            ("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
        assert thread.is_alive() and len(workers) == 2, (workers, outcome)
        victim = int(workers[0].pid)
        killed_at = time.perf_counter()
        os.kill(victim, signal.SIGKILL)
        thread.join(timeout=600)
        record("train_worker_kill", before_kill_s=round(killed_at - started, 1),
               after_kill_s=round(time.perf_counter() - killed_at, 1), survived="result" in outcome)
    finally:
        ray.shutdown()
    assert "error" not in outcome, outcome.get("error")
    assert not psutil.pid_exists(victim) or psutil.Process(victim).status() == psutil.STATUS_ZOMBIE
    faulted = outcome["result"]
    assert faulted.metrics["epoch"] == 2
    # Resumed, not restarted: epoch 1 was reported once (before the kill), then epoch 2 once.
    assert [h["epoch"] for h in faulted.history] == [1, 2]
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert faulted.metrics[key] == pytest.approx(clean.metrics[key], abs=1e-3), key
    assert faulted.metrics[names.TEST_ACCURACY] == pytest.approx(clean.metrics[names.TEST_ACCURACY], abs=0.01)


def _layer_dropped_student(out: Path, keep: tuple[int, ...] = (0, 2, 4)) -> Path:
    """A 3-layer MiniLM student (every other encoder layer kept), saved as an HF dir."""
    import torch

    from tightfit.assets import load_model

    torch.manual_seed(0)
    loaded = load_model("minilm")
    model = loaded.model
    model.bert.encoder.layer = torch.nn.ModuleList([model.bert.encoder.layer[i] for i in keep])
    model.config.num_hidden_layers = len(keep)
    model.save_pretrained(out)
    loaded.tokenizer.save_pretrained(out)
    return out


def test_distillation_trains_a_smaller_student_from_the_teacher(baseline, tmp_path) -> None:
    from mlflow import MlflowClient

    from tightfit.data import load_dataset
    from tightfit.train.run import run_finetune

    teacher, _ = baseline
    student_dir = _layer_dropped_student(tmp_path / "student")
    result = run_finetune(_config(  # through Ray Data (the baseline goes in memory): both ingests train
        tmp_path, model=str(student_dir), teacher_dir=str(teacher.model_dir), workers=1, epochs=2,
        temperature=2.0, alpha=0.5, ingest="ray_data",
    ))
    test = load_dataset("rotten_tomatoes", seed=0, limit=LIMIT).test
    majority = float(test["label"].value_counts(normalize=True).max())
    assert result.metrics[names.TEST_ACCURACY] >= majority + 0.03, (result.metrics, majority)
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(result.model_dir).num_hidden_layers == 3
    run = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(result.run_id)
    assert run.data.params[names.PARAM_TEACHER] == str(teacher.model_dir)
    assert result.run_name.startswith("distill-")


def test_a_split_that_fits_the_object_store_is_tokenized_once_and_cached_in_order() -> None:
    """A small split is materialized (its rows in the frame's order, the ids tokenize_batch gives); a split
    whose tokens exceed CACHE_SHARE of the object store stays a lazy, streamed dataset."""
    import numpy as np
    import ray
    from ray.data.dataset import MaterializedDataset

    from tightfit.assets import resolve_model_path
    from tightfit.data import load_dataset
    from tightfit.settings import start_local_ray
    from tightfit.train.ingest import CACHE_SHARE, ray_dataset, tokenize_batch, tokenized_bytes

    data = load_dataset("rotten_tomatoes", seed=0)
    model_dir = str(resolve_model_path("minilm")[0])
    small = data.validation.iloc[:300]
    start_local_ray(num_cpus=1, object_store_memory=80 * 2**20, log_to_driver=False)
    try:
        store = ray.cluster_resources()["object_store_memory"]
        cached = ray_dataset(small, model_dir, 64, rows_per_block=32)
        assert isinstance(cached, MaterializedDataset)
        rows = cached.take_all()
        expected = tokenize_batch(small, model_dir, 64)
        assert np.array_equal(np.stack([r["input_ids"] for r in rows]), expected["input_ids"])
        assert [int(r["labels"]) for r in rows] == expected["labels"].tolist()
        assert not isinstance(ray_dataset(small, model_dir, 64, cache=False), MaterializedDataset)
        # the whole train split at 512 tokens takes more than CACHE_SHARE of this 80 MiB store: it streams
        assert tokenized_bytes(len(data.train), 512) > CACHE_SHARE * store
        assert not isinstance(ray_dataset(data.train, model_dir, 512), MaterializedDataset)
    finally:
        ray.shutdown()


def test_memory_ingest_gives_each_rank_a_disjoint_seeded_share_and_auto_picks_it_for_small_splits() -> None:
    """Two ranks' training shares of an epoch together hold every row once; an epoch's order is the same
    when drawn again (a resumed run) and differs from the next epoch's; validation covers each row once,
    in order. ``auto`` keeps Rotten Tomatoes in memory and streams a split too large for it."""
    import numpy as np
    import ray
    import torch

    from tightfit.assets import resolve_model_path
    from tightfit.data import load_dataset
    from tightfit.settings import start_local_ray
    from tightfit.train.ingest import (
        MEMORY_INGEST_MAX_BYTES,
        MemoryShard,
        choose_ingest,
        put_split,
        tokenized_bytes,
    )

    data = load_dataset("rotten_tomatoes", seed=0)
    frame = data.validation.iloc[:300]
    model_dir = str(resolve_model_path("minilm")[0])
    cpu = torch.device("cpu")
    start_local_ray(num_cpus=1, log_to_driver=False)
    try:
        ref = put_split(frame, model_dir, 64)
        expected = ray.get(ref)
        shards = [MemoryShard(ref, rank=rank, world=2, seed=3) for rank in (0, 1)]

        def epoch_rows(shard: MemoryShard, epoch: int) -> np.ndarray:
            return torch.cat([b["input_ids"] for b in shard.iter_train(32, epoch, cpu)]).numpy()

        first = [epoch_rows(s, 0) for s in shards]
        assert [len(rows) for rows in first] == [150, 150]
        together = np.concatenate(first)
        assert sorted(map(bytes, together)) == sorted(map(bytes, expected["input_ids"]))
        assert np.array_equal(epoch_rows(shards[0], 0), first[0])  # drawn again: the same order
        assert not np.array_equal(epoch_rows(shards[0], 1), first[0])  # the next epoch: reshuffled
        labels = [torch.cat([b["labels"] for b in s.iter_eval(64, cpu)]).numpy() for s in shards]
        assert np.array_equal(labels[0], expected["labels"][0::2])
        assert np.array_equal(labels[1], expected["labels"][1::2])
    finally:
        ray.shutdown()
    rows = len(data.train) + len(data.validation)
    assert choose_ingest("auto", rows, 64) == "memory"
    too_many = MEMORY_INGEST_MAX_BYTES // tokenized_bytes(1, 512) + 1
    assert choose_ingest("auto", too_many, 512) == "ray_data"
    assert choose_ingest("ray_data", rows, 64) == "ray_data"
