"""Create and read KubeRay objects through the Kubernetes API (`kubernetes` client's CustomObjectsApi).

Every failure a user can meet (object exists, KubeRay not installed, RBAC, API unreachable) becomes a
`BackendError` that names the problem and the fix. The `kubernetes` package is imported inside functions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from tightfit.errors import BackendError, ConfigError

GROUP = "ray.io"
VERSION = "v1"
PLURALS = {"RayJob": "rayjobs", "RayService": "rayservices", "RayCluster": "rayclusters"}
KUBERAY_HINT = (
    "install the KubeRay operator (v1.7.0) first: `helm repo add kuberay https://ray-project.github.io/kuberay-helm/ "
    "&& helm install kuberay-operator kuberay/kuberay-operator --version 1.7.0`"
)


def load_api_client() -> Any:
    """An ApiClient from the in-cluster service account, or else from the local kubeconfig."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
            return client.ApiClient()
        return config.new_client_from_config()
    except (ConfigException, OSError) as exc:
        raise BackendError(
            f"no Kubernetes credentials: {exc}. Point KUBECONFIG at a kubeconfig for the cluster, or run "
            "inside a pod with a service account (the tightfit chart creates one)"
        ) from exc


def _api_message(exc: Any) -> str:
    try:
        return str(json.loads(exc.body).get("message", exc.reason))
    except (TypeError, ValueError, AttributeError):
        return str(getattr(exc, "reason", exc))


def _host(api_client: Any) -> str:
    return str(getattr(getattr(api_client, "configuration", None), "host", "the Kubernetes API"))


def _explain(exc: Any, kind: str, name: str, namespace: str, verb: str) -> BackendError:
    status = getattr(exc, "status", None)
    message = _api_message(exc)
    plural = PLURALS.get(kind, kind.lower())
    if status == 409:
        return BackendError(
            f"{kind} {namespace}/{name} already exists; delete it first (`kubectl delete {plural} {name} -n {namespace}`) "
            "or choose another name"
        )
    if status == 404 and verb != "create":
        return BackendError(
            f"{kind} {namespace}/{name} not found ({message}); list them with `kubectl get {plural} -n {namespace}`"
        )
    if status == 404:
        return BackendError(
            f"cannot {verb} {kind} {namespace}/{name}: the API answered 404 ({message}). Either the namespace "
            f"{namespace!r} does not exist or the {GROUP}/{VERSION} {plural} resource is missing; {KUBERAY_HINT}"
        )
    if status in (401, 403):
        return BackendError(
            f"not allowed to {verb} {plural} in namespace {namespace!r} ({status}: {message}); use the service "
            "account the tightfit chart creates (its Role grants create/get/list/watch/delete on rayjobs and "
            "rayservices) or ask a cluster admin for that RBAC"
        )
    if status == 422:
        return BackendError(f"the API rejected {kind} {namespace}/{name} as invalid: {message}")
    return BackendError(f"cannot {verb} {kind} {namespace}/{name}: API error {status}: {message}")


def _unreachable(exc: Exception, api_client: Any) -> BackendError:
    return BackendError(
        f"cannot reach the Kubernetes API at {_host(api_client)} ({type(exc).__name__}: {exc}); check KUBECONFIG / "
        "the cluster address and that the API server is up"
    )


def _create(manifest: Mapping[str, Any], namespace: str | None, api_client: Any) -> dict[str, Any]:
    import urllib3
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    kind = str(manifest.get("kind", ""))
    if kind not in PLURALS or manifest.get("apiVersion") != f"{GROUP}/{VERSION}":
        raise ConfigError(
            f"expected a {GROUP}/{VERSION} RayJob, RayService or RayCluster, got {manifest.get('apiVersion')} {kind}"
        )
    metadata = dict(manifest.get("metadata") or {})
    name = str(metadata.get("name", ""))
    ns = namespace or metadata.get("namespace") or "default"
    if metadata.get("namespace") not in (None, ns):
        raise ConfigError(f"manifest namespace {metadata['namespace']!r} differs from namespace {ns!r}")
    body = dict(manifest)
    body["metadata"] = {**metadata, "namespace": ns}
    api_client = api_client or load_api_client()
    api = client.CustomObjectsApi(api_client)
    try:
        created = api.create_namespaced_custom_object(
            group=GROUP, version=VERSION, namespace=ns, plural=PLURALS[kind], body=body
        )
    except ApiException as exc:
        raise _explain(exc, kind, name, ns, "create") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise _unreachable(exc, api_client) from exc
    return dict(created)


def create_rayjob(
    manifest: Mapping[str, Any], namespace: str | None = None, api_client: Any = None
) -> dict[str, Any]:
    """Create a RayJob (from `rayjob_manifest`) and return the object the API stored."""
    return _create(manifest, namespace, api_client)


def create_rayservice(
    manifest: Mapping[str, Any], namespace: str | None = None, api_client: Any = None
) -> dict[str, Any]:
    """Create a RayService (from `rayservice_manifest`) and return the object the API stored."""
    return _create(manifest, namespace, api_client)


def create_raycluster(
    manifest: Mapping[str, Any], namespace: str | None = None, api_client: Any = None
) -> dict[str, Any]:
    """Create a RayCluster (from `raycluster_manifest`) and return the object the API stored."""
    return _create(manifest, namespace, api_client)


def get_rayjob(name: str, namespace: str, api_client: Any = None) -> dict[str, Any]:
    """Read a RayJob back (its `status.jobStatus` says PENDING/RUNNING/SUCCEEDED/FAILED)."""
    import urllib3
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api_client = api_client or load_api_client()
    try:
        obj = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
            group=GROUP, version=VERSION, namespace=namespace, plural="rayjobs", name=name
        )
    except ApiException as exc:
        raise _explain(exc, "RayJob", name, namespace, "read") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise _unreachable(exc, api_client) from exc
    return dict(obj)
