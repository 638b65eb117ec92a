"""Memory-aware serving, the library front door: records -> plan -> a running Ray Serve app.

- `load_records(...)`: footprint records from a local footprint file, MLflow, or one variant given directly.
- `make_plan(...)`: the `ServePlan` for a per-replica memory budget (see ``tightfit.serve.plan``).
- `start_serving(plan, ...)`: run the plan's app on a local or remote Ray; returns the URL.
- `rayservice_for_plan(plan, ...)`: the KubeRay RayService manifest from the same plan.
The Serve application itself is ``tightfit.serve.app``; the memory model ``tightfit.memory.serving``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tightfit import settings
from tightfit.errors import BackendError, ConfigError
from tightfit.footprint import Footprint, load_footprints
from tightfit.kube.manifests import rayservice_manifest
from tightfit.memory.replica import footprint_for_source
from tightfit.memory.serving import ServingMemoryModel
from tightfit.progress import Reporter, polled
from tightfit.serve.plan import ServeOptions, plan_serving
from tightfit.serve.schema import APP_NAME, DEPLOYMENT_NAME, ServePlan
from tightfit.track.read import read_footprints
from tightfit.units import parse_bytes


def load_records(
    *,
    footprints: str | Path | None = None,
    from_mlflow: str | None = None,
    variant: str | None = None,
    tracking_uri: str | None = None,
) -> tuple[list[Footprint], Path | None]:
    """Footprint records and the directory variant names resolve against (the footprint file's folder)."""
    if footprints is not None:
        path = Path(footprints)
        if not path.exists():
            raise ConfigError(f"footprint file {path} does not exist; write one with `tightfit profile`")
        try:
            return load_footprints(path), path.parent
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"{path} is not a footprint file (a JSON list of records): {exc}") from None
    if from_mlflow is not None:
        return _records_from_mlflow(from_mlflow, tracking_uri), None
    if variant is not None:
        return [footprint_for_source(variant)], None
    raise ConfigError("say what to serve: --variant NAME_OR_DIR, --footprints FILE or --from-mlflow EXPERIMENT")


def _records_from_mlflow(experiment: str, tracking_uri: str | None) -> list[Footprint]:
    """The footprint records of the newest pipeline run in an MLflow experiment."""
    records = read_footprints(experiment, tracking_uri=tracking_uri)
    if not records:
        raise ConfigError(f"MLflow experiment {experiment!r} holds no footprint records")
    return records


def make_plan(
    budget: str | int,
    *,
    variant: str | None = None,
    footprints: str | Path | None = None,
    from_mlflow: str | None = None,
    tracking_uri: str | None = None,
    calibration: str | Path | None = None,
    **options: Any,
) -> ServePlan:
    """Parse the budget, gather records and plan (``options`` go to `plan_serving`)."""

    budget_bytes = parse_bytes(budget, field="memory budget")
    records, base_dir = load_records(
        footprints=footprints, from_mlflow=from_mlflow, variant=None if (footprints or from_mlflow) else variant,
        tracking_uri=tracking_uri,
    )
    model = ServingMemoryModel.load(calibration) if calibration else ServingMemoryModel()
    chosen = variant if (footprints or from_mlflow) else None
    return plan_serving(records, budget_bytes, ServeOptions(**options), model=model, variant=chosen, base_dir=base_dir)


def start_serving(
    plan: ServePlan,
    *,
    address: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    num_cpus: int | None = None,
    blocking: bool = False,
    progress: Reporter | None = None,
) -> str:
    """Deploy the plan's app on Ray (a local one the call starts, or ``address``); return the base URL.

    ``progress`` follows Ray starting and the replicas coming up (how many run, how many still start)."""
    import ray
    from ray import serve

    from tightfit.serve.app import build_app

    reporter = progress or Reporter()
    if not ray.is_initialized():
        with reporter.step("ray", "start Ray" if not address else f"join Ray at {address}"):
            try:
                if address:
                    ray.init(address=address)
                else:  # the proxy reads the plan's body cap at start (tightfit.serve.proxy)
                    os.environ.update(plan.proxy_env())
                    settings.start_local_ray(num_cpus=num_cpus, for_serving=True)  # settings.SERVE_RAY_ENV
            except ConnectionError as exc:
                raise BackendError(f"cannot reach the Ray cluster at {address}: {exc}") from None
    with reporter.step("replicas", f"start {plan.num_replicas} replica(s)", total=plan.num_replicas,
                       unit="running"), _watch_replicas(reporter, "replicas"):
        serve.start(http_options=plan.http_options(host=host, port=port))
        serve.run(build_app(plan), name=APP_NAME, route_prefix="/", blocking=False)
    while blocking:  # as serve.run(blocking=True): keep the driver (and the app) alive
        time.sleep(10)
    return f"http://{host}:{port}"


def replica_counts() -> dict[str, int]:
    """Model replicas of the tightfit app by state (``RUNNING``, ``STARTING``, ...)."""
    from ray import serve

    app = serve.status().applications.get(APP_NAME)
    counts: dict[str, int] = {}
    model = app.deployments.get(DEPLOYMENT_NAME) if app is not None else None
    for deployment in ([model] if model is not None else []):
        for state, n in deployment.replica_states.items():
            counts[str(state)] = counts.get(str(state), 0) + int(n)
    return counts


@contextlib.contextmanager
def _watch_replicas(reporter: Reporter, key: str, every_s: float = 1.0) -> Iterator[None]:
    """Report the replica states while the block deploys (a quiet reporter costs nothing)."""
    if type(reporter) is Reporter:
        yield
        return
    last = [""]

    def report() -> None:
        counts = replica_counts()
        detail = ", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items()))
        if detail and detail != last[0]:
            last[0] = detail
            reporter.update(key, completed=counts.get("RUNNING", 0), detail=detail, milestone=True)

    with polled(report, every_s, "tightfit-watch-replicas"):  # Serve's controller may still be starting
        yield


def rayservice_for_plan(
    plan: ServePlan, *, name: str = "tightfit-serve", namespace: str = "default", **options: Any
) -> dict[str, Any]:
    """The KubeRay RayService manifest whose serveConfigV2 is ``plan.to_serve_config()``."""

    return rayservice_manifest(name, namespace=namespace, serve_config=plan.to_serve_config(), **options)
