"""Shared by the tracking test modules (no tests here): a real, measured variant sweep cached on disk.

The sweep (fp32, bf16, int8 dynamic) is built from the fine-tuned MiniLM with ``tightfit.compress.build_variant``
and measured with ``tightfit.measure.profile.measure_variant``; both are cached under $TIGHTFIT_CACHE so the server
and UI test modules (and reruns) share one build.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from tightfit.footprint import Footprint

SWEEP_VERSION = "v2"
SWEEP = (("fp32", "fp32"), ("bf16", "bf16"), ("int8-dynamic", "int8_dynamic"))
SAMPLE_TEXTS = [
    "a gorgeous, witty, seductive movie.",
    "the plot is nothing but boilerplate clichés from start to finish.",
    "an utterly charming and hilarious film that reminded me of why i love movies.",
    "it's a bad sign when you're rooting for the film to end.",
    "a thoroughly enjoyable, heartfelt coming-of-age story.",
    "dull, lifeless, and oddly forgettable.",
]


_RSS_PROBE = """
import resource, sys, torch
torch.set_num_threads(2)
from tightfit import load_variant
from tightfit.measure.quality import predict_logits
v = load_variant(sys.argv[1], device="cpu")
predict_logits(v.model, v.tokenizer, ["a fine film"] * 32, batch_size=32, max_length=64)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def _fallback_measure(variant_dir: Path, data: object, baseline: Footprint | None) -> Footprint:
    """A small stand-in for ``measure_variant`` while tightfit.measure.profile is not there (real figures, fewer)."""
    import statistics
    import subprocess
    import sys
    import time

    from tightfit import load_variant
    from tightfit.measure.quality import evaluate

    variant = load_variant(variant_dir, device="cpu")
    quality = evaluate(variant.model, variant.tokenizer, data.test.head(256), "classifier", batch_size=32)  # type: ignore[attr-defined]
    times = []
    for _ in range(12):
        start = time.perf_counter()
        evaluate(variant.model, variant.tokenizer, data.test.head(1), "classifier", batch_size=1)  # type: ignore[attr-defined]
        times.append(1000 * (time.perf_counter() - start))
    probe = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(variant_dir)], capture_output=True, text=True,
                           check=True)
    disk = sum(f.stat().st_size for f in Path(variant_dir).rglob("*") if f.is_file())
    record = Footprint(
        variant=variant_dir.name, accuracy=quality["accuracy"], f1_macro=quality["f1_macro"], disk_bytes=disk,
        peak_rss_serve_bytes=int(probe.stdout.strip().splitlines()[-1]),
        latency_ms_b1_p50=statistics.median(times), latency_ms_b1_p95=sorted(times)[-1], seq_len=64,
    )
    return record.with_baseline(baseline) if baseline else record


def _measure(variant_dir: Path, data: object, baseline: Footprint | None) -> Footprint:
    try:
        from tightfit.measure.profile import measure_variant
    except ImportError:
        return _fallback_measure(variant_dir, data, baseline)
    return measure_variant(variant_dir, data, seq_len=64, baseline=baseline, memory_subprocess=True, quick=True)


def real_sweep(finetuned_dir: Path) -> list[tuple[Footprint, Path]]:
    """(measured record, variant dir) for each variant of ``SWEEP``; built once, then read from the cache."""
    import torch

    from tightfit.assets import cache_dir
    from tightfit.compress import build_variant
    from tightfit.data import load_dataset
    from tightfit.spec import VariantSpec

    root = cache_dir() / f"tracking-sweep-{SWEEP_VERSION}-{Path(finetuned_dir).name}"
    root.mkdir(parents=True, exist_ok=True)
    records_file = root / "footprints.json"
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not records_file.exists():
            torch.set_num_threads(min(2, os.cpu_count() or 1))
            data = load_dataset("rotten_tomatoes", seed=0, limit=600)
            records: list[dict] = []
            baseline: Footprint | None = None
            for name, chain in SWEEP:
                out = root / name
                if not (out / "manifest.json").exists():
                    build_variant(finetuned_dir, VariantSpec.parse(chain, name=name), out, data=data, progress=False)
                record = _measure(out, data, baseline)
                record.variant, record.chain = name, chain
                baseline = baseline or record
                records.append(record.to_dict())
            records_file.write_text(json.dumps(records, indent=2))
    items = [Footprint.from_dict(d) for d in json.loads(records_file.read_text())]
    return [(r, root / r.variant) for r in items]


def labels_before_logging(variant_dir: Path, texts: list[str]) -> list[str]:
    """Predicted label names straight from the variant dir (no MLflow involved)."""
    from tightfit import load_variant
    from tightfit.measure.quality import predict_logits

    variant = load_variant(variant_dir, device="cpu")
    logits = predict_logits(variant.model, variant.tokenizer, texts, batch_size=32, max_length=64)
    return [variant.model.config.id2label[int(x)] for x in logits.argmax(dim=-1).tolist()]


def log_summary(parent: str, records: list[Footprint], tracker: object, target: object = None) -> object:
    """What the pipeline's ``select`` step does after a sweep: select under ``target`` (no limits by
    default), draw the Pareto plot, and log both on the parent run. Returns the Selection."""
    import tempfile

    from tightfit import track
    from tightfit.select import pareto_plot, select_variant
    from tightfit.spec import HardwareTarget

    selection = select_variant(records, target or HardwareTarget())
    plot = None
    if any(r.ok for r in records):
        chosen = selection.chosen.variant if selection.chosen else None
        plot = pareto_plot(records, Path(tempfile.mkdtemp(prefix="tightfit-test-")) / "pareto.png", chosen=chosen)
    track.log_parent_summary(parent, records, selection, plot=plot, tracker=tracker)  # type: ignore[arg-type]
    return selection
