"""What ``tightfit run`` prints besides the variant table: how the baseline trained (epochs run, the epoch
delivered, the validation curve), latencies flagged noisy, and MLflow operations that were refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def training_line(pipeline_root: Path) -> str | None:
    """The newest fine-tune of this run dir, as one line (``tightfit.train.describe_training``), from the
    numbers its ``stats`` Metrics artifact holds; None when the pipeline has no fine-tune."""
    from tightfit.train.stopping import describe_training

    found = sorted(pipeline_root.glob("*/finetune/stats"), key=lambda p: p.stat().st_mtime)
    if not found:
        return None
    stats: dict[str, float] = json.loads(found[-1].read_text())
    metrics = {k.removeprefix("train."): v for k, v in stats.items() if k.startswith("train.")}
    rows: dict[int, dict[str, Any]] = {}
    for key, value in stats.items():
        if key.startswith("curve."):
            _, name, epoch = key.split(".")
            rows.setdefault(int(epoch), {"epoch": int(epoch)})[name] = value
    line = describe_training(metrics, [rows[e] for e in sorted(rows)])
    if metrics.get("test_accuracy") is not None:
        line += f"; test accuracy {metrics['test_accuracy']:.3f}"
    return f"baseline: {line}"


def run_notes(run_root: Path, selection: dict[str, Any]) -> list[str]:
    """Lines for the console after the table: training, noisy measurements (the selection's notes), and
    the dead letters of the run's MLflow outbox."""
    from tightfit.track.outbox import Outbox

    lines = []
    training = training_line(run_root / "pipeline")
    if training:
        lines.append(training)
    lines += [f"note: {note}" for note in selection.get("notes") or []]
    lines += Outbox(run_root).dead_letter_report()
    return lines
