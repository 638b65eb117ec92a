"""Training losses shared by the single-process loop and the Ray Train job."""

from __future__ import annotations

from typing import Any


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
