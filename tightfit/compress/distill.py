"""Distillation: recover a pruned or shallower student's accuracy from the teacher's softened logits.

A single-process loop behind the registry function; the Ray Train worker loop (``tightfit.train.loop``)
uses the same ``distillation_loss``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tightfit.compress.registry import STAGE_RECOVERY, ApplyContext, register_method
from tightfit.compress.training import train_loop
from tightfit.errors import ConfigError
from tightfit.progress import Reporter

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DistillConfig", "distill", "distill_loop", "distillation_loss"]


def distillation_loss(
    student_logits: Any, teacher_logits: Any, labels: Any, temperature: float = 2.0, alpha: float = 0.5
) -> Any:
    """Knowledge distillation: ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels)``.

    The T^2 factor keeps the soft-target gradients on the same scale as CE when T changes (Hinton et al.).
    """
    import torch.nn.functional as F

    soft_student = F.log_softmax(student_logits / temperature, dim=-1)
    soft_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    kl = F.kl_div(soft_student, soft_teacher, reduction="batchmean", log_target=True) * temperature**2
    ce = F.cross_entropy(student_logits, labels)
    return alpha * kl + (1.0 - alpha) * ce


@dataclass(frozen=True)
class DistillConfig:
    """KD schedule: ``steps`` (0 = ``epochs`` over the train split), temperature, alpha (KD weight), lr."""

    epochs: float = 1.0
    steps: int = 0
    temperature: float = 2.0
    alpha: float = 0.5
    lr: float = 1e-4
    batch_size: int = 32
    max_length: int = 64

    def __post_init__(self) -> None:
        if self.steps < 0 or (self.steps == 0 and not float(self.epochs) > 0):
            raise ConfigError(f"give steps > 0 or epochs > 0 (got steps={self.steps}, epochs={self.epochs})")
        if not float(self.temperature) > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ConfigError(f"alpha weighs KD against CE and must be in [0, 1], got {self.alpha}")
        if not 0 < float(self.lr) < 1:
            raise ConfigError(f"lr must be in (0, 1), got {self.lr}")
        if self.batch_size < 1 or self.max_length < 8:
            raise ConfigError("batch_size must be >= 1 and max_length >= 8")

    def total_steps(self, n_train: int) -> int:
        return self.steps or max(1, math.ceil(float(self.epochs) * n_train / self.batch_size))


@register_method(
    "distill",
    family="distill",
    config=DistillConfig,
    stage=STAGE_RECOVERY,
    kinds=("classifier",),
    description="train the student on the teacher's softened logits (KL at temperature T) plus CE",
)
def distill(model: Any, config: DistillConfig, ctx: ApplyContext) -> Any:
    if ctx.teacher is None or ctx.data is None or ctx.tokenizer is None:
        raise ConfigError(
            "distill needs a teacher model and training data: pass data= (and optionally teacher=) "
            "to build_variant, or --dataset on the CLI"
        )
    steps = config.total_steps(len(ctx.data.train))
    return distill_loop(
        model, ctx.teacher, ctx.tokenizer, ctx.data.train, steps=steps, batch_size=config.batch_size,
        lr=float(config.lr), temperature=float(config.temperature), alpha=float(config.alpha),
        seed=ctx.seed, max_length=config.max_length, progress=ctx.extra.get("progress") or False,
    )


def distill_loop(
    student: Any,
    teacher: Any,
    tokenizer: Any,
    train_frame: pd.DataFrame,
    *,
    steps: int,
    batch_size: int = 32,
    lr: float = 1e-4,
    temperature: float = 2.0,
    alpha: float = 0.5,
    seed: int = 0,
    max_length: int = 64,
    progress: Reporter | bool = False,
    freeze_embeddings: bool = True,
) -> Any:
    """Train ``student`` on ``alpha * KL(teacher_T || student_T) * T^2 + (1 - alpha) * CE``."""
    import torch

    teacher.eval()

    def kd(m: Any, inputs: dict[str, Any], labels: Any) -> Any:
        with torch.no_grad():
            teacher_logits = teacher(**inputs).logits.float()
        return distillation_loss(m(**inputs).logits.float(), teacher_logits, labels, temperature, alpha)

    return train_loop(
        student, tokenizer, train_frame, kd, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
        max_length=max_length, description="distill", progress=progress, freeze_embeddings=freeze_embeddings,
    )
