"""The two remote ways to launch a fine-tuning run: the Ray Jobs API and a KubeRay ``RayJob``.

Both run the same entrypoint (``python -m tightfit.ray_jobs.finetune``) with the config as JSON in the
``TIGHTFIT_FINETUNE_CONFIG`` environment variable, so all three launch paths share one code path.
Ray 2.60 clusters started with ``ray start --head`` require a token: it is read from ``token=`` (code), a
token file (``--ray-token-file``), ``$RAY_AUTH_TOKEN``, ``$RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token`` and
sent as a Bearer header; never from a command-line value.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tightfit import kube
from tightfit.errors import BackendError, ConfigError
from tightfit.train.config import CONFIG_ENV, FinetuneConfig
from tightfit.train.support import unique_run_name
from tightfit.units import parse_bytes

ENTRYPOINT_MODULE = "tightfit.ray_jobs.finetune"
PASSTHROUGH_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "RAY_USAGE_STATS_ENABLED", "MLFLOW_DISABLE_TELEMETRY",
                   "TOKENIZERS_PARALLELISM", "TIGHTFIT_CACHE", "TIGHTFIT_HOME", "MLFLOW_TRACKING_URI")


@dataclass
class JobOutcome:
    """A submitted job's id, final status and the tail of its logs."""

    job_id: str
    status: str
    logs: str


def entrypoint_command(python: str | None = None) -> str:
    """The job's command. ``python`` defaults to this interpreter: a job's bare ``python`` resolves through
    the head's PATH, which may not be the venv tightfit lives in."""
    return f"{python or sys.executable} -m {ENTRYPOINT_MODULE}"


def read_token_file(path: str | Path) -> str:
    """A Ray auth token from a file (never from a command-line argument, which other users can read in
    ``ps``); a missing, unreadable or empty file is one ``ConfigError`` line."""
    file = Path(path).expanduser()
    try:
        token = file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the Ray token file {file}: {getattr(exc, 'strerror', None) or exc}") from None
    if not token or len(token.split()) != 1:
        raise ConfigError(f"the Ray token file {file} must hold one token on one line")
    return token


def resolve_auth_token(token: str | None = None, token_file: str | Path | None = None) -> str | None:
    """The Ray auth token: given by code, a token file, ``$RAY_AUTH_TOKEN``, ``$RAY_AUTH_TOKEN_PATH`` or
    ``~/.ray/auth_token`` (None if none)."""
    if token:
        return token
    if token_file is not None:
        return read_token_file(token_file)
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    for candidate in (os.environ.get("RAY_AUTH_TOKEN_PATH"), str(Path.home() / ".ray" / "auth_token")):
        if candidate and Path(candidate).is_file():
            return Path(candidate).read_text().strip()
    return None


def job_runtime_env(config: FinetuneConfig, working_dir: str | None = None) -> dict[str, Any]:
    """runtime_env of the job: the config as JSON plus the quiet/offline settings of this shell."""
    env = {key: os.environ[key] for key in PASSTHROUGH_ENV if key in os.environ}
    env[CONFIG_ENV] = config.to_json()
    runtime_env: dict[str, Any] = {"env_vars": env}
    if working_dir:
        runtime_env["working_dir"] = working_dir
    return runtime_env


def submit_finetune(
    config: FinetuneConfig,
    address: str,
    *,
    token: str | None = None,
    token_file: str | Path | None = None,
    python: str | None = None,
    working_dir: str | None = None,
    wait: bool = True,
    timeout_s: float = 1800.0,
    poll_s: float = 2.0,
) -> JobOutcome:
    """Submit the fine-tuning entrypoint to a running Ray cluster through the Jobs API (``http://head:8265``)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    auth = resolve_auth_token(token, token_file)
    headers = {"Authorization": f"Bearer {auth}"} if auth else None
    try:
        client = JobSubmissionClient(address, headers=headers)
        job_id = client.submit_job(
            entrypoint=entrypoint_command(python), runtime_env=job_runtime_env(config, working_dir)
        )
    except (ConnectionError, RuntimeError) as exc:
        hint = "" if auth else " (Ray 2.60 heads require a token: set RAY_AUTH_TOKEN or pass --ray-token-file)"
        raise BackendError(f"cannot submit to the Ray Jobs API at {address}: {exc}{hint}") from None
    if not wait:
        return JobOutcome(job_id, str(client.get_job_status(job_id)), "")
    deadline = time.monotonic() + timeout_s
    terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    status = client.get_job_status(job_id)
    while status not in terminal:
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            raise BackendError(f"job {job_id} did not finish within {timeout_s:.0f} s; it was stopped")
        time.sleep(poll_s)
        status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    return JobOutcome(job_id, str(status.value if hasattr(status, "value") else status), logs[-20000:])


def rayjob_for_finetune(
    config: FinetuneConfig, *, name: str | None = None, namespace: str = "default", image: str | None = None,
    **manifest_options: Any,
) -> dict[str, Any]:
    """The KubeRay ``RayJob`` manifest of a fine-tuning run, built by ``tightfit.kube.manifests.rayjob_manifest``.

    The cluster gets one worker pod per Ray Train worker, sized from ``cpus_per_worker`` and the memory
    budget; the config travels in the job's runtime_env like a Jobs API submission.
    """

    run_name = config.run_name or unique_run_name()
    config = config.model_copy(update={"run_name": run_name})
    workers: dict[str, Any] = {
        "replicas": config.workers,
        "min_replicas": config.workers,
        "max_replicas": config.workers,
        "cpu": str(config.cpus_per_worker),
    }
    if config.memory_budget is not None:
        budget = parse_bytes(config.memory_budget, field="memory_budget")
        workers["memory"] = f"{math.ceil(budget / 2**20)}Mi"
    if config.use_gpu:
        workers["gpu"] = 1
    return dict(
        kube.rayjob_manifest(
            name or run_name,
            namespace=namespace,
            image=image or kube.DEFAULT_IMAGE,
            entrypoint=entrypoint_command("python"),
            workers=workers,
            runtime_env=job_runtime_env(config),
            **manifest_options,
        )
    )


def launch_kuberay(
    config: FinetuneConfig, namespace: str, *, api_client: Any = None, image: str | None = None,
    **manifest_options: Any,
) -> dict[str, Any]:
    """Create the RayJob custom resource with the ``kubernetes`` client; returns the created object."""

    if not namespace:
        raise ConfigError("a KubeRay launch needs a namespace (--kuberay-namespace)")
    manifest = rayjob_for_finetune(config, namespace=namespace, image=image, **manifest_options)
    return dict(kube.create_rayjob(manifest, namespace, api_client=api_client))
