"""The measured resource footprint of one model variant: the record every part of tightfit passes around.

Field names are the MLflow metric names (``tightfit.names`` re-exports them), so a record logged by the
profiler, read back by ``select`` or ``serve``, and charted in the MLflow UI all agree.
Every figure is measured, not estimated; a field left ``None`` was not measured (e.g. no GPU).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERVE_PROFILE_BATCH = 32
"""The batch a profile serves in its fresh memory process: ``peak_rss_serve_bytes`` is that batch's peak."""


@dataclass
class Footprint:
    """One variant's footprint and quality. ``status`` is ``ok`` or ``failed`` (then ``error`` says why)."""

    variant: str
    chain: str = "fp32"
    kind: str = "classifier"
    status: str = "ok"
    error: str | None = None
    device: str = "cpu"
    backend: str = "eager"  # eager | compile | ...
    compiled: bool = False
    runtime: str = "torch"  # what runs the variant: torch | onnxruntime (tightfit.names.RUNTIMES)
    # size
    params_total: int | None = None
    params_nonzero: int | None = None
    disk_bytes: int | None = None
    disk_bytes_compressed: int | None = None
    # memory (fresh subprocess; ru_maxrss never falls within a process)
    peak_rss_load_bytes: int | None = None
    peak_rss_serve_bytes: int | None = None
    gpu_peak_bytes: int | None = None
    cold_start_s: float | None = None  # fresh process start -> first answer (the runtime's imports, load, a batch)
    # compute
    seq_len: int | None = None
    latency_ms_b1_p50: float | None = None
    latency_ms_b1_p95: float | None = None
    latency_ms_b1_p99: float | None = None
    latency_ms_b32_p50: float | None = None
    latency_ms_b32_p95: float | None = None
    latency_ms_b32_p99: float | None = None
    throughput_sps: float | None = None
    # bandwidth: bytes of weights read per forward pass (per generated token for LMs)
    weight_bytes_per_forward: int | None = None
    # quality
    accuracy: float | None = None
    f1_macro: float | None = None
    perplexity: float | None = None
    # against the baseline variant
    compression_ratio: float | None = None
    speedup_b32: float | None = None
    accuracy_drop: float | None = None
    # --- measurement spread and noise (tightfit.measure.timing): interleaved rounds on pinned threads ---
    latency_ms_b1_cv: float | None = None  # coefficient of variation of the per-round p50s
    latency_ms_b32_cv: float | None = None
    measure_rounds: int | None = None
    measure_threads: int | None = None
    load_avg_1m: float | None = None  # the 1-minute load average while timing (other work on the cores)
    measure_cpu_share: float | None = None  # CPU time / wall time of the timing thread (< 1: it waited for a core)
    noise: str | None = None  # the noisy latency figures, comma-joined (latency_ms_b1,...); "" = none; None = not timed
    # --- end of the measurement spread block ---
    # --- decoder LMs (issue 13): generation speed and memory, task quality, low-bit share -------------
    weight_bytes: int | None = None  # every weight and buffer, packed bytes + scales, shared storage once
    task_accuracy: float | None = None  # zero-shot accuracy on the split's labels (answer log-likelihood)
    ttft_ms: float | None = None  # time to first token: prefill of a 64-token prompt + one token, batch 1
    decode_tok_s_b1: float | None = None  # new tokens/s after the first, batch 1
    decode_tok_s_b8: float | None = None  # new tokens/s after the first, over a batch of 8
    kv_cache_bytes_per_token: int | None = None  # KV cache growth per token of one sequence (measured)
    int4_weight_fraction: float | None = None  # share of Linear + embedding weight elements stored as int4
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def noisy_figures(self) -> list[str]:
        """The latency figures whose spread stayed above the noise threshold (``latency_ms_b1``, ...)."""
        return [n for n in (self.noise or "").split(",") if n]

    def is_noisy(self, metric: str) -> bool:
        """True when ``metric`` (e.g. ``latency_ms_b1_p95``) belongs to a figure flagged noisy."""
        return any(metric == n or metric.startswith(n + "_") for n in self.noisy_figures)

    def metrics(self) -> dict[str, float]:
        """The numeric fields that are set, as MLflow metrics."""
        out: dict[str, float] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in NON_METRIC_FIELDS or value is None or isinstance(value, dict | str):
                continue
            out[f.name] = float(value)
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Footprint:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_baseline(self, baseline: Footprint) -> Footprint:
        """Fill the ratios against ``baseline`` (size, speed, accuracy in points)."""
        if baseline.disk_bytes and self.disk_bytes:
            self.compression_ratio = baseline.disk_bytes / self.disk_bytes
        if baseline.latency_ms_b32_p50 and self.latency_ms_b32_p50:
            self.speedup_b32 = baseline.latency_ms_b32_p50 / self.latency_ms_b32_p50
        if baseline.accuracy is not None and self.accuracy is not None:
            self.accuracy_drop = 100.0 * (baseline.accuracy - self.accuracy)
        return self


NON_METRIC_FIELDS = frozenset({
    "variant", "chain", "kind", "status", "error", "device", "backend", "runtime", "extra", "noise",
})
METRIC_FIELDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(Footprint) if f.name not in NON_METRIC_FIELDS
)


def save_footprints(path: Path, records: list[Footprint]) -> None:
    """Write records as a JSON list (the local footprint file serving can read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([r.to_dict() for r in records], indent=2))


def load_footprints(path: Path) -> list[Footprint]:
    return [Footprint.from_dict(d) for d in json.loads(Path(path).read_text())]
