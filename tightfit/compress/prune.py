"""Pruning: unstructured magnitude sparsity, structured head/FFN removal, and layer dropping.

Unstructured sparsity zeroes weights; the variant stores such tensors sparse (values + a bit mask), so the
bytes on disk really drop. Structured pruning physically removes attention heads and FFN neurons
(``transformers.pytorch_utils.prune_linear_layer``), so parameters, memory and latency drop; the pruned
shapes differ per layer and are recorded in the manifest (``tightfit.compress.structure``). Vocabulary
pruning keeps the word-embedding rows of the tokens the training split uses (``tightfit.compress.vocab``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tightfit.compress.registry import STAGE_STRUCTURE, ApplyContext, register_method
from tightfit.compress.structure import encoder_layers, head_size, set_attention_heads
from tightfit.compress.training import batches, tokenize_batch
from tightfit.errors import ConfigError, UnsupportedError

SKIP_HEADS = ("classifier", "lm_head", "score")


@dataclass(frozen=True)
class UnstructuredConfig:
    """``sparsity``: fraction of each Linear weight set to zero, by smallest magnitude, in (0, 1)."""

    sparsity: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < float(self.sparsity) < 1.0:
            raise ConfigError(f"sparsity must be in (0, 1), got {self.sparsity}")


@dataclass(frozen=True)
class StructuredConfig:
    """Fractions of attention heads and FFN neurons to remove; importance from calibration batches."""

    heads: float = 0.5
    ffn: float = 0.5
    calib_batches: int = 4
    batch_size: int = 16
    scope: str = "layer"  # "layer": the same fraction in every layer; "global": ranked across layers

    def __post_init__(self) -> None:
        for key in ("heads", "ffn"):
            value = float(getattr(self, key))
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{key} is the fraction to remove and must be in [0, 1), got {value}")
        if float(self.heads) == 0.0 and float(self.ffn) == 0.0:
            raise ConfigError("heads and ffn are both 0: nothing to prune")
        if self.calib_batches < 1 or self.batch_size < 1:
            raise ConfigError("calib_batches and batch_size must be >= 1")
        if self.scope not in ("layer", "global"):
            raise ConfigError(f"scope must be 'layer' or 'global', got {self.scope!r}")


@dataclass(frozen=True)
class DropLayersConfig:
    """``keep_every``: keep every k-th encoder layer (k >= 2; 6 layers with k=2 keep 3). ``keep``: keep this
    many layers, spread evenly and ending with the last (6 layers with keep=4 keep layers 1, 2, 4, 5; keep=3
    is keep_every=2); 0 leaves the choice to ``keep_every``."""

    keep_every: int = 2
    keep: int = 0

    def __post_init__(self) -> None:
        if int(self.keep_every) < 2:
            raise ConfigError(f"keep_every must be >= 2 (1 keeps every layer), got {self.keep_every}")
        if int(self.keep) < 0:
            raise ConfigError(f"keep must be >= 1 layer (0: use keep_every), got {self.keep}")
        if int(self.keep) and int(self.keep_every) != 2:
            raise ConfigError("drop_layers takes keep_every or keep, not both; e.g. drop_layers:keep=4")


def kept_layer_indices(layers: int, config: DropLayersConfig) -> list[int]:
    """The encoder layers ``drop_layers`` keeps, in order."""
    if int(config.keep):
        n = int(config.keep)
        if n >= layers:
            raise ConfigError(f"keep={n} would keep all {layers} layers; use fewer than {layers}")
        return [int((i + 1) * layers / n + 0.5) - 1 for i in range(n)]
    k = int(config.keep_every)
    if k > layers:
        raise ConfigError(f"keep_every={k} would drop all {layers} layers; use at most {layers}")
    return list(range(k - 1, layers, k))


@dataclass(frozen=True)
class VocabConfig:
    """Keep word embeddings of tokens seen >= ``min_count`` times in the train split (and the special
    tokens); ``max_size`` > 0 caps the kept rows at the most frequent tokens."""

    min_count: int = 1
    max_size: int = 0

    def __post_init__(self) -> None:
        if int(self.min_count) < 1:
            raise ConfigError(f"min_count must be >= 1, got {self.min_count}")
        if int(self.max_size) < 0 or 0 < int(self.max_size) < 16:
            raise ConfigError(f"max_size is 0 (no cap) or at least 16 tokens, got {self.max_size}")


def _prunable_linears(model: Any) -> list[tuple[str, Any]]:
    import torch

    return [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear) and name.split(".")[-1] not in SKIP_HEADS
    ]


@register_method(
    "prune_unstructured",
    family="prune",
    config=UnstructuredConfig,
    stage=STAGE_STRUCTURE,
    description="zero the smallest-magnitude weights of every Linear; stored sparse so disk bytes drop",
)
def prune_unstructured(model: Any, config: UnstructuredConfig, ctx: ApplyContext) -> Any:
    import torch

    with torch.no_grad():
        for _name, linear in _prunable_linears(model):
            weight = linear.weight
            k = int(weight.numel() * float(config.sparsity))
            if k == 0:
                continue
            threshold = weight.abs().flatten().kthvalue(k).values
            weight.mul_((weight.abs() > threshold).to(weight.dtype))
    return model


def _require_encoder(model: Any, method: str) -> Any:
    layers = encoder_layers(model)
    if layers is None:
        raise UnsupportedError(f"{method} supports BERT-style encoders (model.base_model.encoder.layer)")
    return layers


def _importance(model: Any, config: StructuredConfig, ctx: ApplyContext) -> tuple[list[Any], list[Any], str]:
    """Per-layer head and FFN-neuron scores: first-order Taylor |sum(w * dL/dw)| on calibration batches.

    Without calibration data it falls back to the L2 norm of each group's weights.
    """
    import torch
    import torch.nn.functional as F

    layers = encoder_layers(model)
    assert layers is not None
    method = "magnitude"
    if ctx.data is not None and ctx.tokenizer is not None:
        method = "taylor"
        model.zero_grad(set_to_none=True)
        model.eval()
        for batch in batches(ctx.data.train, config.batch_size, config.calib_batches, ctx.seed):
            inputs = tokenize_batch(ctx.tokenizer, batch["text"].tolist())
            labels = torch.tensor(batch["label"].to_numpy(), dtype=torch.long)
            F.cross_entropy(model(**inputs).logits.float(), labels).backward()

    def score(rows: list[Any], cols: list[Any], biases: list[Any], groups: int) -> Any:
        total = torch.zeros(groups)
        for transpose, tensors in ((False, rows + biases), (True, cols)):
            for t in tensors:
                w = t.detach().float()
                contrib = w * t.grad.float() if method == "taylor" and t.grad is not None else w * w
                if transpose:
                    contrib = contrib.t()
                total += contrib.reshape(groups, -1).sum(dim=1)
        return total.abs()

    head_scores, ffn_scores = [], []
    for layer in layers:
        attn = layer.attention.self
        heads = attn.query.out_features // head_size(layer)
        head_scores.append(score(
            [attn.query.weight, attn.key.weight, attn.value.weight],
            [layer.attention.output.dense.weight],
            [attn.query.bias, attn.key.bias, attn.value.bias],
            heads,
        ))
        ffn_scores.append(score(
            [layer.intermediate.dense.weight], [layer.output.dense.weight], [layer.intermediate.dense.bias],
            layer.intermediate.dense.out_features,
        ))
    model.zero_grad(set_to_none=True)
    return head_scores, ffn_scores, method


def _keep(scores: list[Any], fraction: float, scope: str) -> list[Any]:
    """Indices to keep per layer (at least one per layer), sorted."""
    import torch

    if fraction == 0.0:
        return [torch.arange(len(s)) for s in scores]
    if scope == "global":
        normed = [s / (s.sum() + 1e-12) for s in scores]
        flat = torch.cat(normed)
        n_keep = max(len(scores), round(len(flat) * (1.0 - fraction)))
        cutoff = flat.topk(n_keep).values.min()
        keeps = [torch.nonzero(s >= cutoff).flatten() for s in normed]
        return [k if len(k) else s.argmax().reshape(1) for k, s in zip(keeps, normed, strict=True)]
    return [
        s.topk(max(1, round(len(s) * (1.0 - fraction)))).indices.sort().values for s in scores
    ]


@register_method(
    "prune_structured",
    family="prune",
    config=StructuredConfig,
    stage=STAGE_STRUCTURE,
    kinds=("classifier",),
    description="remove attention heads and FFN neurons by Taylor importance on calibration batches",
)
def prune_structured(model: Any, config: StructuredConfig, ctx: ApplyContext) -> Any:
    import torch
    from transformers.pytorch_utils import prune_linear_layer

    layers = _require_encoder(model, "prune_structured")
    head_scores, ffn_scores, method = _importance(model, config, ctx)
    keep_heads = _keep(head_scores, float(config.heads), config.scope)
    keep_ffn = _keep(ffn_scores, float(config.ffn), config.scope)
    for layer, heads, neurons in zip(layers, keep_heads, keep_ffn, strict=True):
        attn = layer.attention.self
        size = head_size(layer)
        rows = (heads.reshape(-1, 1) * size + torch.arange(size)).flatten()
        attn.query = prune_linear_layer(attn.query, rows, dim=0)
        attn.key = prune_linear_layer(attn.key, rows, dim=0)
        attn.value = prune_linear_layer(attn.value, rows, dim=0)
        layer.attention.output.dense = prune_linear_layer(layer.attention.output.dense, rows, dim=1)
        set_attention_heads(layer, len(heads))
        layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, neurons, dim=0)
        layer.output.dense = prune_linear_layer(layer.output.dense, neurons, dim=1)
    ctx.extra["importance"] = method
    return model


@register_method(
    "drop_layers",
    family="prune",
    config=DropLayersConfig,
    stage=STAGE_STRUCTURE,
    kinds=("classifier",),
    description="keep every k-th encoder layer, or keep=n evenly spread (a shallower student; follow with distill)",
)
def drop_layers(model: Any, config: DropLayersConfig, ctx: ApplyContext) -> Any:
    import torch

    layers = _require_encoder(model, "drop_layers")
    kept = [layers[i] for i in kept_layer_indices(len(layers), config)]
    for new_index, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    model.base_model.encoder.layer = torch.nn.ModuleList(kept)
    model.config.num_hidden_layers = len(kept)
    return model


@register_method(
    "prune_vocab",
    family="prune",
    config=VocabConfig,
    stage=STAGE_STRUCTURE,
    kinds=("classifier",),
    description="keep only the word embeddings of tokens the train split uses (unseen tokens read [UNK])",
)
def prune_vocab(model: Any, config: VocabConfig, ctx: ApplyContext) -> Any:
    from collections import Counter

    import torch

    from tightfit.compress.vocab import remap_vocabulary, word_embeddings_owner

    owner = word_embeddings_owner(model)
    if owner is None:
        raise UnsupportedError("prune_vocab supports BERT-style encoders (model.base_model.embeddings)")
    if ctx.data is None or ctx.tokenizer is None:
        raise ConfigError(
            "prune_vocab keeps the tokens the training data uses: pass data= to build_variant, or --dataset on "
            "the CLI"
        )
    tokenizer = ctx.tokenizer
    if tokenizer.unk_token_id is None:
        raise UnsupportedError("prune_vocab needs a tokenizer with an [UNK] token to stand for pruned tokens")
    counts = Counter(i for ids in tokenizer(ctx.data.train["text"].tolist())["input_ids"] for i in ids)
    kept = sorted((i for i, n in counts.items() if n >= int(config.min_count)), key=lambda i: -counts[i])
    if int(config.max_size) > 0:
        kept = kept[: int(config.max_size)]
    keep = torch.tensor(sorted(set(kept) | set(tokenizer.all_special_ids)), dtype=torch.long)
    before = int(owner.word_embeddings.weight.shape[0])
    rows = remap_vocabulary(model, keep, int(tokenizer.unk_token_id), tokenizer.pad_token_id)
    ctx.extra["vocab_rows"] = {"before": before, "after": rows}
    return model
