"""KubeRay objects (RayCluster, RayJob, RayService): the one definition.

The Python code (training helper's `--kuberay-namespace`, serving's RayService) builds its manifests here,
and the Helm chart's templates build the same objects from `values.yaml`; `manifests_from_values` reads a
chart values dict with these functions, and a test renders the chart and compares both, so the two cannot
drift apart. Sizes are Kubernetes quantities ("8Gi", "500m"); pods run non-root with a read-only root
filesystem (an emptyDir holds /tmp, where Ray writes its session files and logs).

Creating the objects in a cluster lives in `tightfit.kube.api`; validating them against the KubeRay CRD
schemas in `tightfit.kube.validate`; input checks in `tightfit.kube.checks` (all re-exported by `tightfit.kube`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import yaml

from tightfit.errors import ConfigError
from tightfit.kube.checks import (  # the quantity patterns and name limits are part of this API too
    _check_name,
    _check_size,
    _check_workers,
    _coerce,
)
from tightfit.settings import DEFAULT_IMAGE, SERVE_RAY_ENV
from tightfit.settings import proxy_env as settings_proxy_env

API_VERSION = "ray.io/v1"
RAY_VERSION = "2.60.0"
GPU_RESOURCE = "nvidia.com/gpu"
# UID/GID of the non-root user the Dockerfile creates.
RUN_AS_USER = 1000
HEAD_PORTS = (("gcs", 6379), ("dashboard", 8265), ("client", 10001), ("serve", 8000))


@dataclass(frozen=True)
class HeadSpec:
    """The Ray head pod's size. `ray_start_params` go to `ray start` (values are strings)."""

    cpu: str = "2"
    memory: str = "8Gi"
    gpu: int = 0
    ray_start_params: dict[str, str] = field(default_factory=lambda: {"dashboard-host": "0.0.0.0"})


@dataclass(frozen=True)
class WorkerGroupSpec:
    """One Ray worker group: per-pod size and autoscaling bounds (min <= replicas <= max)."""

    group_name: str = "workers"
    replicas: int = 1
    min_replicas: int = 0
    max_replicas: int = 4
    cpu: str = "2"
    memory: str = "8Gi"
    gpu: int = 0
    ray_start_params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PodOptions:
    """Settings every Ray pod shares: image, identity, placement and extra environment."""

    image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    service_account: str | None = None
    run_as_user: int = RUN_AS_USER
    env: dict[str, str] = field(default_factory=dict)
    secret_env: dict[str, tuple[str, str]] = field(default_factory=dict)  # NAME -> (Secret, key)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    image_pull_secrets: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ClusterOptions:
    """RayCluster-wide settings: Ray version, token auth (Ray 2.60's default) and the autoscaler."""

    ray_version: str = RAY_VERSION
    auth_mode: str = "token"  # "token" or "disabled"
    auth_secret_name: str | None = None  # existing Secret with the token; None lets KubeRay make one
    autoscaling: bool = True
    idle_timeout_seconds: int = 60


def _resources(cpu: str, memory: str, gpu: int) -> dict[str, Any]:
    amounts: dict[str, Any] = {"cpu": str(cpu), "memory": memory}
    if gpu:
        amounts[GPU_RESOURCE] = gpu
    # Requests equal limits: Ray sizes itself from the limits, and the pod gets a Guaranteed QoS.
    return {"requests": dict(amounts), "limits": dict(amounts)}


def pod_security_context(run_as_user: int = RUN_AS_USER) -> dict[str, Any]:
    """The pod-level security settings every tightfit pod carries."""
    return {
        "runAsNonRoot": True,
        "runAsUser": run_as_user,
        "runAsGroup": run_as_user,
        "fsGroup": run_as_user,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """The container-level security settings every tightfit container carries."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _env(pod: PodOptions) -> list[dict[str, Any]]:
    # HOME under the writable /tmp: Ray and torch write caches below HOME.
    base = {"HOME": "/tmp", "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
    base.update(pod.env)
    plain: list[dict[str, Any]] = [{"name": key, "value": str(value)} for key, value in sorted(base.items())]
    from_secrets = [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": item}}}
        for key, (secret, item) in sorted(pod.secret_env.items())
    ]
    return plain + from_secrets


def _pod_template(
    pod: PodOptions, container: str, cpu: str, memory: str, gpu: int, *, head: bool, labels: Mapping[str, str]
) -> dict[str, Any]:
    main: dict[str, Any] = {
        "name": container,
        "image": pod.image,
        "imagePullPolicy": pod.image_pull_policy,
        "env": _env(pod),
        "resources": _resources(cpu, memory, gpu),
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "dshm", "mountPath": "/dev/shm"}],
    }
    if head:
        main["ports"] = [{"name": port_name, "containerPort": port} for port_name, port in HEAD_PORTS]
    spec: dict[str, Any] = {
        "securityContext": pod_security_context(pod.run_as_user),
        "containers": [main],
        "volumes": [
            {"name": "tmp", "emptyDir": {}},
            # Ray's object store lives in shared memory; the container default (64 MiB) is too small.
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        ],
    }
    if pod.service_account:
        spec["serviceAccountName"] = pod.service_account
    if pod.node_selector:
        spec["nodeSelector"] = dict(pod.node_selector)
    if pod.tolerations:
        spec["tolerations"] = [dict(t) for t in pod.tolerations]
    if pod.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": secret} for secret in pod.image_pull_secrets]
    return {"metadata": {"labels": dict(labels)}, "spec": spec}


def raycluster_spec(
    *,
    head: HeadSpec | Mapping[str, Any] | None = None,
    workers: WorkerGroupSpec | Mapping[str, Any] | None = None,
    pod: PodOptions | Mapping[str, Any] | None = None,
    cluster: ClusterOptions | Mapping[str, Any] | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The `spec` of a RayCluster (also a RayJob's `rayClusterSpec` and a RayService's `rayClusterConfig`)."""
    head_spec: HeadSpec = _coerce(HeadSpec, head, "head")
    worker_spec: WorkerGroupSpec = _coerce(WorkerGroupSpec, workers, "workers")
    pod_opts: PodOptions = _coerce(PodOptions, pod, "pod")
    opts: ClusterOptions = _coerce(ClusterOptions, cluster, "cluster")
    _check_size(head_spec.cpu, head_spec.memory, head_spec.gpu, "head")
    _check_workers(worker_spec)
    if opts.auth_mode not in ("token", "disabled"):
        raise ConfigError(f"auth_mode: expected 'token' or 'disabled', got {opts.auth_mode!r}")
    pod_labels = dict(labels or {})
    spec: dict[str, Any] = {
        "rayVersion": opts.ray_version,
        "enableInTreeAutoscaling": bool(opts.autoscaling),
        "headGroupSpec": {
            "rayStartParams": {k: str(v) for k, v in head_spec.ray_start_params.items()},
            "template": _pod_template(
                pod_opts,
                "ray-head",
                head_spec.cpu,
                head_spec.memory,
                head_spec.gpu,
                head=True,
                labels=pod_labels,
            ),
        },
        "workerGroupSpecs": [
            {
                "groupName": worker_spec.group_name,
                "replicas": worker_spec.replicas,
                "minReplicas": worker_spec.min_replicas,
                "maxReplicas": worker_spec.max_replicas,
                "rayStartParams": {k: str(v) for k, v in worker_spec.ray_start_params.items()},
                "template": _pod_template(
                    pod_opts,
                    "ray-worker",
                    worker_spec.cpu,
                    worker_spec.memory,
                    worker_spec.gpu,
                    head=False,
                    labels=pod_labels,
                ),
            }
        ],
    }
    if opts.autoscaling:
        spec["autoscalerOptions"] = {
            "idleTimeoutSeconds": opts.idle_timeout_seconds,
            "securityContext": container_security_context(),
        }
    auth: dict[str, Any] = {"mode": opts.auth_mode}
    if opts.auth_secret_name:
        auth["secretName"] = opts.auth_secret_name
    spec["authOptions"] = auth
    return spec


def _metadata(name: str, namespace: str, labels: Mapping[str, str] | None, component: str) -> dict[str, Any]:
    _check_name(name, {"rayjob": "RayJob", "rayservice": "RayService"}.get(component, "RayCluster"))
    merged = {"app.kubernetes.io/name": "tightfit", "app.kubernetes.io/component": component}
    merged.update(labels or {})
    return {"name": name, "namespace": namespace, "labels": merged}


def _pod(image: str, service_account: str | None, pod: PodOptions | Mapping[str, Any] | None) -> PodOptions:
    base: PodOptions = _coerce(PodOptions, pod, "pod")
    values = asdict(base)
    values["image"] = image
    if service_account is not None:
        values["service_account"] = service_account
    return PodOptions(**values)


def raycluster_manifest(
    name: str,
    *,
    namespace: str,
    image: str = DEFAULT_IMAGE,
    head: HeadSpec | Mapping[str, Any] | None = None,
    workers: WorkerGroupSpec | Mapping[str, Any] | None = None,
    service_account: str | None = None,
    labels: Mapping[str, str] | None = None,
    pod: PodOptions | Mapping[str, Any] | None = None,
    cluster: ClusterOptions | Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A RayCluster for interactive work and Ray Jobs API submissions (`tightfit finetune --address`)."""
    meta = _metadata(name, namespace, labels, "raycluster")
    spec = raycluster_spec(
        head=head,
        workers=workers,
        pod=_pod(image, service_account, pod),
        cluster=cluster,
        labels=meta["labels"],
    )
    return {"apiVersion": API_VERSION, "kind": "RayCluster", "metadata": meta, "spec": spec}


def rayjob_manifest(
    name: str,
    *,
    namespace: str,
    image: str = DEFAULT_IMAGE,
    entrypoint: str,
    head: HeadSpec | Mapping[str, Any] | None = None,
    workers: WorkerGroupSpec | Mapping[str, Any] | None = None,
    runtime_env: Mapping[str, Any] | None = None,
    service_account: str | None = None,
    labels: Mapping[str, str] | None = None,
    ttl_seconds_after_finished: int = 3600,
    shutdown_after_job_finishes: bool = True,
    active_deadline_seconds: int | None = None,
    pod: PodOptions | Mapping[str, Any] | None = None,
    cluster: ClusterOptions | Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A RayJob: KubeRay starts a cluster, runs `entrypoint` (e.g. `python -m tightfit.ray_jobs.finetune ...`)
    through the Jobs API from a submitter pod, and tears the cluster down `ttl_seconds_after_finished` later."""
    if not entrypoint or not entrypoint.strip():
        raise ConfigError(
            "entrypoint: give the command the job runs, e.g. 'python -m tightfit.ray_jobs.finetune'"
        )
    if ttl_seconds_after_finished < 0:
        raise ConfigError(f"ttl_seconds_after_finished must be >= 0, got {ttl_seconds_after_finished}")
    meta = _metadata(name, namespace, labels, "rayjob")
    pod_opts = _pod(image, service_account, pod)
    spec: dict[str, Any] = {
        "entrypoint": entrypoint.strip(),
        "shutdownAfterJobFinishes": bool(shutdown_after_job_finishes),
        "ttlSecondsAfterFinished": int(ttl_seconds_after_finished),
    }
    if active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = int(active_deadline_seconds)
    if runtime_env:
        spec["runtimeEnvYAML"] = yaml.safe_dump(dict(runtime_env), sort_keys=True)
    spec["rayClusterSpec"] = raycluster_spec(
        head=head, workers=workers, pod=pod_opts, cluster=cluster, labels=meta["labels"]
    )
    # The submitter pod (runs `ray job submit`; KubeRay fills in its command) gets the same hardening.
    submitter = _pod_template(
        pod_opts, "ray-job-submitter", "500m", "512Mi", 0, head=False, labels=meta["labels"]
    )
    submitter["spec"]["restartPolicy"] = "Never"
    spec["submitterPodTemplate"] = submitter
    return {"apiVersion": API_VERSION, "kind": "RayJob", "metadata": meta, "spec": spec}


def proxy_env(serve_config: Mapping[str, Any]) -> dict[str, str]:
    """The body cap and upload time of tightfit's proxy middleware (``tightfit.serve.proxy``) for a Serve
    config: one proxy fronts every application, so the largest of their plans' limits (as
    ``ServePlan.proxy_env`` for one plan); empty where no application carries a tightfit plan."""
    plans = [app.get("args", {}).get("plan") for app in serve_config.get("applications", [])]
    plans = [p for p in plans if isinstance(p, Mapping) and "max_request_bytes" in p]
    if not plans:
        return {}
    return settings_proxy_env(max(int(p["max_request_bytes"]) for p in plans),
                              max(float(p.get("request_timeout_s", 60.0)) for p in plans))


def rayservice_manifest(
    name: str,
    *,
    namespace: str,
    image: str = DEFAULT_IMAGE,
    serve_config: Mapping[str, Any],
    head: HeadSpec | Mapping[str, Any] | None = None,
    workers: WorkerGroupSpec | Mapping[str, Any] | None = None,
    service_account: str | None = None,
    labels: Mapping[str, str] | None = None,
    pod: PodOptions | Mapping[str, Any] | None = None,
    cluster: ClusterOptions | Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A RayService running the Serve config v2 `serve_config` (the serving plan's `to_serve_config()`:
    `applications` with deployments carrying `ray_actor_options.memory`, `max_ongoing_requests`, ...)."""
    if not isinstance(serve_config, Mapping) or not serve_config.get("applications"):
        raise ConfigError(
            "serve_config: expected a Serve config v2 mapping with a non-empty 'applications' list"
        )
    meta = _metadata(name, namespace, labels, "rayservice")
    serve_pod = _pod(image, service_account, pod)
    # Serve's throughput-optimized mode and tightfit's proxy middleware (tightfit.settings.SERVE_RAY_ENV), the
    # plans' body cap for it; the caller's pod env wins
    serve_pod = replace(serve_pod, env={**SERVE_RAY_ENV, **proxy_env(serve_config), **serve_pod.env})
    spec = {
        "serveConfigV2": yaml.safe_dump(_plain(serve_config), sort_keys=False),
        "rayClusterConfig": raycluster_spec(
            head=head,
            workers=workers,
            pod=serve_pod,
            cluster=cluster,
            labels=meta["labels"],
        ),
    }
    return {"apiVersion": API_VERSION, "kind": "RayService", "metadata": meta, "spec": spec}


def _plain(value: Any) -> Any:
    """Mappings/sequences as plain dicts/lists so `yaml.safe_dump` accepts them."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
