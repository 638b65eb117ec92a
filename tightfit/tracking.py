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
import functools
import logging
import os
import subprocess
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tightfit import names
from tightfit.footprint import Footprint
from tightfit.tracking_buffer import (
    OP_END,
    OP_LOG,
    OP_REGISTER,
    OP_START,
    Op,
    Outbox,
    new_record_id,
    stable_record_id,
)
from tightfit.tracking_read import find_parent_runs, find_variant_run, read_footprints, resolve_tracking_uri
from tightfit.tracking_sync import SyncReport, sync_outbox

__all__ = [
    "Tracker",
    "TrackingUnavailableWarning",
    "end_run",
    "find_parent_runs",
    "find_variant_run",
    "log_metrics",
    "log_parent_summary",
    "log_variant",
    "read_footprints",
    "register_selection",
    "register_variant",
    "resolve_tracking_uri",
    "start_parent",
    "start_run",
    "system_metrics",
    "variant_record_id",
]

log = logging.getLogger("tightfit.tracking")


class TrackingUnavailableWarning(UserWarning):
    """The tracking server did not answer; records stay in the local outbox until it does."""


def home_dir() -> Path:
    """``$TIGHTFIT_HOME`` or ``./tightfit-runs``: the local store, artifacts and outbox live here."""
    return Path(os.environ.get(names.ENV_HOME, names.DEFAULT_HOME_DIR)).expanduser().resolve()


@functools.lru_cache(maxsize=1)
def git_sha() -> str:
    """The commit of the tightfit checkout (``unknown`` for an installed wheel)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def provenance_tags(base_model: str | None = None, dataset: str | None = None) -> dict[str, str]:
    """Version, git sha, base model and dataset tags shared by every run."""
    from tightfit import __version__

    tags = {names.TAG_VERSION: __version__, names.TAG_GIT_SHA: git_sha()}
    if base_model:
        tags[names.TAG_BASE_MODEL] = str(base_model)
    if dataset:
        tags[names.TAG_DATASET] = str(dataset)
    return tags


class Tracker:
    """Where records go: a tracking URI, an experiment and the local outbox in front of them."""

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str | None = None,
        outbox_dir: str | Path | None = None,
        retry_interval_s: float = 2.0,
    ) -> None:
        self.uri = resolve_tracking_uri(tracking_uri)
        self.experiment = experiment or os.environ.get(names.ENV_EXPERIMENT) or names.DEFAULT_EXPERIMENT
        self.outbox = Outbox(outbox_dir or home_dir())
        self.retry_interval_s = retry_interval_s
        self._offline_since: float | None = None
        self._last_try = 0.0

    def __repr__(self) -> str:
        return f"Tracker(uri={self.uri!r}, experiment={self.experiment!r}, outbox={str(self.outbox.path)!r})"

    def push(self, kind: str, record_id: str, **payload: Any) -> Op:
        """Buffer one op, then try to sync (throttled while the server is down)."""
        op = self.outbox.append(Op(kind=kind, record_id=record_id, payload={"experiment": self.experiment, **payload}))
        if self._offline_since is None or time.monotonic() - self._last_try >= self.retry_interval_s:
            self.sync()
        return op

    def sync(self) -> SyncReport:
        """Replay pending records into MLflow; warn (once per outage) instead of raising when it is down."""
        self._last_try = time.monotonic()
        report = sync_outbox(self.outbox, self.uri)
        if report.error is not None:
            if self._offline_since is None:
                self._offline_since = time.monotonic()
                message = (
                    f"MLflow at {self.uri} is unreachable ({report.error}); {report.pending} record(s) kept in "
                    f"{self.outbox.path} and synced when it answers (or run `tightfit compare --sync`)"
                )
                log.warning(message)
                warnings.warn(message, TrackingUnavailableWarning, stacklevel=3)
        elif self._offline_since is not None:
            log.warning("MLflow at %s is back: %d buffered record(s) synced", self.uri, report.applied)
            self._offline_since = None
        return report

    @property
    def offline(self) -> bool:
        return self._offline_since is not None

    def run_id(self, handle: str) -> str | None:
        """The MLflow run id behind a record id (None while it is only buffered)."""
        return self.outbox.run_id_for(handle) if handle.startswith("tf-") else handle


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
        from tightfit.errors import ConfigError

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
    target: Any = None,
    params: Mapping[str, Any] | None = None,
    tracker: Tracker | None = None,
) -> str:
    """Open the parent run of one pipeline run; returns its record id (stable for a given ``pipeline_run_id``)."""
    rid = stable_record_id("parent", pipeline_run_id) if pipeline_run_id else new_record_id()
    all_params = dict(params or {})
    if target is not None:
        all_params[names.PARAM_TARGET] = target.describe() if hasattr(target, "describe") else str(target)
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
    spec: Any = None,
    variant_dir: str | Path | None = None,
    base_model: str | None = None,
    dataset: str | None = None,
    tags: Mapping[str, str] | None = None,
    tracker: Tracker | None = None,
) -> str:
    """Log one variant as a nested run of ``parent``: its spec as params, its footprint as metrics.

    ``variant_dir`` (a saved variant) is logged as a pyfunc model that loads back through
    ``tightfit.load_variant``. A failed record becomes a FAILED run carrying its error. Returns the
    record id (``variant_record_id(parent, footprint.variant)``).
    """
    import json

    from tightfit.spec import VariantSpec

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
        names.TAG_DEVICE: footprint.device,
        names.TAG_STATUS: footprint.status,
        **(tags or {}),
    }
    if footprint.error:
        run_tags[names.TAG_ERROR] = footprint.error
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
    *,
    selection: Any = None,
    tracker: Tracker | None = None,
    end: bool = True,
) -> None:
    """Log the footprint table, the Pareto PNG and the selection on the parent; tag front variants; close it."""
    import json
    import tempfile

    from tightfit.plots import pareto_plot
    from tightfit.select import pareto_front

    t = _tracker(tracker)
    front = list(selection.front) if selection is not None else pareto_front(records)
    chosen = selection.chosen.variant if selection is not None and selection.chosen is not None else None
    with tempfile.TemporaryDirectory(prefix="tightfit-summary-") as tmp:
        plot = pareto_plot(records, Path(tmp) / names.ARTIFACT_PARETO_PLOT, chosen=chosen)
        artifacts = [[str(t.outbox.stash_file(parent, plot)), ""]]
        if selection is not None:
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


def register_selection(
    parent: str,
    records: Sequence[Footprint],
    target: Any = None,
    *,
    model_name: str = names.DEFAULT_REGISTERED_MODEL,
    tiers: Sequence[int] = names.BUDGET_TIERS_BYTES,
    tracker: Tracker | None = None,
) -> dict[str, str]:
    """Register the chosen variant as ``champion`` and the best fit of each memory tier as ``fits-<tier>``.

    Returns alias -> variant name. Variants must have been logged with their variant_dir under ``parent``.
    """
    from tightfit.select import select_per_tier, select_variant
    from tightfit.spec import HardwareTarget

    target = target or HardwareTarget()
    aliases: dict[str, list[str]] = {}
    chosen = select_variant(records, target).chosen
    if chosen is not None:
        aliases.setdefault(chosen.variant, []).append(names.ALIAS_CHAMPION)
    for tier, record in select_per_tier(records, target.model_copy(update={"memory_bytes": None}), tiers).items():
        aliases.setdefault(record.variant, []).append(names.budget_alias(tier))
    for variant, variant_aliases in aliases.items():
        register_variant(variant_record_id(parent, variant), model_name=model_name, aliases=variant_aliases, tracker=tracker)
    return {alias: variant for variant, items in aliases.items() for alias in items}


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
