"""MLflow 3's model view: every variant is also a LoggedModel.

A LoggedModel per variant (name = the variant, params = its spec, metrics = its footprint, tags = method,
chain, runtime, status, record id), linked to the variant's run (``source_run_id`` and the run's outputs)
and to the dataset its quality was measured on (metrics carry the dataset's name and digest; the run logs
the dataset as an ``eval`` input). The experiment's Models tab and ``mlflow.search_logged_models`` then
compare variants by footprint, ``models:/<model_id>`` loads the variant through the pyfunc flavor, and the
registered champion's version points at its LoggedModel. The run layout stays as it was (nested runs with
the same params, metrics and a ``model/`` artifact) for clients older than MLflow 3.

Written by the outbox sync (``tightfit.track.sync``), never directly, so an outage loses nothing and a
replay finds the model by its record-id tag instead of creating it twice.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tightfit import names, settings

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("tightfit.track")

STATUS_READY = "READY"
STATUS_FAILED = "FAILED"


def frame_digest(frame: pd.DataFrame) -> str:
    """A short content digest of a data frame (rows and columns, in order): the dataset version MLflow shows."""
    import pandas as pd

    rows = pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()
    return hashlib.sha256(rows + "\x1f".join(map(str, frame.columns)).encode()).hexdigest()[:16]


HEADLINE_METRICS: tuple[str, ...] = (
    names.ACCURACY, names.PERPLEXITY, names.PEAK_RSS_SERVE_BYTES, names.DISK_BYTES, names.LATENCY_MS_B1_P95,
    names.LATENCY_MS_B32_P95, names.COMPRESSION_RATIO, names.SPEEDUP_B32, names.PARAMS_TOTAL,
)
"""Logged first, so the Models tab (which orders metric columns as logged) leads with them."""


def _headline_rank(metric: str) -> int:
    return HEADLINE_METRICS.index(metric) if metric in HEADLINE_METRICS else len(HEADLINE_METRICS)


def find_logged_model(client: Any, experiment_id: str, record_id: str) -> Any | None:
    """The LoggedModel tagged with ``record_id`` in the experiment (None when there is none yet)."""
    found = client.search_logged_models(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`{names.TAG_RECORD_ID}` = '{record_id}'",
        max_results=1,
    )
    return found[0] if found else None


def _dataset_entity(dataset: dict[str, Any]) -> Any:
    import json

    from mlflow.entities import Dataset

    return Dataset(
        name=str(dataset["name"]),
        digest=str(dataset["digest"]),
        source_type="local",
        source=json.dumps({"uri": str(dataset.get("source") or dataset["name"])}),
        profile=json.dumps({"num_rows": dataset["rows"]}) if dataset.get("rows") else None,
    )


def sync_logged_model(
    client: Any, experiment_id: str, run_id: str, record_id: str, spec: dict[str, Any],
    metrics: list[list[Any]], pyfunc_dir: Path | None,
) -> str:
    """Create (or find) the variant's LoggedModel and fill it; returns its model id. Idempotent.

    ``spec``: ``name``, ``params``, ``tags``, ``status`` and optionally ``dataset`` (name, digest, rows,
    source). ``metrics``: the outbox's ``[key, value, step, timestamp]`` rows. ``pyfunc_dir``: the saved
    pyfunc model to store as the LoggedModel's artifacts (None for a failed variant).
    """
    from mlflow.entities import DatasetInput, InputTag, LoggedModelOutput, Metric

    model = find_logged_model(client, experiment_id, record_id)
    if model is not None and str(model.status) == STATUS_READY:
        return str(model.model_id)
    if model is None:
        tags = {**{k: str(v) for k, v in spec.get("tags", {}).items()}, names.TAG_RECORD_ID: record_id}
        model = client.create_logged_model(
            experiment_id=experiment_id,
            name=spec["name"],
            source_run_id=run_id,
            tags=tags,
            params={k: str(v)[:6000] for k, v in spec.get("params", {}).items()},
            model_type=names.LOGGED_MODEL_TYPE,
        )
    model_id = str(model.model_id)
    dataset = spec.get("dataset")
    if dataset:
        client.log_inputs(run_id, datasets=[DatasetInput(_dataset_entity(dataset),
                                                         tags=[InputTag("mlflow.data.context", "eval")])])
    rows = [
        Metric(str(k), float(v), int(ts), int(step), model_id=model_id,
               dataset_name=dataset["name"] if dataset else None, dataset_digest=dataset["digest"] if dataset else None)
        for k, v, step, ts in sorted(metrics, key=lambda row: _headline_rank(str(row[0])))
    ]
    for i in range(0, len(rows), 900):
        client.log_batch(run_id, metrics=rows[i : i + 900])
    client.log_outputs(run_id, [LoggedModelOutput(model_id, step=0)])
    client.set_tag(run_id, names.TAG_MODEL_ID, model_id)
    if pyfunc_dir is not None:
        client.log_model_artifacts(model_id, str(pyfunc_dir))
    client.finalize_logged_model(model_id, spec.get("status", STATUS_READY))
    return model_id


def run_logged_model(client: Any, run_id: str) -> str | None:
    """The LoggedModel id of a variant run (its ``tightfit.model_id`` tag), or None for runs logged before
    LoggedModels existed."""
    run = client.get_run(run_id)
    return run.data.tags.get(names.TAG_MODEL_ID) or None


def search_variant_models(
    experiment: str = names.DEFAULT_EXPERIMENT,
    *,
    tracking_uri: str | None = None,
    filter_string: str | None = None,
    order_by: list[dict[str, Any]] | None = None,
) -> list[Any]:
    """The experiment's variant LoggedModels (``mlflow.search_logged_models``), e.g. ordered by a footprint
    metric: ``order_by=[{"field_name": "metrics.disk_bytes", "ascending": True}]``."""
    import mlflow

    uri = settings.resolve_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    where = f"tags.`{names.TAG_ROLE}` = '{names.ROLE_VARIANT}'"
    if filter_string:
        where += f" AND {filter_string}"
    out: list[Any] = []
    token = None
    while True:
        page = client.search_logged_models([exp.experiment_id], filter_string=where, order_by=order_by,
                                           page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out
