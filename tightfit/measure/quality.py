"""Quality on a held-out split with the same tokenization and batching for every variant.

Classifiers: accuracy and macro-F1. Inputs are padded to ``max_length`` and the last batch is padded to
``batch_size`` with dummy rows (dropped from the metrics), so a compiled variant sees one shape and never
recompiles. Causal LMs: perplexity of the split's text as one token stream with a fixed context and
stride (``stream_perplexity``), and a zero-shot task metric on the split's labels (``zero_shot_accuracy``:
the answer word with the highest log-likelihood after a prompt, e.g. positive/negative for a review).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tightfit.errors import ConfigError

if TYPE_CHECKING:  # pandas only for annotations: a serving process never imports it through here
    import pandas as pd


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


# ------------------------------------------------------------------------------ causal LMs on real text
LM_CONTEXT = 128
"""Tokens per perplexity window (and per calibration chunk): a fixed context for every variant."""
LM_STRIDE = 64
"""Window step: each window scores only its last ``LM_STRIDE`` tokens, the first ``context - stride`` are context."""


def token_stream(tokenizer: Any, texts: list[str], max_tokens: int | None = None) -> Any:
    """``texts`` as one stream of token ids (each text followed by a newline, no special tokens): the
    corpus form of a text split, tokenized the same way for every variant."""
    import torch

    ids: list[int] = []
    for start in range(0, len(texts), 256):
        for row in tokenizer([t + "\n" for t in texts[start : start + 256]], add_special_tokens=False)["input_ids"]:
            ids.extend(row)
        if max_tokens is not None and len(ids) >= max_tokens:
            break
    return torch.tensor(ids[:max_tokens] if max_tokens is not None else ids, dtype=torch.long)


def token_chunks(tokenizer: Any, texts: list[str], chunks: int, length: int = LM_CONTEXT) -> Any:
    """``chunks`` x ``length`` token ids cut from the stream of ``texts`` (calibration and probe batches)."""
    stream = token_stream(tokenizer, texts, chunks * length)
    if len(stream) < chunks * length:
        raise ConfigError(
            f"the split holds {len(stream)} tokens, fewer than {chunks} chunks x {length}; use fewer chunks"
        )
    return stream.view(chunks, length)


def stream_perplexity(
    model: Any, ids: Any, *, context: int = LM_CONTEXT, stride: int = LM_STRIDE, batch_size: int = 4,
    forward: Callable[..., Any] | None = None,
) -> float:
    """Perplexity of a token stream with a sliding window (HF's strided recipe, fixed shapes).

    Window ``k`` covers ``[k*stride, k*stride + context)``; the first window scores all its tokens, every
    later one only its last ``stride`` tokens (``context - 1`` when ``stride == context``: disjoint windows),
    so each token is scored at most once, with up to ``context - 1`` tokens of left context. A tail shorter
    than one stride is left out (every window has the same shape).
    """
    import torch
    import torch.nn.functional as F

    if not 0 < stride <= context:
        raise ConfigError(f"stride must be in (0, context]; got stride={stride}, context={context}")
    if len(ids) < context + 1:
        raise ConfigError(f"perplexity needs at least {context + 1} tokens of text, got {len(ids)}")
    run = forward if forward is not None else model
    device = next(model.parameters()).device
    starts = list(range(0, len(ids) - context + 1, stride))
    total, count = 0.0, 0
    with torch.inference_mode():
        first = ids[:context][None].to(device)  # the first window scores every token it holds
        logits = run(input_ids=first).logits.float()
        total += float(F.cross_entropy(logits[0, :-1], first[0, 1:], reduction="sum"))
        count += context - 1
        later = starts[1:]
        scored = min(stride, context - 1)  # a window's first token has no context inside it
        for begin in range(0, len(later), batch_size):
            x = torch.stack([ids[s : s + context] for s in later[begin : begin + batch_size]]).to(device)
            # only the last ``scored + 1`` positions' logits are needed (the head is a third of the compute)
            logits = _last_logits(run, x, scored + 1)
            total += float(F.cross_entropy(logits[:, :-1].transpose(1, 2), x[:, -scored:], reduction="sum"))
            count += int(x[:, -scored:].numel())
    return math.exp(total / count)


def _last_logits(run: Callable[..., Any], x: Any, keep: int, **kwargs: Any) -> Any:
    """Float logits of the last ``keep`` positions (``logits_to_keep`` where the model takes it)."""
    try:
        out = run(input_ids=x, logits_to_keep=keep, **kwargs).logits
    except TypeError:  # a model without logits_to_keep computes them all
        out = run(input_ids=x, **kwargs).logits
    return out[:, -keep:].float()


def _next_token_log_probs(model: Any, rows: list[list[int]], pad: int, device: Any) -> Any:
    """Log-probabilities of the token after each row: rows left-padded (positions counted from each row's
    first real token, so padding changes nothing) and only the last position's logits computed."""
    import torch

    width = max(len(r) for r in rows)
    x = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = _last_logits(model, x, 1, attention_mask=mask, position_ids=positions)
    return torch.log_softmax(logits[:, -1], dim=-1).cpu()


def _log_probs(model: Any, rows: list[list[int]], pad: int, device: Any) -> Any:
    """Log-probabilities of the next token at every position of right-padded ``rows``."""
    import torch

    width = max(len(r) for r in rows)
    x = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
    return torch.log_softmax(model(input_ids=x, attention_mask=mask).logits.float(), dim=-1)


@dataclass(frozen=True)
class ZeroShotTask:
    """A labelled text task posed to a causal LM: ``prompt`` (with ``{text}``) and one answer per label id."""

    prompt: str
    answers: tuple[str, ...]


ZERO_SHOT_TASKS = {
    # chosen on 160 validation rows with SmolLM2 in bf16 (0.80, against 0.59 for a chat-template question and
    # 0.53 for "Is this review positive or negative? Answer:"); the test split is never used to pick it
    "rotten_tomatoes": ZeroShotTask("Review: {text}\nSentiment:", (" negative", " positive")),
    "sms_spam": ZeroShotTask("Message: {text}\nIs this message spam? Answer (yes or no):", (" no", " yes")),
}


def zero_shot_task(dataset: str, label_names: list[str]) -> ZeroShotTask:
    """The task for a built-in dataset; any other labelled dataset asks for its label names."""
    if dataset in ZERO_SHOT_TASKS:
        return ZERO_SHOT_TASKS[dataset]
    listing = " or ".join(label_names)
    return ZeroShotTask(f"Text: {{text}}\nLabel ({listing}):", tuple(f" {name}" for name in label_names))


def zero_shot_accuracy(
    model: Any, tokenizer: Any, texts: list[str], labels: list[int], task: ZeroShotTask, *, batch_size: int = 16,
) -> float:
    """Accuracy of picking, for each text, the answer with the highest log-likelihood after the prompt.

    Every answer's tokens are scored in full (sum of log-probabilities), so multi-token answers compare
    fairly; prompt and answer are tokenized apart and joined, so every variant scores the same ids.
    """
    import torch

    if len(texts) != len(labels) or not texts:
        raise ConfigError("zero-shot accuracy needs as many labels as texts, and at least one text")
    device = next(model.parameters()).device
    answers = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in task.answers]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            prompts = tokenizer([task.prompt.format(text=t) for t in chunk], add_special_tokens=False)["input_ids"]
            if all(len(a) == 1 for a in answers):  # one pass: the next-token distribution after each prompt
                scores = _next_token_log_probs(model, prompts, pad, device)[:, [a[0] for a in answers]]
            else:
                scores = torch.empty(len(chunk), len(answers))
                for j, answer in enumerate(answers):  # every answer token scored after prompt + earlier ones
                    rows = [p + answer for p in prompts]
                    logp = _log_probs(model, rows, pad, device)
                    for i, row in enumerate(rows):
                        positions = torch.arange(len(row) - len(answer) - 1, len(row) - 1, device=device)
                        scores[i, j] = logp[i, positions, torch.tensor(answer, device=device)].sum()
            correct += sum(int(p == y) for p, y in zip(scores.argmax(dim=1).tolist(), labels[start:], strict=False))
    return correct / len(texts)
