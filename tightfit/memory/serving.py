"""The serving memory model: how much memory one Ray Serve replica needs to serve a variant.

A replica's peak is the larger of two moments:

serving: replica overhead (the Ray worker, Serve, FastAPI)
         + the variant's settled RSS (runtime: Python + its runtime's libraries, torch + transformers or
           ONNX Runtime + tokenizers, and the resident weights, once loading is over; the replica loader
           measures it in a fresh process, ``extra.serving_settled_rss_bytes``)
         + first-forward bytes (what a batch adds over a warmed-up idle replica whatever its size)
         + activations(batch, seq_len) (+ the KV cache for causal LMs)
loading: load overhead (what the replica holds beside the variant while it loads)
         + the variant's load peak (``Footprint.peak_rss_load_bytes`` or the replica loader's
           ``extra.serving_load_rss_bytes``): a variant rebuilt from a float skeleton peaks while loading
           (fp32 MiniLM: load peak 500 MiB, settled 433 MiB; torchao int8-dynamic: 605 and 458 MiB, 2026-11-28).

Adding the load peak to the activations booked that transient twice: what loading frees is what the
activations reuse (int8-dynamic at batch 24 was booked 720 MiB against replica peaks of 646-711 MiB in four
runs, 2026-11-28). Where no settled RSS was measured the load peak stands in for it (the sum, as before).

Where the profiler measured a variant serving a batch in that fresh process (``MeasuredForward``) and its
forward cost more than the calibrated terms book, the activations follow that measurement instead, scaled
with the modelled activations: torchao's dynamic int8 quantizes every activation into extra buffers, so its
forward at batch 32 adds 134 MiB where fp32's calibrated terms book 45 MiB.

The replica overhead, the first-forward bytes, the activation scale and a fallback for unmeasured load
RSS are calibrated from real measurements (fresh replicas serving batches of 2-3 sizes, see
``tightfit.serve.calibrate``), per runtime: a torch replica and an ONNX Runtime replica differ in libraries
and in allocator behaviour. The activation and KV-cache shapes come from the model's config, with a pruned
variant's widths from its manifest. Everything here is pure arithmetic.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from tightfit.errors import ConfigError, VariantError
from tightfit.names import RUNTIME_ONNXRUNTIME, RUNTIME_TORCH


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
    max_positions: int | None = None  # the longest sequence the model reads (position embeddings)

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
            max_positions=config.get("max_position_embeddings", config.get("n_positions")),
        )

    @classmethod
    def from_dir(cls, path: str | Path, kind: str | None = None) -> ArchInfo:
        """Read ``config.json`` from a variant or HF model directory, with a variant manifest's pruned shape
        over it: structured pruning keeps the base's config and records the per-layer heads and FFN widths
        and the kept vocabulary rows in ``manifest.json`` (the activations follow the pruned widths)."""
        config_path = Path(path) / "config.json"
        if not config_path.exists():
            raise ConfigError(f"{path} has no config.json; cannot read the model's shape for the memory model")
        arch = cls.from_config(json.loads(config_path.read_text()), kind=kind)
        from tightfit.runtime.manifest import read_manifest  # torch-free, read on demand

        try:
            manifest = read_manifest(path)
        except VariantError:
            return arch  # no variant manifest (an HF model directory): the config alone describes the model
        shapes = manifest.get("layer_shapes") or []
        changes: dict[str, Any] = {}
        if shapes:  # the peak is one layer's intermediates at a time: the widest layer sets it
            changes.update(layers=len(shapes), heads=max(int(s["heads"]) for s in shapes),
                           ffn=max(int(s["ffn"]) for s in shapes))
        elif manifest.get("num_layers"):
            changes["layers"] = int(manifest["num_layers"])
        if manifest.get("vocab_rows"):
            changes["vocab"] = int(manifest["vocab_rows"])
        return replace(arch, **changes)

    @classmethod
    def default_for(cls, kind: str) -> ArchInfo:
        """all-MiniLM-L6-v2 for classifiers, SmolLM2-135M for causal LMs (the built-in models)."""
        if kind == "causal_lm":
            return cls(kind="causal_lm", layers=30, hidden=576, heads=9, ffn=1536, vocab=49152, kv_heads=3, head_dim=64)
        return cls()


def activation_dtype_bytes(chain: str) -> int:
    """Bytes per activation element (and KV-cache entry): bf16/fp16 and torch's 4-bit variants (which compute
    in bf16) use 2 bytes, the rest fp32. ONNX Runtime graphs compute in fp32 whatever their weights (``onnx_int4``'s
    MatMulNBits dequantizes into fp32 and its KV cache is fp32)."""
    lowered = chain.lower()
    if "onnx" in lowered:
        return 4
    return 2 if ("bf16" in lowered or "fp16" in lowered or "int4" in lowered) else 4


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
class MeasuredForward:
    """One fresh plain process's figures for a variant (the profiler's): the peak RSS after loading, the peak
    after serving ``batch`` sequences of ``seq_len`` tokens, and where recorded the RSS once loading was over,
    trimmed and warmed up by one answer (``settled_rss_bytes``) and the batch's own peak
    (``forward_peak_bytes``, read after resetting the peak). The batch's peak over the settled RSS is the
    variant's own forward; without them, the serve peak over the load peak (a load transient then hides part
    of it)."""

    load_rss_bytes: int
    serve_rss_bytes: int
    batch: int
    seq_len: int
    settled_rss_bytes: int | None = None
    forward_peak_bytes: int | None = None

    @property
    def growth_bytes(self) -> int:
        if self.settled_rss_bytes and self.forward_peak_bytes:
            return self.forward_peak_bytes - self.settled_rss_bytes
        return self.serve_rss_bytes - self.load_rss_bytes


@dataclass(frozen=True)
class Prediction:
    """A predicted replica peak and its parts, in bytes. Where loading peaks above serving (a load transient),
    ``runtime`` carries the difference, so the parts still sum to the peak."""

    runtime: int
    weights: int
    activations: int
    kv_cache: int

    @property
    def total(self) -> int:
        return self.runtime + self.weights + self.activations + self.kv_cache

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


COEFFICIENTS = ("runtime_bytes", "replica_overhead_bytes", "weight_factor", "activation_scale", "first_forward_bytes",
                "load_overhead_bytes")
# ONNX Runtime defaults, measured 2026-11-26 on the 2-core reference CPU (fresh processes, int8 MiniLM and
# its structured student): load RSS - weight bytes 92-96 MiB (Python, onnxruntime, tokenizers), batch 32 x 64
# activations about 0.9x the modelled bytes (ORT's arena). The replica overhead is larger than torch's: a
# plain ONNX process imports none of what Ray's worker and Serve bring. With pandas and pyarrow kept out of
# the replica (tightfit.serve.process), over the settled RSS: an idle ONNX student replica 207 MiB against
# 101 MiB settled in a plain process, 106 MiB; its peak while loading 204-207 MiB against a plain load peak of
# 110 MiB, 97 MiB (2026-11-28, AMD EPYC); each booked with a 6 MiB margin. Recalibrate with
# `tightfit serve --calibrate`.
# The first forward of an ORT replica adds about 1 MiB over its idle RSS whatever its batch (its arena grows
# with the batch, covered by the activation scale).
ORT_DEFAULTS: dict[str, float] = {"runtime_bytes": 100 * 2**20, "activation_scale": 0.95,
                                  "replica_overhead_bytes": 112 * 2**20, "first_forward_bytes": 0,
                                  "load_overhead_bytes": 104 * 2**20}


@dataclass(frozen=True)
class ServingMemoryModel:
    """Calibrated coefficients of the serving memory model (see the module docstring).

    A replica's idle memory is the variant's settled RSS (measured in a fresh process once loading is over;
    the load peak where only that was measured) plus ``replica_overhead_bytes`` (the Ray worker, Serve and
    FastAPI on top of a plain process); serving adds ``first_forward_bytes`` (a constant, whatever the batch)
    and the activations; loading peaks at the load RSS plus ``load_overhead_bytes``. Where no load RSS was
    measured, ``runtime_bytes + weight_factor x weights`` stands in for both. ``activation_scale``: measured
    peak bytes per modelled activation byte.
    The top-level coefficients are torch's; ``runtimes`` overrides any of them per runtime name
    (``{"onnxruntime": {"runtime_bytes": ..., "activation_scale": ...}}``), so ONNX and torch variants are
    planned by the same model, each with its own runtime term.
    """

    # Defaults: calibrated 2026-11-28 on the 2-core AMD EPYC (fp32, bf16 and the torchao int8 student MiniLM,
    # fresh replicas with their peak reset before each batch; Ray 2.60, torch 2.13, replicas without pandas
    # and pyarrow: tightfit.serve.process): an idle replica holds 107-136 MiB over the plain process's settled
    # RSS (115 on the mean), a batch adds 3 MiB over the warmed-up idle RSS beside 1.23x the modelled
    # activations, and the replica's peak while loading holds 81 MiB over the plain load peak. Booked with
    # an 8 MiB margin on each byte term. (The defaults before 2026-11-28, 76 MiB of overhead and 30 MiB of
    # first forward, were fitted over the load *peak* and carried loading's transient in them.) The full
    # serving benchmark's own calibration at 18:23 read 123 MiB, 3 MiB, 1.31 and 84 MiB.
    # Recalibrate with `tightfit serve --calibrate FILE` (or `calibrate_serving_memory`) on other machines.
    runtime_bytes: int = 400 * 2**20
    replica_overhead_bytes: int = 123 * 2**20
    weight_factor: float = 1.0
    activation_scale: float = 1.25
    first_forward_bytes: int = 11 * 2**20
    """What a batch adds over a warmed-up idle torch replica whatever its size (oneDNN's scratch, the
    allocator's arenas): 3 MiB on the mean for fp32, bf16 and the int8 student MiniLM, 2026-11-28."""
    load_overhead_bytes: int = 89 * 2**20
    """What a replica's peak while loading holds over the plain process's load peak (Ray's worker and
    Serve, less than when idle: Serve's router and metrics come later): 81 MiB calibrated on fp32, bf16 and
    the int8 student (82-85 MiB each in a probe), 7 MiB for int8-dynamic (2026-11-28, AMD EPYC)."""
    source: str = "default"
    calibration_points: list[dict[str, Any]] = field(default_factory=list, compare=False)
    runtimes: dict[str, dict[str, float]] = field(default_factory=lambda: {RUNTIME_ONNXRUNTIME: dict(ORT_DEFAULTS)})

    def coefficients(self, runtime: str = RUNTIME_TORCH) -> dict[str, float]:
        """The coefficients for ``runtime``: its overrides over the top-level (torch) ones."""
        base = {k: float(getattr(self, k)) for k in COEFFICIENTS}
        if runtime == RUNTIME_ONNXRUNTIME:  # a file saved before a coefficient existed keeps ORT's default
            base.update(ORT_DEFAULTS)
        base.update({k: float(v) for k, v in (self.runtimes.get(runtime) or {}).items() if k in COEFFICIENTS})
        return base

    def predict(
        self,
        weight_bytes: int,
        arch: ArchInfo,
        *,
        batch: int,
        seq_len: int,
        dtype_bytes: int = 4,
        new_tokens: int = 0,
        load_rss_bytes: int | None = None,
        runtime: str = RUNTIME_TORCH,
        measured: MeasuredForward | None = None,
        settled_rss_bytes: int | None = None,
    ) -> Prediction:
        """Predicted peak of a replica serving ``batch`` sequences of ``seq_len`` tokens (+ ``new_tokens``)
        on ``runtime`` (its coefficients, see ``coefficients``): the larger of serving (on the settled RSS)
        and loading (the load peak), see the module docstring. ``measured``: the variant's own forward from
        its profile; where it cost more than the calibrated terms book, the activations scale it."""
        if batch < 1 or seq_len < 1:
            raise ConfigError(f"batch and seq_len must be >= 1, got batch={batch}, seq_len={seq_len}")
        c = self.coefficients(runtime)
        total_len = seq_len + max(0, new_tokens)
        modelled = activation_elements(arch, batch, total_len) * dtype_bytes
        acts = c["activation_scale"] * modelled
        if measured is not None:
            at = activation_elements(arch, measured.batch, measured.seq_len) * dtype_bytes
            booked = c["first_forward_bytes"] + c["activation_scale"] * at
            if at > 0 and measured.growth_bytes > booked:  # the variant's kernels hold more than the model's
                # the excess is per token (torchao's int8 copies of each linear layer's input), so it scales
                # with tokens; the modelled part keeps its own shape (attention grows with seq_len squared)
                tokens = batch * total_len / (measured.batch * measured.seq_len)
                acts = max(acts, acts + (measured.growth_bytes - booked) * tokens)
        kv = kv_cache_bytes(arch, batch, total_len, dtype_bytes)
        peak = load_rss_bytes if load_rss_bytes else int(c["runtime_bytes"] + c["weight_factor"] * weight_bytes)
        settled = min(settled_rss_bytes, peak) if settled_rss_bytes else peak
        weights = min(int(weight_bytes), settled)
        serving = c["replica_overhead_bytes"] + c["first_forward_bytes"] + settled + int(acts) + kv
        loading = c["load_overhead_bytes"] + peak if settled < peak else 0.0
        transient = max(0.0, loading - serving)  # loading peaks above serving
        return Prediction(
            runtime=int(c["replica_overhead_bytes"] + c["first_forward_bytes"] + settled - weights + transient),
            weights=weights,
            activations=int(acts),
            kv_cache=int(kv),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServingMemoryModel:
        known = {f.name for f in fields(cls)}
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
    """One measurement of a variant: a fresh replica served ``batch`` x ``seq_len`` tokens.

    ``load_rss_bytes``, ``settled_rss_bytes`` and ``process_base_bytes`` come from a fresh plain process
    (load + warm-up peak, RSS once that is over, and RSS after importing torch/transformers);
    ``idle_rss_bytes``, ``replica_load_peak_bytes`` (its peak before any batch: loading's) and
    ``peak_rss_bytes`` from the replica. ``peak_rss_bytes`` is serving's alone where the replica's peak was
    reset before the batch (``tightfit.serve.calibrate`` does); otherwise a load transient may hide it.
    """

    weight_bytes: int
    arch: ArchInfo
    dtype_bytes: int
    batch: int
    seq_len: int
    peak_rss_bytes: int
    idle_rss_bytes: int
    load_rss_bytes: int
    process_base_bytes: int
    new_tokens: int = 0  # generated tokens per sequence (causal LMs)
    runtime: str = RUNTIME_TORCH
    settled_rss_bytes: int | None = None
    replica_load_peak_bytes: int | None = None

    @property
    def base_rss_bytes(self) -> int:
        """The plain process's RSS a replica's idle RSS sits on: settled where measured, else the load peak."""
        return min(self.settled_rss_bytes or self.load_rss_bytes, self.load_rss_bytes)

    @property
    def replica_peak_bytes(self) -> int:
        """The replica's peak over its life up to this batch: serving's, or loading's where that was higher."""
        return max(self.peak_rss_bytes, self.replica_load_peak_bytes or 0)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "arch": asdict(self.arch)}

    @property
    def activation_bytes(self) -> float:
        """Modelled activation bytes of this point (before the fitted scale)."""
        return activation_elements(self.arch, self.batch, self.seq_len + self.new_tokens) * self.dtype_bytes

    @property
    def kv_bytes(self) -> int:
        return kv_cache_bytes(self.arch, self.batch, self.seq_len + self.new_tokens, self.dtype_bytes)


def _fit_coefficients(points: list[CalibrationPoint]) -> dict[str, float]:
    """Activation scale, replica overhead and fallback runtime of one runtime's points."""
    by_variant: dict[int, list[CalibrationPoint]] = {}
    for p in points:
        by_variant.setdefault(p.weight_bytes, []).append(p)
    xs, ys = [], []
    for group in by_variant.values():
        first = min(group, key=lambda q: q.batch)
        for p in group:
            if p is first:
                continue
            # the KV cache is counted exactly (decoder LMs); the activation scale explains the rest
            xs.append(p.activation_bytes - first.activation_bytes)
            ys.append(max(0, p.peak_rss_bytes - first.peak_rss_bytes - (p.kv_bytes - first.kv_bytes)))
    denom = sum(x * x for x in xs)
    scale = round(min(max(sum(x * y for x, y in zip(xs, ys, strict=True)) / denom if denom else 1.0, 0.25), 8.0), 4)
    firsts = [min(g, key=lambda q: q.batch) for g in by_variant.values()]
    # the intercept: what each variant's smallest batch peaked at over its idle RSS that its activations and
    # KV cache do not explain (a fit through the origin alone left it out and under-booked every batch)
    first_forward = [p.peak_rss_bytes - p.idle_rss_bytes - scale * p.activation_bytes - p.kv_bytes for p in firsts]
    idles = [g[0] for g in by_variant.values()]  # one per variant: the replica's idle over the plain process
    loads = [p.replica_load_peak_bytes - p.load_rss_bytes for p in idles if p.replica_load_peak_bytes]
    return {
        "runtime_bytes": float(max(p.load_rss_bytes - p.weight_bytes for p in idles)),
        "replica_overhead_bytes": float(max(0, int(sum(p.idle_rss_bytes - p.base_rss_bytes for p in idles) / len(idles)))),
        "weight_factor": 1.0,
        "activation_scale": scale,
        "first_forward_bytes": float(max(0, int(sum(first_forward) / len(first_forward)))),
        **({"load_overhead_bytes": float(max(0, int(sum(loads) / len(loads))))} if loads else {}),
    }


def fit_serving_model(points: list[CalibrationPoint], *, source: str = "calibrated") -> ServingMemoryModel:
    """Fit the coefficients to measured points, per runtime.

    Activation scale: least squares of the peak growth over each variant's smallest batch (less the KV
    cache growth, for decoder LMs) against the modelled activation growth. First-forward bytes: the mean
    of what the smallest batch's peak holds over the idle RSS beyond its scaled activations and KV cache.
    Replica overhead: mean of (replica idle RSS - plain-process settled RSS, the load peak where no settled
    RSS was measured). The peaks are serving's alone where the calibration reset the replica's peak before
    each batch; a load transient above them is the model's loading term, not the forward's. Load overhead:
    mean of (the replica's peak before any batch - the plain process's load peak), where recorded.
    Fallback for records without a load RSS: runtime = the largest (load RSS - weight bytes) seen
    (libraries and allocator share, conservative) and weight factor 1. The top-level coefficients come
    from the torch points; every other runtime gets its own entry; a runtime with no points keeps its
    defaults.
    """
    if not points:
        raise ConfigError("no calibration points: measure at least one variant at two batch sizes")
    by_runtime: dict[str, list[CalibrationPoint]] = {}
    for p in points:
        by_runtime.setdefault(p.runtime, []).append(p)
    fitted = {runtime: _fit_coefficients(group) for runtime, group in by_runtime.items()}
    default = ServingMemoryModel()
    top = fitted.get(RUNTIME_TORCH) or {k: float(getattr(default, k)) for k in COEFFICIENTS}
    runtimes = {RUNTIME_ONNXRUNTIME: dict(ORT_DEFAULTS)}
    runtimes.update({r: c for r, c in fitted.items() if r != RUNTIME_TORCH})
    return ServingMemoryModel(
        runtime_bytes=int(top["runtime_bytes"]),
        replica_overhead_bytes=int(top["replica_overhead_bytes"]),
        weight_factor=1.0,
        activation_scale=top["activation_scale"],
        first_forward_bytes=int(top["first_forward_bytes"]),
        load_overhead_bytes=int(top.get("load_overhead_bytes", default.load_overhead_bytes)),
        source=source,
        calibration_points=[p.to_dict() for p in points],
        runtimes=runtimes,
    )


def prediction_error(predicted: int, measured: int) -> float:
    """|measured - predicted| / measured, the figure the benchmark reports."""
    if measured <= 0:
        raise ConfigError(f"measured peak must be positive, got {measured}")
    return abs(measured - predicted) / measured
