"""MLflow tracking: the run layout, an outbox in front of MLflow, reading footprints back.

``client`` (the ``Tracker``), ``runs`` (parent, variant and training runs), ``outbox`` and ``sync`` (records
written locally first, replayed into MLflow), ``models`` (each variant as an MLflow 3 LoggedModel, written by
the sync), ``read`` (footprints back by metric name), ``flavor`` (the
pyfunc model around a variant dir; imports MLflow, so it is not re-exported) and ``server`` (a local
``mlflow server`` for the UI and tests).
"""

from tightfit.settings import resolve_tracking_uri
from tightfit.track.client import Tracker, TrackingUnavailableWarning, provenance_tags
from tightfit.track.models import frame_digest, search_variant_models
from tightfit.track.read import find_parent_runs, find_variant_run, footprint_from_run, read_footprints
from tightfit.track.runs import (
    end_run,
    footprint_table,
    log_metrics,
    log_parent_summary,
    log_variant,
    register_aliases,
    register_variant,
    start_parent,
    start_run,
    system_metrics,
    variant_record_id,
)
from tightfit.track.server import LocalMlflowServer

__all__ = [
    "LocalMlflowServer",
    "Tracker",
    "TrackingUnavailableWarning",
    "end_run",
    "find_parent_runs",
    "find_variant_run",
    "footprint_from_run",
    "footprint_table",
    "frame_digest",
    "log_metrics",
    "log_parent_summary",
    "log_variant",
    "provenance_tags",
    "read_footprints",
    "register_aliases",
    "register_variant",
    "resolve_tracking_uri",
    "search_variant_models",
    "start_parent",
    "start_run",
    "system_metrics",
    "variant_record_id",
]
