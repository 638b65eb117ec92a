"""The tracking client: where records go (a tracking URI, an experiment, the local outbox in front of them).

Every record is appended to the outbox first and then synced, so an MLflow outage never loses work: the
compute goes on with one warning, and the records arrive on the next sync after the server returns.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

from tightfit import __version__, names, settings
from tightfit.track.outbox import Op, Outbox
from tightfit.track.sync import SyncReport, sync_outbox

log = logging.getLogger("tightfit.track")


class TrackingUnavailableWarning(UserWarning):
    """The tracking server did not answer; records stay in the local outbox until it does."""


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
        self.uri = settings.resolve_tracking_uri(tracking_uri)
        self.experiment = experiment or os.environ.get(settings.ENV_EXPERIMENT) or names.DEFAULT_EXPERIMENT
        self.outbox = Outbox(outbox_dir or settings.home_dir())
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
