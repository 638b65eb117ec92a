"""Single-process training loops: a quick cross-entropy fine-tune and knowledge distillation.

Tests, benchmarks and the ``distill`` method use these when Ray is not wanted; the Ray Train job
(``ray_jobs/finetune.py``) runs the same ``distillation_loss``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from tightfit.errors import ConfigError
from tightfit.progress import Reporter, as_reporter

if TYPE_CHECKING:  # pandas only for annotations: a serving process never imports it through here
    import pandas as pd

LossFn = Callable[[Any, Any, Any], Any]  # (model, batch, labels) -> loss


def tokenize_batch(tokenizer: Any, texts: list[str], max_length: int = 64, pad_to_max: bool = False) -> dict[str, Any]:
    """Tokenize a batch the same way everywhere (truncate at ``max_length``)."""
    return dict(
        tokenizer(
            texts,
            padding="max_length" if pad_to_max else True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
    )


def _check_frame(frame: pd.DataFrame) -> None:
    missing = [c for c in ("text", "label") if c not in frame.columns]
    if missing or frame.empty:
        raise ConfigError(f"training data needs non-empty 'text' and 'label' columns (missing {missing})")


def batches(frame: pd.DataFrame, batch_size: int, steps: int, seed: int) -> Iterator[pd.DataFrame]:
    """``steps`` shuffled mini-batches, cycling through epochs with a new order each time."""
    import numpy as np

    rng = np.random.default_rng(seed)
    order: list[int] = []
    for _ in range(steps):
        if len(order) < batch_size:
            order.extend(rng.permutation(len(frame)).tolist())
        chosen, order = order[:batch_size], order[batch_size:]
        yield frame.iloc[chosen]


def train_loop(
    model: Any,
    tokenizer: Any,
    frame: pd.DataFrame,
    loss_fn: LossFn,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    max_length: int = 64,
    description: str = "training",
    progress: Reporter | bool = False,
    freeze_embeddings: bool = False,
) -> Any:
    """AdamW with linear warm-up/decay over ``steps`` batches; returns the model in eval mode.

    ``freeze_embeddings`` leaves the embedding tables (half of MiniLM's weights) untouched: a much cheaper
    step on CPU (no embedding gradients, half the optimizer state) at little cost in accuracy.
    """
    import torch

    _check_frame(frame)
    if freeze_embeddings:
        for module in model.modules():
            if isinstance(module, torch.nn.Embedding):
                module.weight.requires_grad_(False)
    if steps <= 0 or batch_size <= 0 or lr <= 0:
        raise ConfigError(f"steps, batch_size and lr must be positive (got {steps}, {batch_size}, {lr})")
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup)))
    )
    model.train()
    reporter = as_reporter(progress)
    reporter.start(description, description, total=steps, unit="steps")
    every = max(1, steps // 4)
    done = 0
    try:
        for batch in batches(frame, batch_size, steps, seed):
            inputs = tokenize_batch(tokenizer, batch["text"].tolist(), max_length)
            labels = torch.tensor(batch["label"].to_numpy(), dtype=torch.long)
            loss = loss_fn(model, inputs, labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            done += 1
            reporter.update(description, completed=done, detail=f"loss {loss.item():.3f}",
                            milestone=done % every == 0 and done < steps)
    except BaseException:
        reporter.finish(description, "failed")
        raise
    finally:
        if not isinstance(progress, Reporter):
            reporter.close()
    reporter.finish(description)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def quick_finetune(
    model: Any,
    tokenizer: Any,
    train_frame: pd.DataFrame,
    *,
    steps: int,
    batch_size: int = 32,
    lr: float = 5e-5,
    seed: int = 0,
    max_length: int = 64,
    progress: Reporter | bool = False,
    freeze_embeddings: bool = False,
) -> Any:
    """Cross-entropy fine-tune of a sequence classifier for ``steps`` batches (single process)."""

    def ce(m: Any, inputs: dict[str, Any], labels: Any) -> Any:
        import torch.nn.functional as F

        return F.cross_entropy(m(**inputs).logits.float(), labels)

    return train_loop(
        model, tokenizer, train_frame, ce, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
        max_length=max_length, description="fine-tune", progress=progress, freeze_embeddings=freeze_embeddings,
    )
