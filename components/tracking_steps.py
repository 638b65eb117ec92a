"""KFP component bodies that talk to MLflow: the parent run, nested variant runs, the selection summary
and registration. Thin glue over ``tightfit.track.runs`` (see ``steps.py`` for the rest)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tightfit.components.common import as_object, stopwatch, tracking_uri

from tightfit.footprint import Footprint

if TYPE_CHECKING:
    from tightfit.select.choose import Selection


def _tracker(uri: str, experiment: str) -> Any:
    from tightfit.track.runs import Tracker

    return Tracker(tracking_uri(uri), experiment or None)


def parent_handle(pipeline_run: str) -> str:
    """The parent run's record id for a pipeline run id: every task derives it from the same pipeline
    parameter (kfp.local hands a loop's item to a loop task in place of an upstream task's output)."""
    from tightfit.track.outbox import stable_record_id

    return stable_record_id("parent", pipeline_run) if pipeline_run else ""


def start_parent_run(
    uri: str, experiment: str, run_name: str, base_model: str, dataset: str, target_json: str, pipeline_run: str
) -> tuple[str, dict[str, Any]]:
    """Open the pipeline run's MLflow parent run (``tightfit.track.runs.start_parent``); returns its handle."""
    from tightfit.spec import HardwareTarget
    from tightfit.track.runs import start_parent

    stats: dict[str, Any] = {}
    with stopwatch(stats):
        target = HardwareTarget.model_validate(as_object(target_json) or {})
        handle = start_parent(
            run_name,
            pipeline_run_id=pipeline_run or None,
            base_model=base_model,
            dataset=dataset,
            target=target,
            tracker=_tracker(uri, experiment),
        )
    return handle, stats


def log_variant_run(
    record: Footprint, variant_dir: str, uri: str, experiment: str, pipeline_run: str, data_dir: str = ""
) -> str:
    """Log one variant as a nested run of the pipeline run's parent and as a LoggedModel linked to the
    evaluated test split (``tightfit.track.runs.log_variant``); nothing without a pipeline run id."""
    parent = parent_handle(pipeline_run)
    if not parent:
        return ""
    from tightfit.track.runs import log_variant

    dataset, digest = _dataset_version(data_dir)
    directory = variant_dir if record.ok else None
    return log_variant(record, parent=parent, variant_dir=directory, base_model=record.extra.get("base_model"),
                       dataset=dataset, dataset_digest=digest, tracker=_tracker(uri, experiment))


def _dataset_version(data_dir: str) -> tuple[str | None, str | None]:
    """The data artifact's dataset name and the digest of its test split (what quality was measured on)."""
    import json

    meta, test = Path(data_dir or ".") / "splits.json", Path(data_dir or ".") / "test.parquet"
    if not data_dir or not meta.exists() or not test.exists():
        return None, None
    import pandas as pd

    from tightfit.track.models import frame_digest

    return str(json.loads(meta.read_text())["name"]), frame_digest(pd.read_parquet(test))


def draw_plot(selection: Selection, records: list[Footprint], plot_path: Path) -> None:
    """Draw the Pareto plot for the report (quality vs disk and vs the target's latency figure)."""
    from tightfit.select.choose import latency_objective
    from tightfit.select.plot import pareto_plot

    chosen = selection.chosen.variant if selection.chosen is not None else None
    if any(r.ok for r in records):
        pareto_plot(records, plot_path, chosen=chosen, latency_metric=latency_objective(selection.target)[0])


def log_selection(
    selection: Selection, records: list[Footprint], uri: str, experiment: str, pipeline_run: str, plot_path: Path,
    report_path: Path | None = None,
) -> None:
    """Log table + plot + report + selection on the parent run."""
    parent = parent_handle(pipeline_run)
    if parent:
        from tightfit.track.runs import log_parent_summary, log_variant

        tracker = _tracker(uri, experiment)
        for record in records:
            if not record.ok:  # a variant that failed to build has no run yet: a FAILED run carries its cause
                log_variant(record, parent=parent, tracker=tracker)
        log_parent_summary(parent, records, selection, plot=plot_path, report=report_path, tracker=tracker)


def register_step(
    selection_json: str, uri: str, experiment: str, pipeline_run: str, registered_model: str, alias: str
) -> tuple[str, dict[str, Any]]:
    """Register the chosen variant's run model with ``alias`` and its memory-tier alias; returns its URI."""
    from tightfit import names
    from tightfit.select.choose import tier_alias
    from tightfit.track.runs import register_variant, variant_record_id

    stats: dict[str, Any] = {}
    with stopwatch(stats):
        selection = as_object(selection_json)
        chosen = selection.get("chosen")
        if not chosen:  # nothing fits the target: nothing to register
            return "", stats
        aliases = [alias]
        # The budget's tier alias names the chosen variant only if it really fits the tier (then it is
        # also the best fit for the tier).
        memory = (selection.get("target") or {}).get("memory_bytes")
        extra = tier_alias(Footprint.from_dict(selection["chosen_record"]), memory)
        if extra is not None and extra not in aliases:
            aliases.append(extra)
        register_variant(
            variant_record_id(parent_handle(pipeline_run), chosen),
            model_name=registered_model,
            aliases=aliases,
            tracker=_tracker(uri, experiment),
        )
    return names.model_uri(registered_model, alias), stats
