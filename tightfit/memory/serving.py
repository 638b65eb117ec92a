"""The serving memory model: how much memory one Ray Serve replica needs to serve a variant.

predicted peak = runtime overhead (Python + torch + transformers + tokenizer + the Ray replica itself)
               + resident weights (weight bytes x a measured load factor)
               + activations(batch, seq_len) (+ the KV cache for causal LMs)

The runtime overhead, the load factor and the activation scale are calibrated from real measurements
(peak RSS of a fresh replica-like process serving batches of 2-3 sizes, see ``tightfit.serving_calibrate``);
the activation and KV-cache shapes come from the model's config. Everything here is pure arithmetic.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tightfit.errors import ConfigError


@dataclass(frozen=True)
class ArchInfo:
    """The shape facts of a transformer that set its activation and KV-cache memory."""

    kind: str = "classifier"  # classifier | causal_lm
    layers: int = 6
    hidden: int = 384
    heads: int = 12
    ffn: int = 1536
    vocab: int = 30522
    kv_heads: int = 12
    head_dim: int = 32
    num_labels: int = 2

    @classmethod
    def from_config(cls, config: dict[str, Any], kind: str | None = None) -> ArchInfo:
        """Read an HF ``config.json`` dict (BERT or llama style key names)."""
        archs = " ".join(config.get("architectures") or [])
        kind = kind or ("causal_lm" if "CausalLM" in archs else "classifier")
        hidden = int(config.get("hidden_size", config.get("n_embd", 384)))
        heads = int(config.get("num_attention_heads", config.get("n_head", 12)))
        return cls(
            kind=kind,
            layers=int(config.get("num_hidden_layers", config.get("n_layer", 6))),
            hidden=hidden,
            heads=heads,
            ffn=int(config.get("intermediate_size", 4 * hidden)),
            vocab=int(config.get("vocab_size", 30522)),
            kv_heads=int(config.get("num_key_value_heads", heads)),
            head_dim=int(config.get("head_dim") or hidden // heads),
            num_labels=len(config.get("id2label") or {0: 0, 1: 1}),
        )

    @classmethod
    def from_dir(cls, path: str | Path, kind: str | None = None) -> ArchInfo:
        """Read ``config.json`` from a variant or HF model directory."""
        config_path = Path(path) / "config.json"
        if not config_path.exists():
            raise ConfigError(f"{path} has no config.json; cannot read the model's shape for the memory model")
        return cls.from_config(json.loads(config_path.read_text()), kind=kind)

    @classmethod
    def default_for(cls, kind: str) -> ArchInfo:
        """all-MiniLM-L6-v2 for classifiers, SmolLM2-135M for causal LMs (the built-in models)."""
        if kind == "causal_lm":
            return cls(kind="causal_lm", layers=30, hidden=576, heads=9, ffn=1536, vocab=49152, kv_heads=3, head_dim=64)
        return cls()


def activation_dtype_bytes(chain: str) -> int:
    """Bytes per activation element: bf16/fp16 variants compute in 2 bytes, the rest in fp32."""
    lowered = chain.lower()
    return 2 if ("bf16" in lowered or "fp16" in lowered) else 4


def activation_elements(arch: ArchInfo, batch: int, seq_len: int) -> float:
    """Elements alive at the peak of one no-grad forward pass (one layer's intermediates at a time).

    Per token: the residual stream and its copies (~4 x hidden), Q/K/V and the context (4 x hidden),
    the FFN intermediate (ffn, twice: pre- and post-activation) and the attention scores and
    probabilities (2 x heads x seq_len). Causal LMs add the last position's logits per sequence.
    """
    tokens = batch * seq_len
    per_token = 8 * arch.hidden + 2 * arch.ffn + 2 * arch.heads * seq_len
    elements = float(tokens * per_token)
    if arch.kind == "causal_lm":
        elements += 2.0 * batch * arch.vocab  # logits of the last position (and their fp32 copy)
    return elements


def kv_cache_bytes(arch: ArchInfo, sequences: int, tokens_per_sequence: int, dtype_bytes: int) -> int:
    """KV cache of a decoder LM: 2 (K and V) x layers x kv_heads x head_dim x bytes x tokens x sequences."""
    if arch.kind != "causal_lm":
        return 0
    return 2 * arch.layers * arch.kv_heads * arch.head_dim * dtype_bytes * tokens_per_sequence * sequences


@dataclass(frozen=True)
class Prediction:
    """A predicted replica peak and its parts, in bytes."""

    runtime: int
    weights: int
    activations: int
    kv_cache: int

    @property
    def total(self) -> int:
        return self.runtime + self.weights + self.activations + self.kv_cache

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


@dataclass(frozen=True)
class ServingMemoryModel:
    """Calibrated coefficients of the serving memory model (see the module docstring).

    ``runtime_bytes``: RSS of an idle replica before any weights (Ray worker + torch + transformers +
    tokenizer + first-forward allocations). ``weight_factor``: resident bytes per byte of weights
    (load copies and allocator slack). ``activation_scale``: measured peak bytes per modelled
    activation byte (allocator caches, temporaries).
    """

    runtime_bytes: int = 470 * 2**20
    weight_factor: float = 1.25
    activation_scale: float = 2.0
    source: str = "default"
    calibration_points: list[dict[str, Any]] = field(default_factory=list, compare=False)

    def predict(
        self,
        weight_bytes: int,
        arch: ArchInfo,
        *,
        batch: int,
        seq_len: int,
        dtype_bytes: int = 4,
        new_tokens: int = 0,
    ) -> Prediction:
        """Predicted peak of a replica serving ``batch`` sequences of ``seq_len`` tokens (+ ``new_tokens``)."""
        if batch < 1 or seq_len < 1:
            raise ConfigError(f"batch and seq_len must be >= 1, got batch={batch}, seq_len={seq_len}")
        total_len = seq_len + max(0, new_tokens)
        acts = self.activation_scale * activation_elements(arch, batch, total_len) * dtype_bytes
        kv = kv_cache_bytes(arch, batch, total_len, dtype_bytes)
        return Prediction(
            runtime=int(self.runtime_bytes),
            weights=int(self.weight_factor * weight_bytes),
            activations=int(acts),
            kv_cache=int(kv),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServingMemoryModel:
        known = {"runtime_bytes", "weight_factor", "activation_scale", "source", "calibration_points"}
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, path: str | Path) -> Path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.to_dict(), indent=2))
        return out

    @classmethod
    def load(cls, path: str | Path) -> ServingMemoryModel:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"calibration file {p} does not exist; create it with `tightfit serve --calibrate`")
        try:
            return cls.from_dict(json.loads(p.read_text()))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"calibration file {p} is not a serving memory model: {exc}") from None


@dataclass(frozen=True)
class CalibrationPoint:
    """One measurement: a fresh process with ``weight_bytes`` of weights served ``batch`` x ``seq_len``."""

    weight_bytes: int
    arch: ArchInfo
    dtype_bytes: int
    batch: int
    seq_len: int
    peak_rss_bytes: int
    idle_rss_bytes: int  # RSS after load + a batch-1 warm-up forward

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "arch": asdict(self.arch)}


def fit_serving_model(points: list[CalibrationPoint], *, source: str = "calibrated") -> ServingMemoryModel:
    """Fit runtime, weight factor and activation scale to measured points (least squares, clamped).

    Activation scale: slope of (peak - idle) against modelled activation bytes. Runtime and weight
    factor: a line through (weight bytes, idle RSS) over the variants; with one weight size the weight
    factor stays 1.0 and the runtime takes the rest.
    """
    if not points:
        raise ConfigError("no calibration points: measure at least one variant at two batch sizes")
    xs, ys = [], []
    for p in points:
        modelled = activation_elements(p.arch, p.batch, p.seq_len) * p.dtype_bytes
        xs.append(modelled)
        ys.append(max(0, p.peak_rss_bytes - p.idle_rss_bytes))
    denom = sum(x * x for x in xs)
    scale = sum(x * y for x, y in zip(xs, ys, strict=True)) / denom if denom else 1.0
    scale = min(max(scale, 0.5), 8.0)
    # one (weights, idle) pair per variant
    per_variant: dict[int, int] = {}
    for p in points:
        per_variant[p.weight_bytes] = min(per_variant.get(p.weight_bytes, p.idle_rss_bytes), p.idle_rss_bytes)
    ws, idles = list(per_variant), list(per_variant.values())
    if len(ws) >= 2 and max(ws) - min(ws) > 0.1 * max(ws):
        mean_w, mean_i = sum(ws) / len(ws), sum(idles) / len(idles)
        cov = sum((w - mean_w) * (i - mean_i) for w, i in zip(ws, idles, strict=True))
        var = sum((w - mean_w) ** 2 for w in ws)
        factor = min(max(cov / var, 0.8), 3.0)
    else:
        factor = 1.0
    runtime = max(int(i - factor * w) for w, i in zip(ws, idles, strict=True))
    return ServingMemoryModel(
        runtime_bytes=runtime,
        weight_factor=round(factor, 4),
        activation_scale=round(scale, 4),
        source=source,
        calibration_points=[p.to_dict() for p in points],
    )


def prediction_error(predicted: int, measured: int) -> float:
    """|measured - predicted| / measured, the figure the benchmark reports."""
    if measured <= 0:
        raise ConfigError(f"measured peak must be positive, got {measured}")
    return abs(measured - predicted) / measured
