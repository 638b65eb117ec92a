"""Read tightfit's runs back from MLflow: footprint records by metric name, parent runs, variant runs.

Serving (``--from-mlflow``), ``tightfit compare`` and the pipeline's ``select`` read the same records
the profiler logged; nothing here writes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from tightfit import names, settings
from tightfit.errors import BackendError, ConfigError
from tightfit.footprint import Footprint
from tightfit.track.backend import server_reachable, sync_errors

_INT_FIELDS = frozenset(
    f.name for f in dataclasses.fields(Footprint) if str(f.type).startswith("int")
)
_BOOL_FIELDS = frozenset(f.name for f in dataclasses.fields(Footprint) if str(f.type) == "bool")


def footprint_from_run(run: Any) -> Footprint:
    """Rebuild a Footprint from a variant run: each metric by its name, labels from tags and params."""
    metrics: dict[str, float] = run.data.metrics
    tags: dict[str, str] = run.data.tags
    params: dict[str, str] = run.data.params
    values: dict[str, Any] = {}
    for metric in names.FOOTPRINT_METRICS:
        if metric not in metrics:
            continue
        value = metrics[metric]
        if metric in _INT_FIELDS:
            values[metric] = round(value)
        elif metric in _BOOL_FIELDS:
            values[metric] = bool(value)
        else:
            values[metric] = value
    extra: dict[str, Any] = {}
    if tags.get(names.TAG_FOOTPRINT_EXTRA):
        try:
            extra = json.loads(tags[names.TAG_FOOTPRINT_EXTRA])
        except json.JSONDecodeError:
            extra = {}
    extra["mlflow_run_id"] = run.info.run_id
    if tags.get(names.TAG_VARIANT_DIR):
        extra["variant_dir"] = tags[names.TAG_VARIANT_DIR]
    return Footprint(
        variant=tags.get(names.TAG_VARIANT) or params.get(names.PARAM_VARIANT) or run.info.run_name,
        chain=tags.get(names.TAG_CHAIN) or params.get(names.PARAM_CHAIN, "fp32"),
        kind=tags.get(names.TAG_KIND, "classifier"),
        status=tags.get(names.TAG_STATUS, names.STATUS_OK),
        error=tags.get(names.TAG_ERROR),
        device=tags.get(names.TAG_DEVICE, "cpu"),
        backend=tags.get(names.TAG_BACKEND, "eager"),
        runtime=tags.get(names.TAG_RUNTIME, names.RUNTIME_TORCH),
        noise=tags.get(names.TAG_NOISE),
        extra=extra,
        **values,
    )


def _client_and_experiment(experiment: str | None, tracking_uri: str | None) -> tuple[Any, str]:
    from mlflow import MlflowClient

    uri = settings.resolve_tracking_uri(tracking_uri)
    ok, why = server_reachable(uri)
    if not ok:
        raise BackendError(f"MLflow at {uri} is unreachable ({why}); start it or pass --tracking-uri")
    name = experiment or os.environ.get(settings.ENV_EXPERIMENT) or names.DEFAULT_EXPERIMENT
    client = MlflowClient(uri)
    try:
        found = client.get_experiment_by_name(name)
    except sync_errors() as exc:
        raise BackendError(f"MLflow at {uri} refused the request: {exc}") from None
    if found is None:
        raise ConfigError(f"no MLflow experiment {name!r} at {uri}; log a sweep first (tightfit run) or pass --experiment")
    return client, found.experiment_id


def find_parent_runs(experiment: str | None = None, *, tracking_uri: str | None = None) -> list[Any]:
    """Parent runs of an experiment, newest first."""
    client, exp_id = _client_and_experiment(experiment, tracking_uri)
    return list(
        client.search_runs(
            [exp_id],
            filter_string=f"tags.`{names.TAG_ROLE}` = '{names.ROLE_PARENT}'",
            order_by=["attributes.start_time DESC"],
            max_results=1000,
        )
    )


def _parent_run_id(client: Any, exp_id: str, handle: str) -> str:
    if not handle.startswith("tf-"):
        return handle
    found = client.search_runs([exp_id], filter_string=f"tags.`{names.TAG_RECORD_ID}` = '{handle}'", max_results=1)
    if not found:
        raise ConfigError(f"no run with record id {handle} in MLflow yet (still buffered? run `tightfit compare --sync`)")
    return str(found[0].info.run_id)


def read_footprints(
    experiment: str | None = None,
    parent_run_id: str | None = None,
    *,
    tracking_uri: str | None = None,
    include_failed: bool = True,
) -> list[Footprint]:
    """The footprint records of one pipeline run's variants (default: the newest parent run), in log order.

    ``parent_run_id`` is an MLflow run id or a tightfit record id. With no parent run in the experiment,
    every variant run of the experiment is read. ``extra["mlflow_run_id"]`` names each record's run and
    ``extra["variant_dir"]`` the variant directory it was logged from (when it was logged with one).
    """
    client, exp_id = _client_and_experiment(experiment, tracking_uri)
    query = f"tags.`{names.TAG_ROLE}` = '{names.ROLE_VARIANT}'"
    if parent_run_id is None:
        parents = client.search_runs(
            [exp_id],
            filter_string=f"tags.`{names.TAG_ROLE}` = '{names.ROLE_PARENT}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if parents:
            parent_run_id = parents[0].info.run_id
    if parent_run_id is not None:
        parent = _parent_run_id(client, exp_id, parent_run_id)
        query += f" and tags.`{names.MLFLOW_PARENT_RUN_ID_TAG}` = '{parent}'"
    runs = client.search_runs([exp_id], filter_string=query, order_by=["attributes.start_time ASC"], max_results=5000)
    records = [footprint_from_run(run) for run in runs]
    return [r for r in records if include_failed or r.ok]


def find_variant_run(
    variant: str, *, parent_run_id: str | None = None, experiment: str | None = None, tracking_uri: str | None = None
) -> str | None:
    """The MLflow run id of ``variant`` (under the given or newest parent), or None."""
    for record in read_footprints(experiment, parent_run_id, tracking_uri=tracking_uri):
        if record.variant == variant:
            return str(record.extra["mlflow_run_id"])
    return None
