"""Replay the outbox into MLflow, idempotently: a run is found by its record-id tag before one is created.

``sync_outbox`` probes the tracking server first (a fast ``/health`` request) and stops at the first
failure, leaving the rest pending for the next try; it never raises for an unreachable server. An op the
server refuses (or one that cannot be applied, e.g. its run was never created) is kept in the outbox's
dead-letter file with the reason, and so is the part of an op that could not be applied (a vanished
artifact), so nothing is dropped silently.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tightfit import names, settings
from tightfit.errors import BackendError
from tightfit.track.backend import server_reachable, sync_errors
from tightfit.track.outbox import OP_END, OP_LOG, OP_REGISTER, OP_START, Op, Outbox, is_record_id

log = logging.getLogger("tightfit.track")

# Fail fast while syncing: the outbox keeps the records, so long client retries only stall the compute work.
_SYNC_HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


@dataclass
class SyncReport:
    """What one sync did: ops applied, ops still pending, and the error that stopped it (if any)."""

    applied: int = 0
    pending: int = 0
    rejected: int = 0
    error: str | None = None
    runs: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.pending == 0 and self.error is None


def _fail_fast_http() -> contextlib.AbstractContextManager[None]:
    """``_SYNC_HTTP_ENV`` for the block where the user set none of its own (a value they set is kept)."""
    return settings.environ({key: os.environ.get(key, value) for key, value in _SYNC_HTTP_ENV.items()})


_REFUSALS = frozenset(
    {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST", "INVALID_STATE"}
)


def _rejected(exc: BaseException) -> bool:
    """True when the server answered and refused (a bad op), False for an outage (retry later)."""

    if isinstance(exc, BackendError):
        return True
    return getattr(exc, "error_code", None) in _REFUSALS


def artifact_root_for(uri: str, experiment: str) -> str | None:
    """Local stores keep artifacts beside the database (not in ./mlruns of whatever the CWD is)."""
    if uri.startswith("sqlite:///"):
        return str(Path(uri.removeprefix("sqlite:///")).parent / settings.LOCAL_ARTIFACT_DIR / experiment)
    return None


class _Syncer:
    def __init__(self, outbox: Outbox, uri: str) -> None:
        from mlflow import MlflowClient

        self.outbox = outbox
        self.uri = uri
        self.client = MlflowClient(uri)
        self.experiments: dict[str, str] = {}
        _, _, self.runs = outbox.read()

    def experiment_id(self, name: str) -> str:
        if name not in self.experiments:
            found = self.client.get_experiment_by_name(name)
            if found is not None:
                self.experiments[name] = found.experiment_id
                if names.MLFLOW_EXPERIMENT_KIND_TAG not in found.tags:
                    self.client.set_experiment_tag(found.experiment_id, names.MLFLOW_EXPERIMENT_KIND_TAG,
                                                   names.EXPERIMENT_KIND_MODEL_TRAINING)
            else:
                self.experiments[name] = self.client.create_experiment(
                    name, artifact_location=artifact_root_for(self.uri, name),
                    tags={names.MLFLOW_EXPERIMENT_KIND_TAG: names.EXPERIMENT_KIND_MODEL_TRAINING},
                )
        return self.experiments[name]

    def find_run(self, record_id: str, experiment: str | None) -> str | None:
        """The MLflow run carrying ``record_id`` (outbox memory first, then a tag search)."""
        known = self.runs.get(record_id)
        if known:
            return known
        if experiment is None:
            start = self.outbox.start_op(record_id)
            experiment = start.payload.get("experiment") if start else None
        if experiment is None:
            return None
        found = self.client.search_runs(
            [self.experiment_id(experiment)],
            filter_string=f"tags.`{names.TAG_RECORD_ID}` = '{record_id}'",
            max_results=1,
        )
        if found:
            self.runs[record_id] = found[0].info.run_id
            return found[0].info.run_id
        return None

    def resolve(self, handle: str | None, experiment: str | None) -> str | None:
        """A record id or an MLflow run id -> the MLflow run id (None when the record has no run yet)."""
        if not handle:
            return None
        return self.find_run(handle, experiment) if is_record_id(handle) else handle

    def apply(self, op: Op) -> str | None:
        handler = {OP_START: self._start, OP_LOG: self._log, OP_END: self._end, OP_REGISTER: self._register}[op.kind]
        return handler(op)

    def _start(self, op: Op) -> str:
        p = op.payload
        existing = self.find_run(op.record_id, p["experiment"])
        if existing:
            return existing
        tags = {**p.get("tags", {}), names.TAG_RECORD_ID: op.record_id}
        parent_run = self.resolve(p.get("parent"), p["experiment"])
        if p.get("parent") and parent_run is None:
            log.warning("parent %s of %s is not in MLflow; logging the run without a parent", p["parent"], op.record_id)
            self.outbox.add_dead_letter(op, f"parent {p['parent']} is not in MLflow; the run was logged without it")
        if parent_run:
            tags[names.MLFLOW_PARENT_RUN_ID_TAG] = parent_run
        run = self.client.create_run(
            self.experiment_id(p["experiment"]), start_time=op.created_ms, tags=tags, run_name=p.get("name")
        )
        run_id = run.info.run_id
        self._log_values(run_id, p)
        self.runs[op.record_id] = run_id
        return run_id

    def _log_values(self, run_id: str, p: dict[str, Any]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        params = [Param(k, str(v)[:6000]) for k, v in p.get("params", {}).items()]
        tags = [RunTag(k, str(v)[:7000]) for k, v in p.get("tags", {}).items()]
        metrics = [Metric(k, float(v), int(ts), int(step)) for k, v, step, ts in p.get("metrics", [])]
        if not (params or tags or metrics):
            return
        for i in range(0, max(len(metrics), 1), 900):  # MLflow caps one batch at 1000 entries
            self.client.log_batch(
                run_id,
                metrics=metrics[i : i + 900],
                params=params if i == 0 else [],
                tags=tags if i == 0 else [],
            )

    def _log(self, op: Op) -> str | None:
        p = op.payload
        run_id = self.find_run(op.record_id, p.get("experiment"))
        if run_id is None:
            raise BackendError(f"no MLflow run carries record {op.record_id} (its start was refused or never buffered)")
        self._log_values(run_id, p)
        for local, artifact_path in p.get("artifacts", []):
            if Path(local).exists():
                self.client.log_artifact(run_id, local, artifact_path or None)
            else:
                log.warning("artifact %s vanished before it was synced; kept as a dead letter", local)
                self.outbox.add_dead_letter(op, f"artifact {local} vanished before it was synced")
        table = p.get("table")
        if table:
            existing = {a.path for a in self.client.list_artifacts(run_id)}
            if table["artifact_file"] not in existing:  # log_table appends: never twice
                self.client.log_table(run_id, table["data"], table["artifact_file"])
        if p.get("model") or p.get("logged_model"):
            with tempfile.TemporaryDirectory(prefix="tightfit-pyfunc-") as tmp:
                pyfunc = _LazyPyfunc(p.get("model"), Path(tmp) / "model")
                # MLflow 3 keeps a model once, in its LoggedModel (linked to the run as an output): a second
                # copy under the run's artifacts would double the disk a sweep takes. Only a record without
                # a LoggedModel (an outbox written before them) puts the model in its run.
                if p.get("model") and not p.get("logged_model"):
                    self._log_model(run_id, p["model"], pyfunc, op)
                elif p.get("model"):
                    self._variant_dir_present(run_id, p["model"], op)
                if p.get("logged_model"):
                    self._log_logged_model(op, run_id, p, pyfunc)
        return run_id

    def _variant_dir_present(self, run_id: str, model: dict[str, Any], op: Op) -> bool:
        """Whether the variant dir is still there; if not, the op goes to the dead letters and the run says so."""
        variant_dir = Path(model["variant_dir"])
        if variant_dir.exists():
            return True
        log.warning("variant dir %s vanished before its model was synced; the run has no model", variant_dir)
        self.outbox.add_dead_letter(op, f"variant dir {variant_dir} vanished before its model was synced")
        self.client.set_tag(run_id, names.TAG_VARIANT_DIR, f"missing: {variant_dir}")
        return False

    def _log_model(self, run_id: str, model: dict[str, Any], pyfunc: _LazyPyfunc, op: Op) -> None:
        path = model.get("artifact_path", names.ARTIFACT_MODEL)
        if not self._variant_dir_present(run_id, model, op):
            return
        if any(a.path == path for a in self.client.list_artifacts(run_id)):
            return
        local = pyfunc.path()
        if local is not None:
            self.client.log_artifacts(run_id, str(local), path)

    def _log_logged_model(self, op: Op, run_id: str, p: dict[str, Any], pyfunc: _LazyPyfunc) -> None:
        """The variant's MLflow 3 LoggedModel (``tightfit.track.models``), after its run's own records."""
        from tightfit.track.models import sync_logged_model

        spec = p["logged_model"]
        experiment_id = self.experiment_id(p["experiment"])
        model_id = sync_logged_model(self.client, experiment_id, run_id, op.record_id, spec, p.get("metrics", []),
                                     pyfunc.path() if spec.get("status") != "FAILED" else None)
        log.info("variant %s is LoggedModel %s", spec["name"], model_id)

    def _end(self, op: Op) -> str | None:
        run_id = self.find_run(op.record_id, op.payload.get("experiment"))
        if run_id is None:
            raise BackendError(f"no MLflow run carries record {op.record_id}; it cannot be ended")
        self.client.set_terminated(run_id, op.payload.get("status", "FINISHED"), end_time=op.created_ms)
        return run_id

    def _register(self, op: Op) -> str | None:
        from tightfit.track.flavor import register_run_model

        p = op.payload
        run_id = self.resolve(p["run"], p.get("experiment"))
        if run_id is None:
            raise BackendError(f"cannot register {p['model_name']}: run {p['run']} is not in MLflow")
        version = register_run_model(self.client, run_id, p["model_name"], p.get("aliases", []), p.get("artifact_path"))
        log.info("registered %s version %s (aliases: %s)", p["model_name"], version, ", ".join(p.get("aliases", [])))
        return run_id


class _LazyPyfunc:
    """The variant's pyfunc model, saved on first use (for its LoggedModel, or its run's ``model/``)."""

    def __init__(self, model: dict[str, Any] | None, out: Path) -> None:
        self.variant_dir = Path(model["variant_dir"]) if model else None
        self.out = out
        self._saved: Path | None = None

    def path(self) -> Path | None:
        """The saved pyfunc directory; None when there is no variant dir (not logged, or vanished)."""
        if self._saved is None and self.variant_dir is not None and self.variant_dir.exists():
            from tightfit.track.flavor import save_pyfunc

            self._saved = save_pyfunc(self.variant_dir, self.out)
        return self._saved


def _drop_stashed(outbox: Outbox, op: Op) -> None:
    """Delete the outbox's own copies of artifacts once they reached MLflow."""
    for local, _ in op.payload.get("artifacts", []):
        path = Path(local)
        if outbox.artifact_dir in path.parents and path.exists():
            path.unlink()


def sync_outbox(outbox: Outbox, uri: str) -> SyncReport:
    """Apply every pending op in order; stop at the first backend failure. Never raises for an outage."""
    report = SyncReport()
    with outbox.locked():
        pending = outbox.pending()
        report.pending = len(pending)
        if not pending:
            return report
        ok, why = server_reachable(uri)
        if not ok:
            report.error = why
            return report
        errors = sync_errors()
        with _fail_fast_http():
            try:
                syncer = _Syncer(outbox, uri)
            except errors as exc:
                report.error = f"{type(exc).__name__}: {exc}"
                return report
            for op in pending:
                try:
                    run_id = syncer.apply(op)
                except errors as exc:
                    if not _rejected(exc):
                        report.error = f"{type(exc).__name__}: {str(exc)[:500]}"
                        break
                    # The server answered and refused this op: retrying cannot help, so it must not block the
                    # rest; it is kept, with the reason, in the dead-letter file (never dropped silently).
                    reason = f"{type(exc).__name__}: {str(exc)[:1000]}"
                    log.warning("MLflow refused a %s op for %s (%s); kept in %s", op.kind, op.record_id, reason[:300],
                                outbox.dead_letter_path)
                    outbox.add_dead_letter(op, reason)
                    outbox.mark_done(op, None, rejected=reason[:300])
                    report.rejected += 1
                    report.pending -= 1
                    continue
                outbox.mark_done(op, run_id)
                _drop_stashed(outbox, op)
                report.applied += 1
                report.pending -= 1
                if run_id:
                    report.runs[op.record_id] = run_id
        if report.pending == 0:
            outbox.compact()
    return report
