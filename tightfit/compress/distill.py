"""Distillation: recover a pruned or shallower student's accuracy from the teacher's softened logits and,
optionally, from the teacher's hidden states layer by layer (``hidden`` > 0).

A shallower student (``drop_layers``) keeps teacher layers at the same evenly spaced places that
``teacher_layer_for`` maps to, so its layer j starts out computing what teacher layer ``map(j)`` did; the
hidden-state term (1 - cosine per token, as DistilBERT's cosine loss, layer-mapped as TinyBERT) keeps it
there while the logits term trains the whole.

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

__all__ = ["DistillConfig", "distill", "distill_loop", "distillation_loss", "hidden_state_loss", "teacher_layer_for"]


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


def teacher_layer_for(student_layer: int, student_layers: int, teacher_layers: int) -> int:
    """The teacher layer a student layer learns from: evenly spaced, last to last (the layers
    ``drop_layers:keep=n`` and ``keep_every`` keep, so a dropped-layer student starts aligned)."""
    return int((student_layer + 1) * teacher_layers / student_layers + 0.5) - 1


def hidden_state_loss(student_hidden: Any, teacher_hidden: Any, attention_mask: Any) -> Any:
    """Mean over the student's layers and the real (unpadded) tokens of ``1 - cos(student, teacher)``.

    ``*_hidden`` are a model's ``hidden_states`` (embeddings first, then one tensor per layer); a cosine
    ignores the scale of the residual stream, which differs between layers and shrinks with pruning.
    """
    import torch.nn.functional as F

    n_student, n_teacher = len(student_hidden) - 1, len(teacher_hidden) - 1
    mask = attention_mask.to(student_hidden[-1].dtype)
    total = 0.0
    for j in range(n_student):
        t = teacher_hidden[teacher_layer_for(j, n_student, n_teacher) + 1].detach()
        cos = F.cosine_similarity(student_hidden[j + 1].float(), t.float(), dim=-1)
        total = total + ((1.0 - cos) * mask).sum() / mask.sum()
    return total / n_student


@dataclass(frozen=True)
class DistillConfig:
    """KD schedule: ``steps`` (0 = ``epochs`` over the train split), temperature, alpha (KD weight), lr,
    and ``hidden``, the weight of the layer-mapped hidden-state term (0 = logits only)."""

    epochs: float = 1.0
    steps: int = 0
    temperature: float = 2.0
    alpha: float = 0.5
    lr: float = 1e-4
    batch_size: int = 32
    max_length: int = 64
    hidden: float = 0.0

    def __post_init__(self) -> None:
        if self.steps < 0 or (self.steps == 0 and not float(self.epochs) > 0):
            raise ConfigError(f"give steps > 0 or epochs > 0 (got steps={self.steps}, epochs={self.epochs})")
        if not float(self.temperature) > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ConfigError(f"alpha weighs KD against CE and must be in [0, 1], got {self.alpha}")
        if not 0.0 <= float(self.hidden) <= 100.0:
            raise ConfigError(f"hidden weighs the hidden-state term and must be in [0, 100], got {self.hidden}")
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
    description="train the student on the teacher's softened logits (KL at temperature T) plus CE, "
    "and optionally its hidden states layer by layer (hidden=)",
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
        hidden=float(config.hidden),
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
    hidden: float = 0.0,
) -> Any:
    """Train ``student`` on ``alpha * KL(teacher_T || student_T) * T^2 + (1 - alpha) * CE``, plus
    ``hidden * hidden_state_loss`` when ``hidden`` > 0."""
    import torch

    teacher.eval()
    with_states = hidden > 0

    def kd(m: Any, inputs: dict[str, Any], labels: Any) -> Any:
        with torch.no_grad():
            taught = teacher(**inputs, output_hidden_states=with_states)
        out = m(**inputs, output_hidden_states=with_states)
        loss = distillation_loss(out.logits.float(), taught.logits.float(), labels, temperature, alpha)
        if with_states:
            loss = loss + hidden * hidden_state_loss(out.hidden_states, taught.hidden_states,
                                                     inputs["attention_mask"])
        return loss

    return train_loop(
        student, tokenizer, train_frame, kd, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
        max_length=max_length, description="distill", progress=progress, freeze_embeddings=freeze_embeddings,
    )
