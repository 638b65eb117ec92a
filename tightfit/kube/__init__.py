"""Kubernetes: KubeRay objects (RayCluster, RayJob, RayService), creating them, validating them, and the
Helm chart's values read with the same functions."""

from tightfit.kube.api import create_raycluster, create_rayjob, create_rayservice, get_rayjob, load_api_client
from tightfit.kube.checks import CPU_PATTERN, MAX_NAME_LENGTH, MEMORY_PATTERN, kuberay_name
from tightfit.kube.helm_values import manifests_from_values
from tightfit.kube.manifests import (
    API_VERSION,
    RAY_VERSION,
    ClusterOptions,
    HeadSpec,
    PodOptions,
    WorkerGroupSpec,
    container_security_context,
    pod_security_context,
    raycluster_manifest,
    raycluster_spec,
    rayjob_manifest,
    rayservice_manifest,
)
from tightfit.kube.validate import kuberay_errors, validate_kuberay
from tightfit.settings import DEFAULT_IMAGE

__all__ = [
    "API_VERSION",
    "CPU_PATTERN",
    "DEFAULT_IMAGE",
    "MAX_NAME_LENGTH",
    "MEMORY_PATTERN",
    "RAY_VERSION",
    "ClusterOptions",
    "HeadSpec",
    "PodOptions",
    "WorkerGroupSpec",
    "container_security_context",
    "create_raycluster",
    "create_rayjob",
    "create_rayservice",
    "get_rayjob",
    "kuberay_errors",
    "kuberay_name",
    "load_api_client",
    "manifests_from_values",
    "pod_security_context",
    "raycluster_manifest",
    "raycluster_spec",
    "rayjob_manifest",
    "rayservice_manifest",
    "validate_kuberay",
]
