"""Early stopping on validation: train until the monitored figure stops improving, deliver the best epoch.

A baseline that stops too early makes every compressed variant look better than it is (a student cannot
honestly beat its teacher by points), so the fine-tune trains up to ``epochs`` over the whole train split
and stops once ``patience`` epochs in a row failed to improve ``monitor`` by more than ``min_delta``. The
model delivered is the best epoch's, not the last one's. The state travels in every checkpoint, so a run
resumed after a worker failure stops where an unbroken run would.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

Monitor = Literal["val_loss", "val_accuracy"]
LOWER_IS_BETTER = {"val_loss": True, "val_accuracy": False}


@dataclass
class EarlyStopping:
    """Tracks the best epoch of ``monitor``; ``patience`` 0 never stops (every epoch runs)."""

    monitor: str = "val_loss"
    patience: int = 1
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int = 0
    since_best: int = 0

    def __post_init__(self) -> None:
        if self.monitor not in LOWER_IS_BETTER:
            raise ValueError(f"monitor must be one of {', '.join(LOWER_IS_BETTER)}, got {self.monitor!r}")

    def improved(self, value: float) -> bool:
        if self.best is None or math.isnan(self.best):
            return not math.isnan(value)
        if LOWER_IS_BETTER[self.monitor]:
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, epoch: int, metrics: dict[str, Any]) -> bool:
        """Record one epoch's figures (``epoch`` is 1-based); True when it is the new best."""
        value = float(metrics[self.monitor])
        if self.improved(value):
            self.best, self.best_epoch, self.since_best = value, epoch, 0
            return True
        self.since_best += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.since_best >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EarlyStopping:
        return cls(**state)


def describe_training(metrics: dict[str, Any], history: list[dict[str, Any]]) -> str:
    """One line for a person: epochs run of the most, whether it stopped early, the epoch delivered, and
    the validation curve (``history``: one row per epoch with ``val_loss`` / ``val_accuracy``)."""
    runs = int(metrics.get("epochs_run") or metrics.get("epoch") or len(history))
    most = metrics.get("epochs_max")
    head = f"trained {runs} of {int(most)} epochs" if most else f"trained {runs} epochs"
    if metrics.get("stopped_early"):
        head += " (stopped early: validation stopped improving)"
    if metrics.get("best_epoch"):
        head += f"; delivered epoch {int(metrics['best_epoch'])}"
    curves = []
    for key, fmt in (("val_loss", "{:.3f}"), ("val_accuracy", "{:.3f}")):
        values = [fmt.format(row[key]) for row in history if row.get(key) is not None]
        if values:
            curves.append(f"{key} " + " -> ".join(values))
    return head + ("; " + "; ".join(curves) if curves else "")
