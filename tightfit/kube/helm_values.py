"""Build the chart's KubeRay objects from a Helm values dict with the Python functions of `tightfit.kube.manifests`.

`helm/tightfit/values.yaml` keys (`ray`, `rayCluster`, `rayJob`, `rayService`) map one to one onto the
arguments of `raycluster_manifest` / `rayjob_manifest` / `rayservice_manifest`. The chart's templates build
the same objects in Go templates; tests render the chart and compare with what this module returns for the
same merged values, so the chart and the Python code stay one definition.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tightfit.kube.manifests import raycluster_manifest, rayjob_manifest, rayservice_manifest

CHART_NAME = "tightfit"


def _trunc(name: str, limit: int) -> str:
    return name[:limit].rstrip("-")


def fullname(values: Mapping[str, Any], release: str) -> str:
    """The chart's `tightfit.fullname` helper."""
    if values.get("fullnameOverride"):
        return _trunc(str(values["fullnameOverride"]), 63)
    name = values.get("nameOverride") or CHART_NAME
    return _trunc(release if name in release else f"{release}-{name}", 63)


def service_account_name(values: Mapping[str, Any], release: str) -> str:
    """The chart's `tightfit.serviceAccountName` helper."""
    sa = values.get("serviceAccount") or {}
    if sa.get("create", True):
        return str(sa.get("name") or fullname(values, release))
    return str(sa.get("name") or "default")


def chart_labels(
    values: Mapping[str, Any], release: str, component: str, *, chart_version: str, app_version: str
) -> dict[str, str]:
    """The chart's `tightfit.labels` helper (standard Kubernetes and Helm labels plus the component)."""
    return {
        "app.kubernetes.io/name": str(values.get("nameOverride") or CHART_NAME),
        "app.kubernetes.io/instance": release,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/version": app_version,
        "app.kubernetes.io/managed-by": "Helm",
        "helm.sh/chart": f"{CHART_NAME}-{chart_version}",
    }


def mlflow_uri(values: Mapping[str, Any], release: str) -> str:
    """The in-cluster MLflow tracking URI the chart gives every Ray pod."""
    port = values["mlflow"]["service"]["port"]
    return f"http://{fullname(values, release)}-mlflow:{port}"


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Sprig's `mergeOverwrite`: nested mappings merge key by key, anything else in `override` wins."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _section_sizes(values: Mapping[str, Any], section: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """`ray.head`/`ray.workers` with the section's own `head`/`workers` overrides on top."""
    ray = values["ray"]
    own = values.get(section) or {}
    head = _deep_merge(ray["head"], own.get("head") or {})
    workers = _deep_merge(ray["workers"], own.get("workers") or {})
    return head, workers


def _pod_and_cluster(values: Mapping[str, Any], release: str) -> tuple[dict[str, Any], dict[str, Any]]:
    ray = values["ray"]
    image = values["image"]
    env = {str(k): str(v) for k, v in (ray.get("env") or {}).items()}
    secret_env: dict[str, tuple[str, str]] = {}
    mlflow = values["mlflow"]
    if mlflow["enabled"]:
        env["MLFLOW_TRACKING_URI"] = mlflow_uri(values, release)
        auth = mlflow.get("auth") or {}
        if auth.get("enabled"):
            secret_env["MLFLOW_TRACKING_USERNAME"] = (auth["existingSecret"], auth["usernameKey"])
            secret_env["MLFLOW_TRACKING_PASSWORD"] = (auth["existingSecret"], auth["passwordKey"])
    digest = image.get("digest") or ""
    pod = {
        "image": f"{image['repository']}:{image['tag']}" + (f"@{digest}" if digest else ""),
        "secret_env": secret_env,
        "image_pull_policy": image["pullPolicy"],
        "service_account": service_account_name(values, release),
        "run_as_user": values["securityContext"]["runAsUser"],
        "env": env,
        "node_selector": dict(ray.get("nodeSelector") or {}),
        "tolerations": list(ray.get("tolerations") or []),
        "image_pull_secrets": list(values.get("imagePullSecrets") or []),
    }
    cluster = {
        "ray_version": ray["version"],
        "auth_mode": ray["auth"]["mode"],
        "auth_secret_name": ray["auth"].get("secretName") or None,
        "autoscaling": ray["autoscaling"]["enabled"],
        "idle_timeout_seconds": ray["autoscaling"]["idleTimeoutSeconds"],
    }
    return pod, cluster


def manifests_from_values(
    values: Mapping[str, Any], *, release: str, namespace: str, chart_version: str, app_version: str
) -> dict[str, dict[str, Any]]:
    """The enabled RayCluster/RayJob/RayService objects for merged chart `values`, keyed by kind."""
    pod, cluster = _pod_and_cluster(values, release)
    base = fullname(values, release)
    out: dict[str, dict[str, Any]] = {}

    def common(section: str, component: str) -> dict[str, Any]:
        head, workers = _section_sizes(values, section)
        return {
            "namespace": namespace,
            "image": pod["image"],
            "head": head,
            "workers": workers,
            "labels": chart_labels(
                values, release, component, chart_version=chart_version, app_version=app_version
            ),
            "pod": pod,
            "cluster": cluster,
        }

    if values["rayCluster"]["enabled"]:
        out["RayCluster"] = raycluster_manifest(
            _trunc(f"{base}-train", 47), **common("rayCluster", "raycluster")
        )
    job = values["rayJob"]
    if job["enabled"]:
        out["RayJob"] = rayjob_manifest(
            _trunc(f"{base}-finetune", 47),
            entrypoint=job["entrypoint"],
            runtime_env=job.get("runtimeEnv") or None,
            ttl_seconds_after_finished=job["ttlSecondsAfterFinished"],
            shutdown_after_job_finishes=job["shutdownAfterJobFinishes"],
            active_deadline_seconds=job.get("activeDeadlineSeconds") or None,
            **common("rayJob", "rayjob"),
        )
    service = values["rayService"]
    if service["enabled"]:
        out["RayService"] = rayservice_manifest(
            _trunc(f"{base}-serve", 47),
            serve_config=service["serveConfig"],
            **common("rayService", "rayservice"),
        )
    return out
