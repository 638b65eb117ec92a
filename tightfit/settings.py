"""Where tightfit keeps things, read one way everywhere: the run home, the tracking URI, caches, the image.

Every value comes from an environment variable when it is set, else from a default that keeps a run
self-contained under one directory (``./tightfit-runs``). Tasks of a pipeline run inherit the environment,
so a KFP task, a Ray worker and the CLI all resolve the same paths.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Final

ENV_HOME: Final = "TIGHTFIT_HOME"
"""Root of local runs: MLflow SQLite store, artifacts, outbox, pipeline root, logs."""
ENV_CACHE: Final = "TIGHTFIT_CACHE"
"""Derived assets (the dequantized SmolLM2, converted CRD schemas)."""
ENV_TRACKING_URI: Final = "MLFLOW_TRACKING_URI"
ENV_EXPERIMENT: Final = "TIGHTFIT_EXPERIMENT"
"""The default experiment name when a command gives none."""
ENV_LOOP_THREADS: Final = "TIGHTFIT_LOOP_THREADS"
"""Threads of each loop-iteration task when kfp.local runs several at once on this machine (set by
``tightfit run``: the cores over the loop's parallelism); unset, a task uses every core it may."""
DEFAULT_HOME_DIR: Final = "tightfit-runs"
LOCAL_DB_FILE: Final = "mlflow.db"
LOCAL_ARTIFACT_DIR: Final = "mlartifacts"
"""Artifacts of a local SQLite store live beside it, never in ./mlruns of the current directory."""

DEFAULT_IMAGE: Final = "ghcr.io/tightfit/tightfit:0.1.0-cpu"
"""The one container image of the components, Ray pods and the chart (the Dockerfile builds it)."""
MODEL_THREAD_PREFIX: Final = "tightfit-model"
"""Name prefix of the one thread that loads a variant and runs its forwards, in a Serve replica and in the
profiler's fresh process alike (that thread's malloc arena is part of what a replica's memory is)."""
MEMORY_ROUNDS: Final = 3
"""Fresh processes a variant's memory figures are the medians of, where a serving plan books from them (a full
profile, ``tightfit serve --measure``, calibration). One fresh process is one draw: a torchao int8 variant's
load peak falls in one of two modes about 60 MiB apart (int8-dynamic MiniLM: 516-531 or 575-610 MiB,
2026-11-28)."""


def home_dir() -> Path:
    """``$TIGHTFIT_HOME`` or ``./tightfit-runs`` (absolute): the local store, artifacts and outbox live here."""
    return Path(os.environ.get(ENV_HOME, DEFAULT_HOME_DIR)).expanduser().resolve()


def local_tracking_uri(root: Path | None = None) -> str:
    """The SQLite store under ``root`` (default: the run home)."""
    return f"sqlite:///{(root or home_dir()) / LOCAL_DB_FILE}"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """Flag > ``$MLFLOW_TRACKING_URI`` > SQLite under the run home (``./tightfit-runs/mlflow.db``)."""
    return uri or os.environ.get(ENV_TRACKING_URI) or local_tracking_uri()


def cache_dir(*parts: str) -> Path:
    """``$TIGHTFIT_CACHE`` or ``~/.cache/tightfit`` (joined with ``parts``), created on first use."""
    root = Path(os.environ.get(ENV_CACHE, Path.home() / ".cache" / "tightfit")).joinpath(*parts)
    root.mkdir(parents=True, exist_ok=True)
    return root


ENV_MAX_REQUEST_BYTES: Final = "TIGHTFIT_MAX_REQUEST_BYTES"
ENV_BODY_TIMEOUT_S: Final = "TIGHTFIT_BODY_TIMEOUT_S"
"""Read by Serve's HTTP proxy (``tightfit.serve.proxy``): the largest request body it lets through, and how
long an upload may take; a plan's ``proxy_env()`` gives both."""


def proxy_env(max_request_bytes: int, body_timeout_s: float) -> dict[str, str]:
    """The environment that sets the proxy middleware's body cap and upload time (one spelling for the
    local Ray and the RayService pods; the chart's ``_helpers.tpl`` writes the same, and
    ``tests/test_helm.py`` compares the chart's objects with the Python ones)."""
    return {ENV_MAX_REQUEST_BYTES: str(int(max_request_bytes)), ENV_BODY_TIMEOUT_S: f"{float(body_timeout_s):g}"}

SERVE_RAY_ENV: Final = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                        "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "tightfit.serve.proxy:middlewares"}
"""Environment of the Ray processes that run tightfit's Serve app. The proxy callback puts tightfit's
middleware into Serve's HTTP proxy (``tightfit.serve.proxy``: the body cap before any replica, a 503 for a
request whose replica was lost), so the app is one deployment. And Ray Serve's throughput-optimized mode
(Ray >= 2.55, Ray's "high throughput" guide): gRPC between deployments, user code and the router on each
replica's main event loop, request logs buffered instead of a stderr line each, the garbage collector frozen
after start-up. A lean variant computes a request in about a millisecond, so on a small node Serve's own
per-request work is most of the CPU. Measured side by
side (``benchmarks/results/serve_mode.json``, 2-core AMD): with the ingress deployment (2026-11-28) the app
sustained 90 rps within a 500 ms p99 in this mode against 60 in Ray's default one, and took 24 ms of CPU per
request at 40 rps against 28; as one deployment it takes 18.7 ms against 20.4 (2026-11-29, batch 32) and
17.7 against 18.6 (2026-11-30, batch 48). It must be in the environment of Serve's controller,
proxy and replicas: ``use_serve_ray_env`` puts it there before tightfit starts a local Ray, and the
RayService pods carry it (``tightfit.kube.manifests``, the chart). A value already set wins:
``RAY_SERVE_THROUGHPUT_OPTIMIZED=0`` keeps Ray's default mode."""


def use_serve_ray_env() -> dict[str, str]:
    """Put ``SERVE_RAY_ENV`` into this process's environment where unset (before starting the Ray that will
    serve: its processes inherit it); return the values in effect."""
    for key, value in SERVE_RAY_ENV.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in SERVE_RAY_ENV}


LOCAL_RAY_ENV: Final = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray's own switch between a cluster node (services on the machine's address) and a local-only Ray (every
service on the loopback address); Ray reads it when it picks the node address."""


def start_local_ray(
    num_cpus: int | None = None, *, dashboard_port: int | None = None, for_serving: bool = False, **options: object
) -> None:
    """Start a Ray for this machine only: GCS, raylet, workers, the object manager and the agents all listen
    on 127.0.0.1 (Ray 2.60 binds its servers to the node address, which a local-only Ray sets to loopback).
    No dashboard or Jobs API unless ``dashboard_port`` is given (then on 127.0.0.1 too: Ray's state API
    reads through it). ``for_serving``: its processes get ``SERVE_RAY_ENV``. Join a cluster with
    ``ray.init(address=...)`` instead."""
    import ray
    from ray._private import ray_constants  # read by ray._private.services.get_node_ip_address at init

    if for_serving:
        use_serve_ray_env()

    os.environ[LOCAL_RAY_ENV] = "0"  # for processes Ray starts from here
    ray_constants.ENABLE_RAY_CLUSTER = False  # this process imported Ray already
    dashboard: dict[str, object] = {"include_dashboard": False}
    if dashboard_port is not None:
        dashboard = {"include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": dashboard_port}
    ray.init(num_cpus=num_cpus, **dashboard, **options)  # type: ignore[arg-type]


@contextlib.contextmanager
def environ(values: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set for the block (processes started in it inherit them), then each
    name restored to what it was, or removed if it was unset."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
