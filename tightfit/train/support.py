"""Driver-side helpers of the fine-tuning job: the MLflow callback, evaluation, run names."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

from tightfit import names


def unique_run_name(prefix: str = "finetune") -> str:
    """A run name no earlier run has: Ray silently resumes (and no-ops) a finished run of the same name."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def make_mlflow_callback(tracking_uri: str, run_id: str, target_accuracy: float | None) -> Any:
    """A ``ray.train.UserCallback`` that logs every rank's per-epoch figures to one MLflow run.

    It runs on the Ray Train controller (driver side), not in the workers; in Train V2 ``Result.metrics``
    holds only rank 0's last report, so each rank's figures travel in its report and are logged here.
    """
    from ray.train import UserCallback

    class _Callback(UserCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.reached_target = False

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            from mlflow import MlflowClient
            from mlflow.entities import Metric

            if not metrics:
                return
            epoch = int(metrics[0].get("epoch", 0))
            stamp = int(time.time() * 1000)
            rows: list[Metric] = []

            def add(key: str, value: float) -> None:
                rows.append(Metric(key, float(value), stamp, epoch))

            for m in metrics:
                rank = int(m.get("rank", 0))
                for key in (names.TRAIN_LOSS, names.SAMPLES_PER_S, names.WALL_S, names.PEAK_RSS_BYTES):
                    if key in m:
                        add(names.worker_metric(rank, key), m[key])
            first = metrics[0]
            add(names.EPOCH, epoch)
            add(names.TRAIN_LOSS, sum(m["train_loss"] for m in metrics) / len(metrics))
            add(names.VAL_LOSS, first["val_loss"])
            add(names.VAL_ACCURACY, first["val_accuracy"])
            add(names.SAMPLES_PER_S, sum(m["samples_per_s"] for m in metrics))
            add(names.WALL_S, max(m["wall_s"] for m in metrics))
            add(names.PEAK_RSS_BYTES, max(m["peak_rss_bytes"] for m in metrics))
            add(names.BEST_EPOCH, first.get("best_epoch", epoch))
            add(names.STOPPED_EARLY, first.get("stopped_early", 0))
            add(names.MICRO_BATCH, first["micro_batch"])
            add(names.ACCUMULATION_STEPS, first["accumulation_steps"])
            add(names.WORKERS, len(metrics))
            predicted = first.get("predicted_peak_bytes") or 0
            if predicted:
                add(names.PREDICTED_PEAK_BYTES, predicted)
                errors = [abs(m["peak_rss_bytes"] - predicted) / m["peak_rss_bytes"] for m in metrics]
                add(names.MEMORY_PREDICTION_ERROR, max(errors))
            if target_accuracy is not None and not self.reached_target and first["val_accuracy"] >= target_accuracy:
                self.reached_target = True
                add(names.TIME_TO_TARGET_S, first["elapsed_s"])
            MlflowClient(tracking_uri).log_batch(run_id, metrics=rows)

    return _Callback()


def evaluate_classifier(model_dir: str | Path, frame: Any, *, max_length: int, batch_size: int = 64) -> dict[str, float]:
    """Accuracy and macro-F1 of an HF classifier dir on a frame with ``text``/``label`` (in this process)."""
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers import logging as hf_logging

    hf_logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    predictions: list[int] = []
    texts = [str(t) for t in frame["text"]]
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i : i + batch_size], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
            predictions.extend(model(**enc).logits.argmax(-1).tolist())
    labels = np.asarray(frame["label"], dtype=int)
    preds = np.asarray(predictions, dtype=int)
    f1s = []
    for cls in np.unique(np.concatenate([labels, preds])):
        tp = int(((preds == cls) & (labels == cls)).sum())
        fp = int(((preds == cls) & (labels != cls)).sum())
        fn = int(((preds != cls) & (labels == cls)).sum())
        f1s.append(2 * tp / max(2 * tp + fp + fn, 1))
    return {"accuracy": float((preds == labels).mean()), "f1_macro": float(np.mean(f1s))}
