"""Validate KubeRay objects offline against the KubeRay CRDs' openAPIV3Schema with jsonschema.

The CRD schema is structural OpenAPI, not JSON Schema; it is converted once per CRD file (cached as JSON
under $TIGHTFIT_CACHE, i.e. .build/cache in tests) following the CRD README's notes:
`x-kubernetes-int-or-string` -> integer or string; `required` entries that carry a `default` are dropped
(the API server fills defaults first); unknown fields are rejected except under
`x-kubernetes-preserve-unknown-fields`; `nullable` allows null. CEL rules are not checked.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tightfit.errors import ConfigError
from tightfit.settings import cache_dir

CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}
_MEMO: dict[str, dict[str, Any]] = {}


def _convert(node: Any) -> Any:
    """Structural OpenAPI v3 (as in CRDs) -> JSON Schema draft 7/2020 that jsonschema enforces strictly."""
    if isinstance(node, list):
        return [_convert(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _convert(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") or key in ("allOf", "anyOf", "oneOf"):
            out[key] = _convert(value)
        elif key.startswith("x-kubernetes-") or key in ("format", "nullable", "description", "example"):
            continue
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.pop("anyOf", None)
        out["type"] = ["integer", "string"]
    if "required" in out and "properties" in node:
        keep = [r for r in out["required"] if "default" not in node["properties"].get(r, {})]
        if keep:
            out["required"] = keep
        else:
            out.pop("required")
    if (
        node.get("type") == "object"
        and "properties" in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out.setdefault("additionalProperties", False)
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def crd_schema(kind: str, crd_dir: str | os.PathLike[str], version: str = "v1") -> dict[str, Any]:
    """The JSON Schema for `kind` at `version`, converted once and cached by the CRD file's hash."""
    if kind not in CRD_FILES:
        raise ConfigError(f"unknown KubeRay kind {kind!r}; known: {', '.join(CRD_FILES)}")
    path = Path(crd_dir) / CRD_FILES[kind]
    if not path.exists():
        raise ConfigError(f"KubeRay CRD file {path} not found; pass the directory holding {CRD_FILES[kind]}")
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()[:16]
    key = f"{kind}-{version}-{digest}"
    if key in _MEMO:
        return _MEMO[key]
    cached = cache_dir("kuberay-schemas") / f"{key}.json"
    if cached.exists():
        schema = json.loads(cached.read_text())
    else:
        import yaml

        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        crd = yaml.load(raw, Loader=loader)  # a safe loader (C or pure Python)
        versions = {v["name"]: v for v in crd["spec"]["versions"]}
        if version not in versions:
            raise ConfigError(f"{kind} CRD has no version {version!r}; it has {', '.join(versions)}")
        schema = _convert(versions[version]["schema"]["openAPIV3Schema"])
        schema["properties"]["metadata"] = {"type": "object"}
        tmp = cached.with_suffix(".tmp")
        tmp.write_text(json.dumps(schema))
        tmp.replace(cached)
    _MEMO[key] = schema
    return schema


def kuberay_errors(obj: Mapping[str, Any], crd_dir: str | os.PathLike[str]) -> list[str]:
    """Every schema violation of a RayCluster/RayJob/RayService object, as 'path: message' lines."""
    import jsonschema

    api_version = str(obj.get("apiVersion", ""))
    kind = str(obj.get("kind", ""))
    if not api_version.startswith("ray.io/"):
        return [f"apiVersion: expected ray.io/v1, got {api_version!r}"]
    schema = crd_schema(kind, crd_dir, api_version.split("/", 1)[1])
    validator = jsonschema.Draft7Validator(schema)
    errors = []
    for error in sorted(validator.iter_errors(dict(obj)), key=lambda e: list(map(str, e.absolute_path))):
        where = ".".join(str(p) for p in error.absolute_path) or "<root>"
        errors.append(f"{where}: {error.message}")
    return errors


def validate_kuberay(obj: Mapping[str, Any], crd_dir: str | os.PathLike[str]) -> None:
    """Raise ConfigError listing every way `obj` breaks its KubeRay CRD schema; return None when it is valid."""
    errors = kuberay_errors(obj, crd_dir)
    if errors:
        name = (obj.get("metadata") or {}).get("name", "?")
        shown = "\n  ".join(errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise ConfigError(f"{obj.get('kind')} {name} does not match the KubeRay CRD schema:\n  {shown}{more}")
