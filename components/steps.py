"""The plain-Python bodies of the KFP components: parse inputs, call the tightfit library, write outputs.

Each ``@dsl.component`` in this folder imports one function from here and calls it, so the component
source that KFP ships stays a few lines and this glue is testable without KFP. Nothing here decides
anything the library decides (compression, measuring, selection, tracking, serving plans).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tightfit.components.common import (
    as_object,
    fail_task,
    log_stats,
    model_uri,
    quiet,
    read_text,
    stopwatch,
    tracking_uri,
)

from tightfit.footprint import Footprint

if TYPE_CHECKING:
    from tightfit.data import DatasetSplits

# Component bodies import these from here (their source is compiled into the pipeline IR).
__all__ = ["as_object", "fail_task", "log_stats", "model_uri", "quiet", "read_text", "stopwatch", "tracking_uri"]

SPLITS_META = "splits.json"
SPLIT_NAMES = ("train", "validation", "test")


# ----------------------------------------------------------------------------------------- data


def save_splits(splits: DatasetSplits, out_dir: str | Path, **extra: Any) -> dict[str, Any]:
    """Write a ``DatasetSplits`` as one parquet file per split plus a small JSON description."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLIT_NAMES:
        getattr(splits, split).to_parquet(out / f"{split}.parquet", index=False)
    meta = {"name": splits.name, "label_names": list(splits.label_names), "sizes": splits.sizes(), **extra}
    (out / SPLITS_META).write_text(json.dumps(meta))
    return meta


def load_splits(path: str | Path) -> DatasetSplits:
    """Read the splits ``save_splits`` wrote back into a ``tightfit.data.DatasetSplits``."""
    import pandas as pd

    from tightfit.data import DatasetSplits

    root = Path(path)
    meta = json.loads((root / SPLITS_META).read_text())
    frames = {s: pd.read_parquet(root / f"{s}.parquet") for s in SPLIT_NAMES}
    return DatasetSplits(name=meta["name"], label_names=meta["label_names"], **frames)


def prepare_data_step(
    dataset: str, seed: int, limit: int, validation: float, test: float, out_dir: str
) -> dict[str, Any]:
    """Load and split the dataset (``limit`` <= 0 means every row) and save it as the data artifact."""
    from tightfit.data import load_dataset

    stats: dict[str, Any] = {}
    with stopwatch(stats):
        splits = load_dataset(dataset, seed=int(seed), validation=validation, test=test, limit=int(limit) or None)
        meta = save_splits(splits, out_dir, seed=int(seed), limit=int(limit) or None)
    stats.update({f"rows_{k}": v for k, v in meta["sizes"].items()})
    return stats


# ----------------------------------------------------------------------------------------- variants


def compress_step(baseline_dir: str, data_dir: str, variant: str, chain: str, out_dir: str) -> dict[str, Any]:
    """Build one variant with ``tightfit.compress.build_variant``; returns the step's stats.

    A chain that cannot be built raises (``TightfitError`` with the reason): the component fails its task,
    so KFP neither caches it nor hands a half-built variant downstream.
    """
    import os

    import torch

    from tightfit.compress import build_variant
    from tightfit.device import task_threads
    from tightfit.settings import ENV_LOOP_THREADS
    from tightfit.spec import VariantSpec

    stats: dict[str, Any] = {}
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    threads = task_threads()  # a loop iteration beside another takes its share of the cores, not all of them
    torch.set_num_threads(threads)
    if os.environ.get(ENV_LOOP_THREADS):  # a kfp.local task process: its ONNX Runtime sessions share too
        os.environ.setdefault("TIGHTFIT_THREADS", str(threads))
    stats["threads"] = threads
    with stopwatch(stats):
        spec = VariantSpec.parse(chain, name=variant)
        build_variant(baseline_dir, spec, out, data=load_splits(data_dir), teacher=baseline_dir, progress=False)
    return stats


def profile_step(
    variant_dir: str,
    data_dir: str,
    variant: str,
    chain: str,
    baseline_json: str,
    seq_len: int,
    quick: bool,
    memory_subprocess: bool,
) -> tuple[Footprint, dict[str, Any]]:
    """Measure one variant (``tightfit.measure.profile.measure_variant``); returns (footprint, stats).

    A measurement that cannot finish raises: a footprint is only what was measured, so a failed
    measurement fails the task instead of becoming a record that KFP would cache.
    """
    stats: dict[str, Any] = {}
    with stopwatch(stats):
        if chain == "fp32" and baseline_json:
            # The fp32 variant holds the baseline's weights: its footprint is the baseline's measurement.
            record = Footprint.from_dict(as_object(baseline_json))
            record.variant, record.chain = variant, chain
            record.with_baseline(Footprint.from_dict(as_object(baseline_json)))
        else:
            from tightfit.measure.profile import measure_variant

            baseline = Footprint.from_dict(as_object(baseline_json)) if baseline_json else None
            record = measure_variant(
                variant_dir,
                load_splits(data_dir),
                seq_len=int(seq_len),
                baseline=baseline,
                memory_subprocess=bool(memory_subprocess),
                quick=bool(quick),
            )
            record.variant, record.chain = variant, chain
    return record, stats


def write_record(path: str, record: Footprint) -> None:
    """Write a Footprint record as JSON to an artifact path."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(record_json(record))


def read_record(artifact: Any) -> str:
    """The record JSON an optional footprint artifact holds ('' when there is none)."""
    if artifact is None or not getattr(artifact, "path", None) or not Path(artifact.path).exists():
        return ""
    return Path(artifact.path).read_text()


def record_json(record: Footprint) -> str:
    return json.dumps(record.to_dict(), sort_keys=True)


def records_from_json(items: list[str]) -> list[Footprint]:
    """Footprint records from the JSON strings a fan-in collects (order kept)."""
    return [Footprint.from_dict(as_object(item)) for item in items]


def copy_variant(src: str | Path, dst: str | Path) -> None:
    """Copy a variant directory into an output artifact path."""
    dst_path = Path(dst)
    if dst_path.exists():
        shutil.rmtree(dst_path)
    shutil.copytree(src, dst_path)


# ----------------------------------------------------------------------------------------- models


def import_model_step(model_name: str, kind: str, out_dir: str) -> dict[str, Any]:
    """Save a built-in model or a local path as an HF-format directory (the baseline of a sweep)."""
    from tightfit.assets import load_model

    stats: dict[str, Any] = {}
    with stopwatch(stats):
        loaded = load_model(model_name, kind=kind or None)  # type: ignore[arg-type]
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        loaded.model.save_pretrained(out)
        loaded.tokenizer.save_pretrained(out)
    return stats


def finetune_step(data_dir: str, out_dir: str, **settings: Any) -> dict[str, Any]:
    """Fine-tune on Ray Train (``tightfit.train.run.run_finetune``) on the prepared dataset; copy the model out."""
    import tempfile

    from tightfit.train import FinetuneConfig, run_finetune

    meta = json.loads((Path(data_dir) / SPLITS_META).read_text())
    stats: dict[str, Any] = {}
    with stopwatch(stats), tempfile.TemporaryDirectory(prefix="tightfit-finetune-") as work:
        config = FinetuneConfig.from_dict({
            "model": settings["base_model"],
            "dataset": meta["name"],
            "seed": int(meta.get("seed", settings["seed"])),
            "limit": meta.get("limit") or None,
            "workers": int(settings["workers"]),
            "cpus_per_worker": int(settings["cpus_per_worker"]),
            "epochs": int(settings["epochs"]),
            "patience": int(settings["patience"]),
            "monitor": settings["monitor"],
            "global_batch": int(settings["batch_size"]),
            "lr": float(settings["lr"]),
            "max_length": int(settings["max_length"]),
            "memory_budget": settings["memory_budget"] or None,
            "address": settings["address"] or None,
            "tracking_uri": tracking_uri(settings["tracking_uri"]),
            "experiment": settings["experiment"],
            "out_dir": str(Path(work) / "out"),
            "log_model": False,
        }, source="finetune task")
        result = run_finetune(config)
        copy_variant(result.model_dir, out_dir)
    for key, value in result.metrics.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            stats[f"train.{key}"] = float(value)
    for row in result.history:  # the validation curve, for the run summary (numbers only in a Metrics artifact)
        for key in ("val_loss", "val_accuracy"):
            if row.get(key) is not None:
                stats[f"curve.{key}.{int(row['epoch'])}"] = float(row[key])
    stats["train.mlflow_run"] = 1.0
    return stats


# ----------------------------------------------------------------------------------------- choose


def select_step(
    footprints: list[str],
    variant_dirs: list[str],
    target_json: str,
    tracking_uri_value: str,
    experiment: str,
    pipeline_run: str,
    chosen_dir: str,
    report_path: str,
    failed_json: str = "",
) -> tuple[str | None, str, dict[str, Any]]:
    """Choose with ``tightfit.select.choose.select_variant``; copy the chosen variant out; write the HTML report.

    ``failed_json`` names variants that failed in an earlier run (``{variant: {"chain", "error"}}``): they are
    reported and logged as failed records, never chosen. Returns (chosen variant or None, the selection as
    JSON, stats).
    """
    from tightfit.select.choose import select_variant
    from tightfit.select.report import write_report
    from tightfit.spec import HardwareTarget

    stats: dict[str, Any] = {}
    with stopwatch(stats):
        records = records_from_json(footprints) + failed_records(failed_json)
        target = HardwareTarget.model_validate(as_object(target_json) or {})
        selection = select_variant(records, target)
        dirs = _dirs_by_variant(variant_dirs)
        chosen = selection.chosen
        if chosen is not None:
            copy_variant(dirs[chosen.variant], chosen_dir)
        else:
            Path(chosen_dir).mkdir(parents=True, exist_ok=True)
        report = selection.to_dict()
        report["records"] = [r.to_dict() for r in records]
        report["variant_dirs"] = dirs
        report["report_path"] = str(report_path)
        plot = Path(report_path).with_name("pareto.png")
        from tightfit.components.tracking_steps import draw_plot, log_selection

        draw_plot(selection, records, plot)
        write_report(report_path, selection, records, plot if plot.exists() else None)
        # The KFP HTML artifact has no extension; a copy named .html opens in any browser from a file manager.
        page = Path(report_path).with_name("report.html")
        shutil.copyfile(report_path, page)
        report["report_path"] = str(page)
        log_selection(selection, records, tracking_uri_value, experiment, pipeline_run, plot, Path(report_path))
        report["pareto_path"] = str(plot) if plot.exists() else None
    stats.update({"variants": len(records), "failed": len(selection.failed), "fitting": len(selection.fitting)})
    return (chosen.variant if chosen else None), json.dumps(report, default=str), stats


def failed_records(failed_json: str) -> list[Footprint]:
    """Failed footprint records from ``{variant: {"chain": ..., "error": ...}}`` (empty for '')."""
    from tightfit import names

    failed = as_object(failed_json) or {}
    return [
        Footprint(variant=name, chain=str(info.get("chain", "fp32")), status=names.STATUS_FAILED,
                  error=str(info.get("error", "failed")))
        for name, info in failed.items()
    ]


def _dirs_by_variant(variant_dirs: list[str]) -> dict[str, str]:
    """Map variant name -> directory, read from each artifact's manifest."""
    out: dict[str, str] = {}
    for path in variant_dirs:
        manifest = Path(path) / "manifest.json"
        if manifest.exists():
            data = json.loads(manifest.read_text())
            name = data.get("name") or (data.get("spec") or {}).get("name")
            if name:
                out[str(name)] = path
    return out
