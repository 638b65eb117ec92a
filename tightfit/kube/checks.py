"""Input checks for the KubeRay objects of `tightfit.kube.manifests`: names, Kubernetes quantities, worker groups, and
values.yaml-style dicts coerced to the option dataclasses. Each failure is a `ConfigError` naming the fix."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from tightfit.errors import ConfigError

# Kubernetes quantity spellings accepted for memory (a unit is required) and CPU; values.schema.json
# carries the same patterns (a test checks they match).
MEMORY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)$"
CPU_PATTERN = r"^([0-9]+(\.[0-9]+)?|[0-9]+m)$"
# KubeRay's own limits (ray-operator utils): DNS-1035 labels; a RayJob/RayService gets a 6-character
# suffix for its RayCluster, and the longest service suffix ("-serve-svc") must still fit 63 characters.
_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME_LENGTH = {"RayCluster": 53, "RayJob": 47, "RayService": 47}

def _camel_to_snake(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


def _coerce(cls: type, value: Any, what: str) -> Any:
    """Accept a dataclass instance or a dict with snake_case or values.yaml camelCase keys."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what}: expected a mapping or {cls.__name__}, got {type(value).__name__}")
    known = {f.name for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, item in value.items():
        name = _camel_to_snake(str(key))
        if name not in known:
            raise ConfigError(f"{what}: unknown key {key!r}; known keys: {', '.join(sorted(known))}")
        kwargs[name] = item
    return cls(**kwargs)


def kuberay_name(text: str, kind: str = "RayJob") -> str:
    """A valid `kind` name from any text ("Fit_Student.v2" -> "fit-student-v2"), cut to KubeRay's limit."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    name = re.sub(r"-{2,}", "-", name)
    if not name or not name[0].isalpha():
        name = f"tf-{name}"
    return name[: MAX_NAME_LENGTH.get(kind, 47)].rstrip("-")


def _check_name(name: str, kind: str) -> None:
    limit = MAX_NAME_LENGTH.get(kind, 47)
    if not isinstance(name, str) or not _NAME_RE.match(name) or len(name) > limit:
        raise ConfigError(
            f"name {name!r} is not a valid {kind} name: use lowercase letters, digits and '-', start with a "
            f"letter, end alphanumeric, at most {limit} characters (KubeRay derives pod and service names "
            f"from it); tightfit.kube.manifests.kuberay_name({name!r}, {kind!r}) gives {kuberay_name(str(name), kind)!r}"
        )


def _check_size(cpu: Any, memory: Any, gpu: Any, what: str) -> None:
    if not isinstance(memory, str) or not re.match(MEMORY_PATTERN, memory):
        raise ConfigError(
            f"{what}.memory: {memory!r} is not a Kubernetes memory quantity with a unit; write e.g. '8Gi' or '512Mi'"
        )
    if not isinstance(cpu, str | int) or not re.match(CPU_PATTERN, str(cpu)):
        raise ConfigError(f"{what}.cpu: {cpu!r} is not a CPU quantity; write e.g. '2' or '500m'")
    if isinstance(gpu, bool) or not isinstance(gpu, int) or gpu < 0:
        raise ConfigError(f"{what}.gpu: expected a whole number >= 0, got {gpu!r}")


def _check_workers(w: Any) -> None:
    _check_size(w.cpu, w.memory, w.gpu, f"workers[{w.group_name}]")
    for label, number in (
        ("replicas", w.replicas),
        ("min_replicas", w.min_replicas),
        ("max_replicas", w.max_replicas),
    ):
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise ConfigError(
                f"workers[{w.group_name}].{label}: expected a whole number >= 0, got {number!r}"
            )
    if not w.min_replicas <= w.replicas <= w.max_replicas:
        raise ConfigError(
            f"workers[{w.group_name}]: need min_replicas <= replicas <= max_replicas, "
            f"got {w.min_replicas} <= {w.replicas} <= {w.max_replicas}"
        )
