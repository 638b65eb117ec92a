"""Footprint records -> serving candidates: where each variant's files are, its shape and its weight bytes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tightfit.assets import BUILTIN_MODELS, resolve_model_path
from tightfit.errors import ConfigError
from tightfit.footprint import SERVE_PROFILE_BATCH, Footprint
from tightfit.memory.serving import ArchInfo, MeasuredForward, ServingMemoryModel, activation_dtype_bytes
from tightfit.names import RUNTIME_TORCH

DEFAULT_HEADROOM = 0.08  # of a replica's budget kept free (allocator slack, sampling gaps)
DEFAULT_MAX_TOKENS = {"classifier": 64, "causal_lm": 128}  # per-request token cap when none is given
DEFAULT_MAX_NEW_TOKENS = 32
BATCHES_PER_REQUEST = 2  # a served request may wait for the batch in flight, then run in its own


@dataclass
class Candidate:
    """A footprint record resolved to what the planner needs."""

    record: Footprint
    source: str
    arch: ArchInfo
    weight_bytes: int
    load_rss_bytes: int | None = None
    measured: MeasuredForward | None = None
    settled_rss_bytes: int | None = None


def load_rss_of(record: Footprint) -> int | None:
    """The variant's load RSS measured in a fresh process (profiler's figure, else serving's own)."""
    extra = record.extra or {}
    value = extra.get("serving_load_rss_bytes") or record.peak_rss_load_bytes
    return int(value) if value else None


def settled_rss_of(record: Footprint) -> int | None:
    """The RSS once loading was over, from the same fresh process as ``load_rss_of``'s peak (the replica
    loader's, after its warm-up forward; else the profiler's, trimmed, after its first answer); None where
    that process did not record it (the model then books the load peak for both, see ``ServingMemoryModel``)."""
    extra = record.extra or {}
    if extra.get("serving_load_rss_bytes"):
        value = extra.get("serving_settled_rss_bytes")
    else:  # the profiler's: after its warm-up answer where recorded (a replica's idle is warmed up)
        value = extra.get("rss_now_warm_bytes") or extra.get("rss_now_load_bytes")
    return int(value) if value else None


def measured_forward_of(record: Footprint) -> MeasuredForward | None:
    """A classifier's forward as its profile measured it (load and serve peaks of one fresh process at
    batch 32 x ``seq_len``); None where either figure is missing. An LM's serve peak is a generation with
    its KV cache, which the model counts on its own."""
    if record.kind != "classifier" or not (record.peak_rss_load_bytes and record.peak_rss_serve_bytes
                                           and record.seq_len):
        return None
    extra = record.extra or {}  # the profiler's own process, like both peaks
    settled, forward = extra.get("rss_now_warm_bytes"), extra.get("rss_forward_peak_bytes")
    return MeasuredForward(load_rss_bytes=int(record.peak_rss_load_bytes),
                           serve_rss_bytes=int(record.peak_rss_serve_bytes), batch=SERVE_PROFILE_BATCH,
                           seq_len=int(record.seq_len), settled_rss_bytes=int(settled) if settled else None,
                           forward_peak_bytes=int(forward) if forward else None)


def weight_bytes_of(record: Footprint) -> int | None:
    """Bytes of weights: the state dict bytes the profiler counted, else the bytes on disk."""
    extra = record.extra or {}
    for key in ("state_dict_bytes", "weight_bytes"):
        if extra.get(key):
            return int(extra[key])
    return int(record.disk_bytes) if record.disk_bytes else None


def source_of(record: Footprint, base_dir: Path | None = None) -> str | None:
    """Where the variant's files are: an explicit path in ``extra``, else ``base_dir/<variant>``."""
    extra = record.extra or {}
    for key in ("variant_dir", "path", "model_dir", "source"):
        if extra.get(key):
            return str(extra[key])
    if base_dir is not None and (base_dir / record.variant).is_dir():
        return str(base_dir / record.variant)
    return None


def resolve_candidates(
    records: Sequence[Footprint], *, base_dir: Path | None = None, sources: dict[str, str] | None = None
) -> tuple[list[Candidate], dict[str, str]]:
    """Turn records into candidates (source dir, shape, weight bytes); the rest get a reason."""
    out: list[Candidate] = []
    rejected: dict[str, str] = {}
    for record in records:
        if not record.ok:
            rejected[record.variant] = f"its footprint run failed ({record.error or 'no reason given'})"
            continue
        weights = weight_bytes_of(record)
        source = (sources or {}).get(record.variant) or source_of(record, base_dir)
        if weights is None:
            rejected[record.variant] = "its footprint has no disk_bytes/state_dict_bytes to size its weights"
            continue
        if source is None:
            rejected[record.variant] = "no variant directory recorded (extra.variant_dir) or found beside the footprints"
            continue
        try:
            arch = ArchInfo.from_dir(source, kind=record.kind) if Path(source).is_dir() else ArchInfo.default_for(record.kind)
        except ConfigError as exc:
            rejected[record.variant] = str(exc)
            continue
        out.append(Candidate(record=record, source=source, arch=arch, weight_bytes=weights,
                             load_rss_bytes=load_rss_of(record), measured=measured_forward_of(record),
                             settled_rss_bytes=settled_rss_of(record)))
    return out, rejected


def footprint_for_source(source: str, *, kind: str | None = None, name: str | None = None) -> Footprint:
    """A minimal record for a variant given directly (``--variant DIR``): weights counted from its files."""

    path, implied = resolve_model_path(source)
    directory = path.parent if path.is_file() else path
    files = [f for f in directory.iterdir() if f.suffix in {".safetensors", ".bin", ".pt", ".pth", ".onnx"}]
    weights = sum(f.stat().st_size for f in files)
    if not weights:
        raise ConfigError(f"{directory} holds no weight files (.safetensors/.bin/.pt/.onnx)")
    arch = ArchInfo.from_dir(directory, kind=kind or implied)
    chain, runtime = "fp32", RUNTIME_TORCH
    manifest = directory / "manifest.json"
    if manifest.exists():
        import json

        written = json.loads(manifest.read_text())
        chain, runtime = str(written.get("chain", chain)), str(written.get("runtime") or runtime)
    label = name or (source if source in BUILTIN_MODELS else directory.name)
    return Footprint(variant=label, chain=chain, kind=arch.kind, disk_bytes=weights, runtime=runtime,
                     extra={"variant_dir": str(directory)})


def replica_need_bytes(
    record: Footprint,
    *,
    model: ServingMemoryModel | None = None,
    headroom: float = DEFAULT_HEADROOM,
    max_tokens: int | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> int | None:
    """The smallest replica budget the serving planner accepts for ``record``: the predicted peak of a Ray
    Serve replica at batch 1 and the token cap, plus headroom. Selection checks memory limits with this same
    figure, so a variant chosen under a budget is one the planner can deploy. None without weight bytes."""
    weights = weight_bytes_of(record)
    if not record.ok or weights is None:
        return None
    source = source_of(record)
    arch = ArchInfo.default_for(record.kind)
    if source is not None and (Path(source) / "config.json").is_file():
        arch = ArchInfo.from_dir(source, kind=record.kind)
    tokens = max_tokens or DEFAULT_MAX_TOKENS.get(arch.kind, 64)
    peak = (model or ServingMemoryModel()).predict(
        weights, arch, batch=1, seq_len=tokens, dtype_bytes=activation_dtype_bytes(record.chain),
        new_tokens=max_new_tokens if arch.kind == "causal_lm" else 0, load_rss_bytes=load_rss_of(record),
        runtime=record.runtime, measured=measured_forward_of(record), settled_rss_bytes=settled_rss_of(record),
    ).total
    return math.ceil(peak / (1 - headroom)) + 1  # the planner floors budget x (1 - headroom)
