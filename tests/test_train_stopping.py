"""Early stopping on validation: the rule, and a real Ray Train run that stops and delivers its best epoch."""

from __future__ import annotations

from pathlib import Path

import pytest

from tightfit import names
from tightfit.errors import ConfigError
from tightfit.train.stopping import EarlyStopping, describe_training


def test_stops_after_patience_epochs_without_improvement() -> None:
    stopper = EarlyStopping("val_loss", patience=2, min_delta=0.01)
    curve = [0.70, 0.60, 0.595, 0.58, 0.62, 0.61]  # 0.595 is within min_delta: no improvement
    decisions = []
    for epoch, loss in enumerate(curve, start=1):
        stopper.update(epoch, {"val_loss": loss})
        decisions.append(stopper.should_stop)
        if stopper.should_stop:
            break
    assert decisions == [False, False, False, False, False, True]
    assert (stopper.best_epoch, stopper.best) == (4, 0.58)
    assert EarlyStopping.from_state(stopper.state_dict()) == stopper  # travels in a checkpoint


def test_accuracy_is_maximised_and_patience_zero_never_stops() -> None:
    acc = EarlyStopping("val_accuracy", patience=1)
    assert acc.update(1, {"val_accuracy": 0.7}) and not acc.update(2, {"val_accuracy": 0.69})
    assert acc.should_stop and acc.best_epoch == 1
    every = EarlyStopping("val_loss", patience=0)
    for epoch in range(1, 6):
        every.update(epoch, {"val_loss": 1.0})
    assert not every.should_stop and every.best_epoch == 1


def test_bad_settings_are_refused_in_one_line() -> None:
    from tightfit.train.config import FinetuneConfig

    with pytest.raises(ConfigError, match="monitor"):
        FinetuneConfig.from_dict({"monitor": "train_loss"})
    with pytest.raises(ConfigError, match="patience"):
        FinetuneConfig.from_dict({"patience": -1})


def _validation_loss(model_dir: Path, frame, max_length: int) -> float:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    enc = tokenizer([str(t) for t in frame["text"]], padding="max_length", truncation=True,
                    max_length=max_length, return_tensors="pt")
    labels = torch.tensor(frame["label"].to_numpy())
    with torch.no_grad():
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.float()
    return float(torch.nn.functional.cross_entropy(logits, labels))


@pytest.mark.slow
def test_a_run_stops_early_and_delivers_the_best_epoch(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from tightfit.data import load_dataset
    from tightfit.train import FinetuneConfig, run_finetune

    # min_delta far above any change of the loss: only the first epoch counts as better, so with
    # patience 1 the run must stop after epoch 2 of 4 and deliver epoch 1's weights.
    config = FinetuneConfig(
        model="minilm", dataset="rotten_tomatoes", workers=1, cpus_per_worker=2, epochs=4, patience=1,
        min_delta=10.0, global_batch=16, lr=2e-4, seed=0, limit=48, max_length=32, out_dir=str(tmp_path / "out"),
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", evaluate_test=False, log_model=False,
    )
    result = run_finetune(config)
    m = result.metrics
    assert (m["epoch"], m[names.EPOCHS_RUN], m[names.BEST_EPOCH], m[names.STOPPED_EARLY]) == (2, 2, 1, 1)
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert all(row.keys() >= {names.VAL_LOSS, names.VAL_ACCURACY} for row in result.history)
    # The delivered model is epoch 1's: its validation loss is epoch 1's, not the last epoch's.
    validation = load_dataset("rotten_tomatoes", seed=0, limit=48).validation
    delivered = _validation_loss(result.model_dir, validation, 32)
    first, last = (row[names.VAL_LOSS] for row in result.history)
    assert delivered == pytest.approx(first, abs=1e-4) and abs(first - last) > 1e-3
    client = MlflowClient(config.tracking_uri)
    metrics = client.get_run(result.run_id).data.metrics
    assert metrics[names.EPOCHS_RUN] == 2 and metrics[names.BEST_EPOCH] == 1 and metrics[names.STOPPED_EARLY] == 1
    line = describe_training(m, result.history)
    assert line.startswith("trained 2 of 4 epochs (stopped early") and "delivered epoch 1" in line
    assert "val_loss" in line and "->" in line


def test_the_run_summary_tells_how_the_baseline_trained(tmp_path: Path) -> None:
    """``tightfit run`` reads the fine-tune task's numbers (as ``finetune_step`` writes them) into one line."""
    import json

    from tightfit.pipelines.run_notes import run_notes

    stats = tmp_path / "pipeline" / "fit-for-serving-x" / "finetune" / "stats"
    stats.parent.mkdir(parents=True)
    stats.write_text(json.dumps({
        "train.epoch": 3.0, "train.epochs_run": 3.0, "train.epochs_max": 4.0, "train.best_epoch": 2.0,
        "train.stopped_early": 1.0, "train.test_accuracy": 0.781, "curve.val_accuracy.1": 0.74,
        "curve.val_accuracy.2": 0.78, "curve.val_accuracy.3": 0.775, "curve.val_loss.1": 0.52,
        "curve.val_loss.2": 0.55, "curve.val_loss.3": 0.61,
    }))
    lines = run_notes(tmp_path, {"notes": ["v: noisy latency"]})
    assert lines[0] == ("baseline: trained 3 of 4 epochs (stopped early: validation stopped improving); delivered "
                        "epoch 2; val_loss 0.520 -> 0.550 -> 0.610; val_accuracy 0.740 -> 0.780 -> 0.775; "
                        "test accuracy 0.781")
    assert lines[1:] == ["note: v: noisy latency"]  # no dead letters in this run dir
