"""Quality on a held-out split with the same tokenization and batching for every variant.

Classifiers: accuracy and macro-F1. Causal LMs: perplexity (token-level, padding masked). Inputs are
padded to ``max_length`` and the last batch is padded to ``batch_size`` with dummy rows (dropped from
the metrics), so a compiled variant sees one shape and never recompiles.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pandas as pd

from tightfit.errors import ConfigError


def _batched(texts: list[str], batch_size: int) -> list[tuple[list[str], int]]:
    """Chunks of texts padded to ``batch_size`` (repeating the first text), with the real row count."""
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        real = len(chunk)
        out.append((chunk + [chunk[0]] * (batch_size - real), real))
    return out


def predict_logits(
    model: Any, tokenizer: Any, texts: list[str], *, batch_size: int = 64, max_length: int = 64,
    forward: Callable[..., Any] | None = None,
) -> Any:
    """Float32 logits of a classifier for ``texts`` (fixed-shape batches)."""
    import torch

    run = forward if forward is not None else model
    outs = []
    with torch.inference_mode():
        for chunk, real in _batched(texts, batch_size):
            inputs = tokenizer(chunk, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
            outs.append(run(**dict(inputs)).logits[:real].float())
    return torch.cat(outs) if outs else torch.empty(0, 2)


def f1_macro(labels: list[int], preds: list[int]) -> float:
    """Mean of the per-class F1 scores over the classes present in labels or predictions."""
    scores = []
    for cls in sorted(set(labels) | set(preds)):
        tp = sum(1 for y, p in zip(labels, preds, strict=True) if y == cls and p == cls)
        fp = sum(1 for y, p in zip(labels, preds, strict=True) if y != cls and p == cls)
        fn = sum(1 for y, p in zip(labels, preds, strict=True) if y == cls and p != cls)
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else 0.0


def perplexity(
    model: Any, tokenizer: Any, texts: list[str], *, batch_size: int = 16, max_length: int = 64,
    forward: Callable[..., Any] | None = None,
) -> float:
    """exp(mean next-token cross-entropy) over every real (non-padding) token of ``texts``."""
    import torch
    import torch.nn.functional as F

    run = forward if forward is not None else model
    total_loss, total_tokens = 0.0, 0
    with torch.inference_mode():
        for chunk, real in _batched(texts, batch_size):
            enc = tokenizer(chunk, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
            logits = run(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[:real].float()
            targets = enc["input_ids"][:real, 1:]
            mask = enc["attention_mask"][:real, 1:].bool()
            losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, reduction="none")
            total_loss += float(losses[mask].sum())
            total_tokens += int(mask.sum())
    if total_tokens == 0:
        raise ConfigError("perplexity needs texts with at least two tokens")
    return math.exp(total_loss / total_tokens)


def evaluate(
    model: Any, tokenizer: Any, frame: pd.DataFrame, kind: str, *, batch_size: int = 64, max_length: int = 64,
    forward: Callable[..., Any] | None = None, runner: Any = None,
) -> dict[str, float]:
    """Accuracy and macro-F1 (classifiers) or perplexity (causal LMs) on ``frame``.

    ``forward`` replaces ``model(...)`` (e.g. a compiled callable); the model stays the source of truth.
    ``runner`` (a variant's ``Runner``, any runtime) scores classifiers through ``classify_logits``; an ONNX
    variant has no torch ``model`` and is scored through its runner alone.
    """
    if "text" not in frame.columns or frame.empty:
        raise ConfigError("evaluation needs a non-empty frame with a 'text' column")
    texts = frame["text"].astype(str).tolist()
    if runner is not None and model is None and kind == "causal_lm":  # an ONNX decoder
        from tightfit.measure.runners import runner_perplexity

        ppl = runner_perplexity(runner, texts, batch_size=min(batch_size, 16), max_length=max_length)
        return {"perplexity": ppl, "n": float(len(texts))}
    if kind == "causal_lm":
        ppl = perplexity(model, tokenizer, texts, batch_size=min(batch_size, 16), max_length=max_length, forward=forward)
        return {"perplexity": ppl, "n": float(len(texts))}
    if "label" not in frame.columns:
        raise ConfigError("classifier evaluation needs a 'label' column")
    if runner is not None:
        preds = [int(p) for p in runner.classify_logits(texts, max_length=max_length, batch_size=batch_size).argmax(-1)]
    else:
        logits = predict_logits(model, tokenizer, texts, batch_size=batch_size, max_length=max_length, forward=forward)
        preds = logits.argmax(dim=-1).tolist()
    labels = frame["label"].astype(int).tolist()
    accuracy = sum(1 for y, p in zip(labels, preds, strict=True) if y == p) / len(labels)
    return {"accuracy": accuracy, "f1_macro": f1_macro(labels, preds), "n": float(len(labels))}
