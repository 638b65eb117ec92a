"""The Helm chart, rendered by the real Helm engine (helm-python-sdk): strict lint, every object validated
(core kinds with kubernetes-validate, KubeRay kinds against the CRDs), the values schema, pod security,
secrets by reference only, and no drift between the chart's KubeRay objects and tightfit.kube.manifests."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tightfit import kube
from tightfit.kube.helm_values import manifests_from_values

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "tightfit"
EXAMPLES = ROOT / "helm" / "examples"
KUBE_VERSION = "1.30.0"
RELEASE, NAMESPACE = "tf", "ml"
KUBERAY_KINDS = {"RayCluster", "RayJob", "RayService"}

# Sentinels: only ever Secret *names*; a rendered object must mention them only as references.
SECRET_SENTINELS = {
    "db": "sentinel-db-secret",
    "s3": "sentinel-s3-secret",
    "kfp": "sentinel-kfp-secret",
    "ray": "sentinel-ray-token",
    "pull": "sentinel-pull-secret",
    "mlflow_auth": "sentinel-mlflow-auth",
}
SECRET_VALUES = {
    "imagePullSecrets": [SECRET_SENTINELS["pull"]],
    "mlflow": {
        "replicas": 2,
        "auth": {"existingSecret": SECRET_SENTINELS["mlflow_auth"]},
        "backendStore": {"type": "postgresql", "postgresql": {"existingSecret": SECRET_SENTINELS["db"]}},
        "artifactStore": {
            "type": "s3",
            "s3": {"bucket": "b", "endpointUrl": "http://minio:9000", "existingSecret": SECRET_SENTINELS["s3"]},
        },
    },
    "ray": {"auth": {"secretName": SECRET_SENTINELS["ray"]}},
    "kfp": {"uploadJob": {"tokenSecret": SECRET_SENTINELS["kfp"]}},
    "rayJob": {"enabled": True},
    "rayService": {"enabled": True},
}
# Overrides touching every knob of the KubeRay objects, for the no-drift comparison.
EVERY_RAY_KNOB = {
    "fullnameOverride": "fit",
    "image": {"repository": "registry.example/tf", "tag": "9.9.9-cuda", "pullPolicy": "Always", "digest": "sha256:" + "ab" * 32},
    "imagePullSecrets": ["pull-a", "pull-b"],
    "serviceAccount": {"name": "tf-runner"},
    "securityContext": {"runAsUser": 2000},
    "mlflow": {"service": {"port": 5055}, "auth": {"existingSecret": "auth", "usernameKey": "u", "passwordKey": "p"}},
    "ray": {
        "version": "2.60.0",
        "auth": {"mode": "disabled"},
        "autoscaling": {"enabled": False},
        "head": {"cpu": 3, "memory": "3Gi", "rayStartParams": {"num-cpus": "0"}},
        "workers": {"groupName": "gpu", "gpu": 2, "cpu": "1500m", "memory": "1.5Gi"},
        "env": {"EXTRA": "1", "AAA_FIRST": "x"},
        "nodeSelector": {"pool": "gpu"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
    "rayCluster": {"workers": {"replicas": 3, "maxReplicas": 3, "minReplicas": 3}},
    "rayJob": {
        "enabled": True,
        "entrypoint": "  python -m tightfit.ray_jobs.finetune --set epochs=1  ",
        "runtimeEnv": {"env_vars": {"A": "1", "B": "two"}, "pip": ["x==1"]},
        "shutdownAfterJobFinishes": False,
        "ttlSecondsAfterFinished": 10,
        "activeDeadlineSeconds": 600,
        "head": {"memory": "5Gi"},
    },
    "rayService": {"enabled": True, "workers": {"replicas": 0, "minReplicas": 0}},
}


def _example(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text()))


CASES: dict[str, dict[str, Any]] = {
    "default": {},
    "gpu-workers": _example("gpu-workers"),
    "external-postgres-s3": _example("external-postgres-s3"),
    "serving-only": _example("serving-only"),
    "all-ray-kinds": {"rayJob": {"enabled": True}, "rayService": {"enabled": True}},
}


@cache
def _chart() -> Any:
    import helm_python

    return helm_python.Chart.load(str(CHART))


@cache
def _render_json(values_json: str) -> list[dict[str, Any]]:
    rendered = _chart().render(json.loads(values_json), name=RELEASE, namespace=NAMESPACE)
    objects: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    return _render_json(json.dumps(values, sort_keys=True))


def pod_specs(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod spec (a mapping with `containers`) anywhere inside an object, with its path."""
    if isinstance(node, dict):
        if "containers" in node:
            yield path, node
        for key, value in node.items():
            yield from pod_specs(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from pod_specs(value, f"{path}[{index}]")


def strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from strings(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from strings(value, f"{path}[{index}]")
    elif isinstance(node, str):
        yield path, node


@pytest.mark.parametrize("case", list(CASES))
def test_lint_strict_is_clean(case: str) -> None:
    import helm_python

    report = helm_python.lint(str(CHART), CASES[case], strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("case", list(CASES))
def test_every_rendered_object_validates(case: str, kuberay_crd_dir: Path) -> None:
    import kubernetes_validate

    objects = render(CASES[case])
    assert objects
    for obj in objects:
        if obj["kind"] in KUBERAY_KINDS:
            kube.validate_kuberay(obj, kuberay_crd_dir)
        else:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        assert obj["metadata"]["namespace"] == NAMESPACE
        for _, spec in pod_specs(obj):
            for container in spec["containers"]:
                image = container["image"]
                assert ":" in image and not image.endswith(":latest"), image


def _kinds(values: dict[str, Any]) -> list[str]:
    return sorted(obj["kind"] for obj in render(values))


def test_toggles_and_examples_render_what_they_say() -> None:
    assert _kinds({}) == sorted(
        ["ConfigMap", "Deployment", "Job", "NetworkPolicy", "NetworkPolicy", "PersistentVolumeClaim", "RayCluster",
         "Role", "RoleBinding", "Service", "ServiceAccount"]
    )
    assert _kinds(CASES["serving-only"]) == ["NetworkPolicy", "RayService", "ServiceAccount"]
    gpu_job = next(o for o in render(CASES["gpu-workers"]) if o["kind"] == "RayJob")
    worker = gpu_job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert gpu_job["spec"]["activeDeadlineSeconds"] == 7200
    external = render(CASES["external-postgres-s3"])
    assert "PersistentVolumeClaim" not in [o["kind"] for o in external]
    mlflow = next(o for o in external if o["kind"] == "Deployment")
    args = mlflow["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--artifacts-destination=s3://tightfit-artifacts/mlflow" in args
    assert "--backend-store-uri=$(MLFLOW_BACKEND_STORE_URI)" in args


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"ray": {"workers": {"replicas": -1}}}, "at '/ray/workers/replicas': minimum: got -1, want 0"),
        ({"rayJob": {"workers": {"maxReplicas": -3}}}, "at '/rayJob/workers/maxReplicas': minimum: got -3, want 1"),
        ({"ray": {"head": {"memory": "8"}}}, "at '/ray/head/memory': '8' does not match pattern"),
        ({"mlflow": {"persistence": {"size": "10"}}}, "at '/mlflow/persistence/size': '10' does not match pattern"),
        ({"mlflow": {"storageBackend": "sqlite"}}, "additional properties 'storageBackend' not allowed"),
        ({"bogus": 1}, "additional properties 'bogus' not allowed"),
        ({"image": {"tag": "latest"}}, "at '/image/tag'"),
        # There is no place for a credential in values: such keys are unknown.
        ({"mlflow": {"backendStore": {"postgresql": {"password": "x"}}}}, "additional properties 'password' not allowed"),
    ],
)
def test_schema_rejects_bad_values_with_its_message(values: dict[str, Any], message: str) -> None:
    import helm_python

    with pytest.raises(helm_python.HelmValuesError) as info:
        _chart().validate_schema(values)
    assert message in str(info.value)
    with pytest.raises(helm_python.HelmValuesError):  # an install (render) refuses them as well
        _chart().render(values, name=RELEASE, namespace=NAMESPACE)


def test_broken_values_file_fails_with_every_schema_message() -> None:
    import helm_python

    broken = yaml.safe_load((ROOT / "tests" / "data" / "helm-broken-values.yaml").read_text())
    with pytest.raises(helm_python.HelmValuesError) as info:
        _chart().validate_schema(broken)
    text = str(info.value)
    assert "minimum: got -1, want 0" in text
    assert "'8' does not match pattern" in text
    assert "additional properties 'storageBackend' not allowed" in text
    report = helm_python.lint(str(CHART), broken, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"], "lint must fail on values that break the schema"


def test_schema_patterns_are_the_python_ones() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    ray = schema["properties"]["ray"]["properties"]
    assert ray["workers"]["properties"]["memory"]["pattern"] == kube.MEMORY_PATTERN
    assert ray["head"]["properties"]["cpu"]["anyOf"][0]["pattern"] == kube.CPU_PATTERN
    assert schema["additionalProperties"] is False


def test_template_guards_fail_with_their_messages() -> None:
    import helm_python

    cases = [
        ({"mlflow": {"replicas": 2}}, "SQLite allows exactly 1 replica"),
        ({"mlflow": {"backendStore": {"type": "postgresql"}}}, "name the Secret holding the database URI"),
        ({"ray": {"workers": {"replicas": 9, "maxReplicas": 4}}}, "need minReplicas <= replicas <= maxReplicas"),
    ]
    for values, message in cases:
        with pytest.raises(helm_python.HelmRenderError, match=re.escape(message)):
            _chart().render(values, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize("case", [*CASES, "secrets"])
def test_every_pod_template_is_hardened(case: str) -> None:
    values = SECRET_VALUES if case == "secrets" else CASES[case]
    found = 0
    for obj in render(values):
        for where, spec in pod_specs(obj):
            found += 1
            label = f"{obj['kind']}{where}"
            pod = spec["securityContext"]
            assert pod["runAsNonRoot"] is True, label
            assert pod["runAsUser"] > 0 and pod["runAsGroup"] > 0, label
            assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, label
            tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
            for container in spec["containers"] + spec.get("initContainers", []):
                sc = container["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False, label
                assert sc["readOnlyRootFilesystem"] is True, label
                assert sc["runAsNonRoot"] is True, label
                assert sc["capabilities"] == {"drop": ["ALL"]}, label
                tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
                assert tmp and tmp[0]["name"] in tmp_volumes, f"{label}: writable /tmp"
                assert container["resources"]["limits"]["memory"], label
        autoscaler = obj.get("spec", {}).get("autoscalerOptions") or (
            obj.get("spec", {}).get("rayClusterSpec") or {}
        ).get("autoscalerOptions")
        if autoscaler:
            assert autoscaler["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert found >= 1
    if case == "default":
        assert found == 4  # MLflow, the KFP upload Job, the RayCluster's head and worker group


def test_no_rendered_object_carries_a_secret_value() -> None:
    objects = render(SECRET_VALUES)
    assert all(obj["kind"] != "Secret" for obj in objects)
    allowed_paths = re.compile(
        r"(secretKeyRef\.name|imagePullSecrets\[\d+\]\.name|authOptions\.secretName)$"
    )
    seen = set()
    for obj in objects:
        assert "stringData" not in obj and ("data" not in obj or obj["kind"] == "ConfigMap")
        for path, text in strings(obj):
            for key, sentinel in SECRET_SENTINELS.items():
                if sentinel in text:
                    assert allowed_paths.search(path), f"{obj['kind']}{path} holds secret name {sentinel!r} as a value"
                    seen.add(key)
        for _, spec in pod_specs(obj):
            for container in spec["containers"]:
                for env in container.get("env", []):
                    credential = re.search(r"SECRET|TOKEN|PASSWORD|ACCESS_KEY|BACKEND_STORE_URI", env["name"])
                    if credential and env["name"] != "MLFLOW_BACKEND_STORE_URI":
                        assert "value" not in env, f"{env['name']} must come from a Secret"
                        assert env["valueFrom"]["secretKeyRef"]["name"] in SECRET_SENTINELS.values()
                    if env["name"] == "MLFLOW_BACKEND_STORE_URI":  # postgres here: the URI holds a password
                        assert env["valueFrom"]["secretKeyRef"]["name"] == SECRET_SENTINELS["db"]
    assert seen == set(SECRET_SENTINELS), f"every referenced Secret appears (as a reference): {seen}"


def test_rbac_is_least_privilege() -> None:
    objects = render({})
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    role = next(o for o in objects if o["kind"] == "Role")
    assert role["rules"] == [
        {"apiGroups": ["ray.io"], "resources": ["rayjobs", "rayservices"], "verbs": ["create", "get", "list", "watch", "delete"]}
    ]
    binding = next(o for o in objects if o["kind"] == "RoleBinding")
    account = next(o for o in objects if o["kind"] == "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def _normalized(obj: dict[str, Any]) -> dict[str, Any]:
    """YAML-in-a-string fields compared as data (Go's and PyYAML's spellings differ)."""
    out = json.loads(json.dumps(obj))
    spec = out["spec"]
    for key in ("serveConfigV2", "runtimeEnvYAML"):
        if key in spec:
            spec[key] = yaml.safe_load(spec[key])
    return out


@pytest.mark.parametrize("case", ["default", "gpu-workers", "serving-only", "all-ray-kinds", "every-knob"])
def test_chart_and_python_build_the_same_kuberay_objects(case: str) -> None:
    values = EVERY_RAY_KNOB if case == "every-knob" else CASES[case]
    chart = _chart()
    merged = chart.merge_values(values)
    metadata = chart.metadata
    expected = manifests_from_values(
        merged, release=RELEASE, namespace=NAMESPACE, chart_version=metadata["version"],
        app_version=metadata["appVersion"],
    )
    rendered = {obj["kind"]: obj for obj in render(values) if obj["kind"] in KUBERAY_KINDS}
    assert sorted(rendered) == sorted(expected)
    assert rendered, "the case renders at least one KubeRay object"
    for kind, obj in rendered.items():
        assert _normalized(obj) == _normalized(expected[kind]), kind


def test_default_serve_config_is_a_real_serving_plan() -> None:
    """The chart's default RayService runs what the serving code reads: its plan loads as a ServePlan and
    `to_serve_config()` of that plan gives back exactly the rendered serveConfigV2."""
    from tightfit.serve.schema import ServePlan

    service = next(o for o in render({"rayService": {"enabled": True}}) if o["kind"] == "RayService")
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    plan = ServePlan.from_dict(config["applications"][0]["args"]["plan"])
    assert config == json.loads(json.dumps(plan.to_serve_config()))
    deployment = next(d for d in config["applications"][0]["deployments"] if d["name"] == "TightfitServer")
    assert deployment["ray_actor_options"]["memory"] == plan.predicted_peak_bytes <= plan.budget_bytes
    worker_memory = service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    from tightfit.units import parse_bytes

    assert parse_bytes(worker_memory["resources"]["limits"]["memory"]) >= plan.predicted_peak_bytes


def test_image_and_versions_agree_across_chart_package_and_dockerfile() -> None:
    import importlib.metadata
    import tomllib

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    image = f"{values['image']['repository']}:{values['image']['tag']}"
    assert image == kube.DEFAULT_IMAGE  # the KFP components' base image is the chart's default image
    assert values["image"]["tag"].startswith(chart["appVersion"] + "-")
    assert chart["appVersion"] == importlib.metadata.version("tightfit")
    assert values["ray"]["version"] == kube.RAY_VERSION == importlib.metadata.version("ray")

    pins = {
        dep.split("==")[0]: dep.split("==")[1]
        for dep in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
        if "==" in dep
    }
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"ARG TORCH_VERSION={pins['torch']}" in dockerfile
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\}$", dockerfile, re.M)
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim", dockerfile, re.M), "pinned base image"
    assert re.search(r"^USER \$\{UID\}", dockerfile, re.M), "the image runs as the non-root user"
    makefile_assets = re.search(r"^ASSET_PKGS := (.+)$", (ROOT / "Makefile").read_text(), re.M)
    docker_assets = re.search(r'^ARG ASSET_PKGS="(.+)"$', dockerfile, re.M)
    assert makefile_assets and docker_assets and makefile_assets.group(1) == docker_assets.group(1)


def test_mlflow_requires_basic_auth_with_credentials_from_a_secret() -> None:
    objects = render({})
    mlflow = next(o for o in objects if o["kind"] == "Deployment")
    container = mlflow["spec"]["template"]["spec"]["containers"][0]
    assert "--app-name=basic-auth" in container["args"]
    env = {e["name"]: e for e in container["env"]}
    for name, key in (("MLFLOW_AUTH_ADMIN_USERNAME", "username"), ("MLFLOW_AUTH_ADMIN_PASSWORD", "password")):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "tightfit-mlflow-auth", "key": key}
    settings = next(o for o in objects if o["kind"] == "ConfigMap")["data"]["basic_auth.ini"]
    assert "database_uri = sqlite:////data/basic_auth.db" in settings and "password" not in settings
    for obj in objects:  # every Ray pod authenticates with the same Secret, never a literal
        for _, spec in pod_specs(obj):
            ray_env = {e["name"]: e for e in spec["containers"][0]["env"]}
            if "MLFLOW_TRACKING_URI" in ray_env:
                ref = ray_env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]
                assert ref == {"name": "tightfit-mlflow-auth", "key": "password"}
    off = render({"mlflow": {"auth": {"enabled": False}}})
    assert "--app-name=basic-auth" not in next(o for o in off if o["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert all(o["kind"] != "ConfigMap" for o in off)


def test_network_policies_admit_only_the_release_and_listed_peers() -> None:
    policies = {o["metadata"]["name"]: o["spec"] for o in render({}) if o["kind"] == "NetworkPolicy"}
    mlflow, ray = policies[f"{RELEASE}-tightfit-mlflow"], policies[f"{RELEASE}-tightfit-ray"]
    release = {"app.kubernetes.io/instance": RELEASE, "app.kubernetes.io/name": "tightfit"}
    assert mlflow["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "mlflow"
    assert mlflow["policyTypes"] == ["Ingress"] and len(mlflow["ingress"]) == 1
    peers = mlflow["ingress"][0]["from"]
    assert peers[0] == {"podSelector": {"matchLabels": release}}
    assert peers[1] == {"namespaceSelector": {"matchLabels": {"pipelines.kubeflow.org/enabled": "true"}}}
    assert mlflow["ingress"][0]["ports"] == [{"protocol": "TCP", "port": "http"}]
    assert ray["podSelector"]["matchExpressions"][0]["values"] == ["raycluster", "rayjob", "rayservice"]
    internal, dashboard, serve = ray["ingress"]
    assert "ports" not in internal and internal["from"][0]["podSelector"]["matchLabels"] == release
    assert dashboard["ports"] == [{"protocol": "TCP", "port": 8265}]
    assert dashboard["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}
    assert serve["ports"] == [{"protocol": "TCP", "port": 8000}]
    # Every Ray pod the chart makes is selected by the policy (its labels match the selector).
    def templates(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            if "containers" in (node.get("spec") or {}) and "metadata" in node:
                yield node
            for value in node.values():
                yield from templates(value)
        elif isinstance(node, list):
            for value in node:
                yield from templates(value)

    selected = 0
    for obj in render(CASES["all-ray-kinds"]):
        if obj["kind"] in KUBERAY_KINDS:
            for template in templates(obj):
                labels = template["metadata"]["labels"]
                assert release.items() <= labels.items()
                assert labels["app.kubernetes.io/component"] in ray["podSelector"]["matchExpressions"][0]["values"]
                selected += 1
    assert selected >= 6  # head and workers of the RayCluster, RayJob and RayService (+ the job submitter)
    assert not [o for o in render({"networkPolicy": {"enabled": False}}) if o["kind"] == "NetworkPolicy"]


def test_a_digest_pins_every_image() -> None:
    digest = "sha256:" + "0f" * 32
    objects = render({"image": {"digest": digest}, "rayJob": {"enabled": True}, "rayService": {"enabled": True}})
    images = [c["image"] for o in objects for _, spec in pod_specs(o) for c in spec["containers"]]
    assert len(images) >= 6 and all(image.endswith("@" + digest) and ":0.1.0-" in image for image in images)
