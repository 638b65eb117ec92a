"""MLflow tracking for tightfit: the run layout, buffered logging and reading footprints back.

Layout: one *parent* run per pipeline run (role ``parent``: the footprint table, the Pareto PNG, the
selection), one nested run per variant (role ``variant``: params = ``VariantSpec.to_params()``, tags =
method/base model/dataset/version/git sha, metrics = ``Footprint.metrics()``, the variant as a pyfunc
model). Every name comes from ``tightfit.names``.

Every call writes to a local outbox first and then syncs; when the tracking server is unreachable the
compute work goes on with one clear warning, and the records arrive on the next sync after it returns.
Handles returned here are *record ids* (``tf-...``): stable across processes and outages; anywhere a
handle is accepted, an MLflow run id works too.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tightfit import names
from tightfit.errors import ConfigError
from tightfit.footprint import Footprint
from tightfit.spec import VariantSpec
from tightfit.track.client import Tracker, provenance_tags
from tightfit.track.outbox import (
    OP_END,
    OP_LOG,
    OP_REGISTER,
    OP_START,
    new_record_id,
    stable_record_id,
)

if TYPE_CHECKING:
    from tightfit.select.choose import Selection
    from tightfit.spec import HardwareTarget

log = logging.getLogger("tightfit.track")


def _tracker(tracker: Tracker | None) -> Tracker:
    return tracker if tracker is not None else Tracker()


def _metric_rows(metrics: Mapping[str, float], step: int = 0) -> list[list[float | int | str]]:
    now = int(time.time() * 1000)
    return [[k, float(v), int(step), now] for k, v in metrics.items() if v is not None]


def start_run(
    role: str,
    name: str,
    *,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    parent: str | None = None,
    record_id: str | None = None,
    base_model: str | None = None,
    dataset: str | None = None,
    tracker: Tracker | None = None,
) -> str:
    """Open a run of ``role`` (parent/variant/training/serving); returns its record id."""
    if role not in names.ROLES:
        raise ConfigError(f"unknown run role {role!r}; use one of {', '.join(names.ROLES)}")
    t = _tracker(tracker)
    rid = record_id or new_record_id()
    all_tags = {**provenance_tags(base_model, dataset), names.TAG_ROLE: role, **(tags or {})}
    t.push(OP_START, rid, name=name, parent=parent, tags=all_tags, params={k: str(v) for k, v in (params or {}).items()})
    return rid


def log_metrics(handle: str, metrics: Mapping[str, float], *, step: int = 0, tracker: Tracker | None = None) -> None:
    """Log metrics (names from ``tightfit.names``) to a run, buffered; keeps the time they were taken."""
    _tracker(tracker).push(OP_LOG, handle, metrics=_metric_rows(metrics, step))


def end_run(handle: str, status: str = "FINISHED", *, tracker: Tracker | None = None) -> None:
    """Close a run (``FINISHED``, ``FAILED`` or ``KILLED``)."""
    _tracker(tracker).push(OP_END, handle, status=status)


def start_parent(
    name: str | None = None,
    *,
    pipeline_run_id: str | None = None,
    base_model: str | None = None,
    dataset: str | None = None,
    target: HardwareTarget | None = None,
    params: Mapping[str, Any] | None = None,
    tracker: Tracker | None = None,
) -> str:
    """Open the parent run of one pipeline run; returns its record id (stable for a given ``pipeline_run_id``)."""
    rid = stable_record_id("parent", pipeline_run_id) if pipeline_run_id else new_record_id()
    all_params = dict(params or {})
    if target is not None:
        all_params[names.PARAM_TARGET] = target.describe()
    tags = {names.TAG_PIPELINE_RUN: pipeline_run_id or rid}
    return start_run(
        names.ROLE_PARENT,
        name or f"tightfit-{time.strftime('%Y%m%d-%H%M%S')}",
        params=all_params,
        tags=tags,
        record_id=rid,
        base_model=base_model,
        dataset=dataset,
        tracker=tracker,
    )


def variant_record_id(parent: str | None, variant: str) -> str:
    """The record id of a variant's run under ``parent`` (stable: the same variant is never logged twice)."""
    return stable_record_id("variant", parent, variant) if parent else new_record_id()


def log_variant(
    footprint: Footprint,
    *,
    parent: str | None = None,
    spec: VariantSpec | None = None,
    variant_dir: str | Path | None = None,
    base_model: str | None = None,
    dataset: str | None = None,
    dataset_digest: str | None = None,
    tags: Mapping[str, str] | None = None,
    tracker: Tracker | None = None,
) -> str:
    """Log one variant as a nested run of ``parent`` (its spec as params, its footprint as metrics) and as
    an MLflow LoggedModel of the same name, linked to the run and to ``dataset`` (``tightfit.track.models``).

    ``variant_dir`` (a saved variant) is logged as a pyfunc model that loads back through
    ``tightfit.load_variant``. ``dataset_digest`` names the evaluated split's version (see
    ``models.frame_digest``). A failed record becomes a FAILED run and a FAILED LoggedModel carrying its
    error. Returns the record id (``variant_record_id(parent, footprint.variant)``).
    """
    import json

    t = _tracker(tracker)
    if spec is None:
        spec = VariantSpec.parse(footprint.chain, name=footprint.variant)
    methods = [s.method for s in spec.steps] or ["fp32"]
    run_tags = {
        names.TAG_METHOD: ",".join(methods),
        names.TAG_VARIANT: footprint.variant,
        names.TAG_CHAIN: footprint.chain,
        names.TAG_KIND: footprint.kind,
        names.TAG_BACKEND: footprint.backend,
        names.TAG_RUNTIME: footprint.runtime,
        names.TAG_DEVICE: footprint.device,
        names.TAG_STATUS: footprint.status,
        **(tags or {}),
    }
    if footprint.error:
        run_tags[names.TAG_ERROR] = footprint.error
    if footprint.noise is not None:
        run_tags[names.TAG_NOISE] = footprint.noise
    if footprint.extra:
        run_tags[names.TAG_FOOTPRINT_EXTRA] = json.dumps(footprint.extra, default=str)
    if variant_dir is not None:
        run_tags[names.TAG_VARIANT_DIR] = str(Path(variant_dir).resolve())
    rid = variant_record_id(parent, footprint.variant)
    start_run(
        names.ROLE_VARIANT,
        footprint.variant,
        params=spec.to_params(),
        tags=run_tags,
        parent=parent,
        record_id=rid,
        base_model=base_model,
        dataset=dataset,
        tracker=t,
    )
    payload: dict[str, Any] = {"metrics": _metric_rows(footprint.metrics())}
    if variant_dir is not None and footprint.ok:
        payload["model"] = {"variant_dir": str(Path(variant_dir).resolve()), "artifact_path": names.ARTIFACT_MODEL}
    logged: dict[str, Any] = {
        "name": footprint.variant,
        "params": spec.to_params(),
        "tags": {**provenance_tags(base_model, dataset), names.TAG_ROLE: names.ROLE_VARIANT, **run_tags},
        "status": "READY" if footprint.ok else "FAILED",
    }
    if dataset:
        rows = footprint.extra.get("eval_rows")
        logged["dataset"] = {"name": dataset, "digest": dataset_digest or "unversioned", "rows": rows}
    payload["logged_model"] = logged
    t.push(OP_LOG, rid, **payload)
    t.push(OP_END, rid, status="FINISHED" if footprint.ok else "FAILED")
    return rid


def footprint_table(records: Sequence[Footprint], front: Sequence[Footprint] = (), chosen: str | None = None) -> dict[str, list[Any]]:
    """Columns for ``mlflow.log_table``: one row per variant, every footprint field plus front/chosen flags."""
    front_ids = {id(r) for r in front}
    columns: dict[str, list[Any]] = {
        "variant": [r.variant for r in records],
        "chain": [r.chain for r in records],
        "status": [r.status for r in records],
        "pareto": [id(r) in front_ids for r in records],
        "chosen": [r.variant == chosen for r in records],
    }
    for metric in names.FOOTPRINT_METRICS:
        columns[metric] = [getattr(r, metric) for r in records]
    columns["error"] = [r.error or "" for r in records]
    return columns


def log_parent_summary(
    parent: str,
    records: Sequence[Footprint],
    selection: Selection,
    *,
    plot: str | Path | None = None,
    report: str | Path | None = None,
    tracker: Tracker | None = None,
    end: bool = True,
) -> None:
    """Log what selection decided on the parent run: the footprint table, the Pareto plot (``plot``, drawn
    by ``tightfit.select.pareto_plot``), the HTML report (``report``, ``tightfit.select.write_report``), the
    selection as JSON; tag each variant run with its front and chosen flags; close the parent. Nothing here
    chooses or measures: tracking only records."""
    import json
    import tempfile

    t = _tracker(tracker)
    front = list(selection.front)
    chosen = selection.chosen.variant if selection.chosen is not None else None
    artifacts = []
    if plot is not None and Path(plot).exists():
        artifacts.append([str(t.outbox.stash_file(parent, plot, names.ARTIFACT_PARETO_PLOT)), ""])
    if report is not None and Path(report).exists():
        artifacts.append([str(t.outbox.stash_file(parent, report, names.ARTIFACT_REPORT)), ""])
    with tempfile.TemporaryDirectory(prefix="tightfit-summary-") as tmp:
        sel_path = Path(tmp) / names.ARTIFACT_SELECTION
        sel_path.write_text(json.dumps(selection.to_dict(), indent=2, default=str))
        artifacts.append([str(t.outbox.stash_file(parent, sel_path)), ""])
    summary = {
        names.VARIANTS_TOTAL: len(records),
        names.VARIANTS_FAILED: sum(not r.ok for r in records),
        names.VARIANTS_ON_FRONT: len(front),
    }
    summary_tags = {names.TAG_SELECTED: chosen or ""}
    table = {"data": footprint_table(records, front, chosen), "artifact_file": names.ARTIFACT_FOOTPRINT_TABLE}
    t.push(OP_LOG, parent, metrics=_metric_rows(summary), tags=summary_tags, artifacts=artifacts, table=table)
    front_ids = {id(r) for r in front}
    for record in records:
        flags = {names.TAG_PARETO: str(id(record) in front_ids).lower()}
        if chosen is not None:
            flags[names.TAG_SELECTED] = str(record.variant == chosen).lower()
        t.push(OP_LOG, variant_record_id(parent, record.variant), tags=flags)
    if end:
        t.push(OP_END, parent, status="FINISHED")


def register_variant(
    handle: str,
    *,
    model_name: str = names.DEFAULT_REGISTERED_MODEL,
    aliases: Sequence[str] = (names.ALIAS_CHAMPION,),
    tracker: Tracker | None = None,
) -> str | None:
    """Register a variant run's pyfunc model and point ``aliases`` at it (buffered like every record).

    Returns the MLflow run id once it is registered, None while buffered.
    """
    t = _tracker(tracker)
    t.push(OP_REGISTER, handle, run=handle, model_name=model_name, aliases=list(aliases))
    return t.run_id(handle)


def register_aliases(
    parent: str,
    aliases: Mapping[str, Sequence[str]],
    *,
    model_name: str = names.DEFAULT_REGISTERED_MODEL,
    tracker: Tracker | None = None,
) -> None:
    """Register each variant run under ``parent`` and point its aliases at it (``{variant: [alias, ...]}``,
    e.g. from ``tightfit.select.registry_aliases``). The variants must have been logged with their dirs."""
    for variant, variant_aliases in aliases.items():
        register_variant(variant_record_id(parent, variant), model_name=model_name, aliases=list(variant_aliases),
                         tracker=tracker)


@contextlib.contextmanager
def system_metrics(handle: str, *, interval_s: float = 10.0, tracker: Tracker | None = None) -> Iterator[bool]:
    """Sample MLflow's host-wide system metrics (``system/...``) into a run while the block runs.

    Context only: they describe the whole host (other processes included), never a variant's footprint,
    which the profiler measures in its own subprocess. Yields False (and samples nothing) while the run is
    only buffered or the server is down.
    """
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    t = _tracker(tracker)
    run_id = t.run_id(handle)
    if run_id is None or t.offline:
        log.info("system metrics not sampled: run %s is not in MLflow yet", handle)
        yield False
        return
    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, tracking_uri=t.uri)
    monitor.start()
    try:
        yield True
    finally:
        monitor.finish()
