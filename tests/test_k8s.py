"""tightfit.kube.manifests: KubeRay manifests validate against the KubeRay v1.7.0 CRDs, go through a real HTTP
Kubernetes API (kmock's in-memory emulator on 127.0.0.1) with the official client, and fail clearly."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tightfit import kube
from tightfit.errors import BackendError, ConfigError

SERVE_CONFIG = {
    "applications": [
        {
            "name": "tightfit",
            "route_prefix": "/",
            "import_path": "tightfit.ray_jobs.serve:app_builder",
            "args": {"plan": {"budget_bytes": 1 << 30}},
            "deployments": [
                {
                    "name": "TightfitServer",
                    "max_ongoing_requests": 32,
                    "max_queued_requests": 64,
                    "ray_actor_options": {"num_cpus": 1, "memory": 858074430},
                }
            ],
        }
    ]
}


class _ApiServer:
    """A kmock KubernetesEmulator served over HTTP on 127.0.0.1 from a background asyncio thread."""

    def __init__(self, emulator: Any) -> None:
        self.emulator = emulator
        self.url = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import kmock

        async def serve() -> None:
            self._stop = asyncio.Event()
            async with self.emulator, kmock.Server(self.emulator, host="127.0.0.1") as server:
                self.url = str(server.url).rstrip("/")
                self._ready.set()
                await self._stop.wait()

        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(serve())
        finally:
            self._loop.close()

    def __enter__(self) -> _ApiServer:
        self._thread.start()
        assert self._ready.wait(15), "kmock server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def client(self) -> Any:
        from kubernetes import client

        config = client.Configuration()
        config.host = self.url
        return client.ApiClient(config)


@pytest.fixture
def apiserver() -> Iterator[_ApiServer]:
    import kmock

    with _ApiServer(kmock.KubernetesEmulator()) as server:
        yield server


def _job(name: str = "finetune-1") -> dict[str, Any]:
    return kube.rayjob_manifest(
        name,
        namespace="ml",
        image="ghcr.io/tightfit/tightfit:0.1.0-cpu",
        entrypoint="python -m tightfit.ray_jobs.finetune --set workers=2",
        workers=kube.WorkerGroupSpec(replicas=2, min_replicas=2, max_replicas=2, cpu="2", memory="4Gi"),
        runtime_env={"env_vars": {"TIGHTFIT_FINETUNE_CONFIG": "{}"}},
        service_account="tightfit",
    )


def test_manifests_validate_against_kuberay_crds(kuberay_crd_dir: Path) -> None:
    job = _job()
    service = kube.rayservice_manifest(
        "serve-1", namespace="ml", serve_config=SERVE_CONFIG, workers={"replicas": 1, "memory": "2Gi", "gpu": 1}
    )
    cluster = kube.raycluster_manifest("train", namespace="ml", head=kube.HeadSpec(cpu="1", memory="2Gi"))
    for obj in (job, service, cluster):
        kube.validate_kuberay(obj, kuberay_crd_dir)
    workers = service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] == 2


def _pod_env(cluster_spec: dict[str, Any]) -> list[dict[str, str]]:
    pods = [cluster_spec["headGroupSpec"]] + cluster_spec["workerGroupSpecs"]
    return [{e["name"]: e.get("value", "") for e in p["template"]["spec"]["containers"][0]["env"]} for p in pods]


def test_serving_pods_run_serve_in_its_throughput_mode_and_a_callers_env_wins() -> None:
    """Every RayService pod runs Serve with RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (tightfit.settings.SERVE_RAY_ENV);
    a RayJob's pods (training) do not carry it; a caller's pod env overrides it."""
    service = kube.rayservice_manifest("serve-1", namespace="ml", serve_config=SERVE_CONFIG)
    assert all(env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1" for env in _pod_env(service["spec"]["rayClusterConfig"]))
    assert all("RAY_SERVE_THROUGHPUT_OPTIMIZED" not in env for env in _pod_env(_job()["spec"]["rayClusterSpec"]))
    default_mode = kube.rayservice_manifest("serve-1", namespace="ml", serve_config=SERVE_CONFIG,
                                            pod={"env": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}})
    assert {env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] for env in _pod_env(default_mode["spec"]["rayClusterConfig"])} == {"0"}


def test_serving_pods_give_the_proxy_the_largest_plan_body_cap() -> None:
    """Serve's proxy fronts every application, so its middleware (tightfit.serve.proxy) caps bodies at the
    largest limit among the plans; a config without a tightfit plan sets no cap (the middleware's default)."""
    from tightfit.settings import ENV_BODY_TIMEOUT_S, ENV_MAX_REQUEST_BYTES

    second = {**SERVE_CONFIG["applications"][0], "name": "other",
              "args": {"plan": {"max_request_bytes": 135168, "request_timeout_s": 90.0}}}
    config = {"applications": [{**SERVE_CONFIG["applications"][0],
                                "args": {"plan": {"max_request_bytes": 8192, "request_timeout_s": 60.0}}}, second]}
    service = kube.rayservice_manifest("serve-1", namespace="ml", serve_config=config)
    for env in _pod_env(service["spec"]["rayClusterConfig"]):
        assert env["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] == "tightfit.serve.proxy:middlewares"
        assert (env[ENV_MAX_REQUEST_BYTES], env[ENV_BODY_TIMEOUT_S]) == ("135168", "90")
    bare = kube.rayservice_manifest("serve-1", namespace="ml", serve_config=SERVE_CONFIG)
    assert all(ENV_MAX_REQUEST_BYTES not in env for env in _pod_env(bare["spec"]["rayClusterConfig"]))


def test_crd_validation_rejects_what_the_api_server_would(kuberay_crd_dir: Path) -> None:
    job = _job()
    container = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    container["resource"] = container.pop("resources")  # a typo deep inside a pod template
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"
    errors = kube.kuberay_errors(job, kuberay_crd_dir)
    assert any("'resource' was unexpected" in e for e in errors), errors
    assert any(e.startswith("spec.rayClusterSpec.workerGroupSpecs.0.replicas:") for e in errors), errors
    with pytest.raises(ConfigError, match="does not match the KubeRay CRD schema"):
        kube.validate_kuberay(job, kuberay_crd_dir)
    # int-or-string quantities: a plain integer CPU is as valid as "2"
    ok = _job()
    ok["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = 2
    assert kube.kuberay_errors(ok, kuberay_crd_dir) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workers": {"memory": "8"}}, "memory quantity with a unit"),
        ({"workers": {"replicas": -1}}, "whole number >= 0"),
        ({"workers": {"replicas": 5, "maxReplicas": 4}}, "min_replicas <= replicas <= max_replicas"),
        ({"head": {"cpu": "two"}}, "not a CPU quantity"),
        ({"workers": {"gpus": 1}}, "unknown key 'gpus'"),
    ],
)
def test_bad_sizes_are_clear_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        kube.rayjob_manifest("job", namespace="ml", entrypoint="python -m x", **kwargs)


def test_bad_names_and_serve_config_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="not a valid RayJob name") as info:
        kube.rayjob_manifest("Fine_Tune", namespace="ml", entrypoint="python -m x")
    assert "gives 'fine-tune'" in str(info.value)
    with pytest.raises(ConfigError, match="at most 47 characters"):
        kube.rayservice_manifest("s" * 48, namespace="ml", serve_config=SERVE_CONFIG)
    assert kube.raycluster_manifest("c" * 53, namespace="ml")["metadata"]["name"] == "c" * 53
    long_name = kube.kuberay_name("tightfit-Structured_Heads.FFN-50-distilled-int8-dynamic-v2", "RayService")
    assert len(long_name) <= 47 and kube.rayservice_manifest(long_name, namespace="ml", serve_config=SERVE_CONFIG)
    assert kube.kuberay_name("3-layer student") == "tf-3-layer-student"
    with pytest.raises(ConfigError, match="applications"):
        kube.rayservice_manifest("serve", namespace="ml", serve_config={"deployments": []})


def test_create_rayjob_and_rayservice_over_http(apiserver: _ApiServer, kuberay_crd_dir: Path) -> None:
    from kubernetes import client

    api_client = apiserver.client()
    job = _job()
    service = kube.rayservice_manifest("serve-1", namespace="ml", serve_config=SERVE_CONFIG)
    for obj in (job, service):
        kube.validate_kuberay(obj, kuberay_crd_dir)
    created_job = kube.create_rayjob(job, "ml", api_client=api_client)
    created_service = kube.create_rayservice(service, "ml", api_client=api_client)
    assert created_job["kind"] == "RayJob" and created_service["kind"] == "RayService"

    api = client.CustomObjectsApi(api_client)
    stored = api.get_namespaced_custom_object("ray.io", "v1", "ml", "rayservices", "serve-1")
    assert stored["spec"] == service["spec"]
    assert kube.get_rayjob("finetune-1", "ml", api_client=api_client)["spec"] == job["spec"]
    listed = api.list_namespaced_custom_object("ray.io", "v1", "ml", "rayjobs")
    assert [item["metadata"]["name"] for item in listed["items"]] == ["finetune-1"]

    with pytest.raises(BackendError, match=r"RayJob ml/finetune-1 already exists; delete it first"):
        kube.create_rayjob(job, "ml", api_client=api_client)
    with pytest.raises(BackendError, match=r"RayService ml/serve-1 already exists"):
        kube.create_rayservice(service, "ml", api_client=api_client)
    with pytest.raises(BackendError, match="not found"):
        kube.get_rayjob("absent", "ml", api_client=api_client)


def test_missing_kuberay_says_install_it() -> None:
    import kmock

    emulator = kmock.KubernetesEmulator()

    def no_crd(request: Any) -> None:
        raise kmock.KubernetesResourceNotFoundError()

    emulator["post", re.compile(r"/apis/ray\.io/.*")] << no_crd
    with _ApiServer(emulator) as server, pytest.raises(BackendError, match="install the KubeRay operator"):
        kube.create_rayjob(_job(), "ml", api_client=server.client())


def test_unreachable_api_is_a_clear_error() -> None:
    from kubernetes import client

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = client.Configuration()
    config.host = f"http://127.0.0.1:{port}"
    config.retries = 0
    with pytest.raises(BackendError, match="cannot reach the Kubernetes API"):
        kube.create_rayjob(_job(), "ml", api_client=client.ApiClient(config))


def test_wrong_kind_or_namespace_is_refused() -> None:
    job = _job()
    with pytest.raises(ConfigError, match="differs from namespace"):
        kube.create_rayjob(job, "other", api_client=object())
    with pytest.raises(ConfigError, match="RayJob, RayService or RayCluster"):
        kube.create_rayjob({"apiVersion": "v1", "kind": "Pod"}, "ml", api_client=object())


def test_kfp_upload_unreachable_host_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tightfit.pipelines.upload import main, upload_pipelines

    with pytest.raises(ConfigError, match="compile it first"):
        upload_pipelines("http://127.0.0.1:9", [tmp_path / "absent.yaml"])
    pipeline = tmp_path / "fit_for_serving.yaml"
    pipeline.write_text("pipelineInfo:\n  name: fit-for-serving\n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert main(["--host", f"http://127.0.0.1:{port}", str(pipeline)]) == 2
    assert "cannot reach the KFP API" in capsys.readouterr().err


class _FakeKfpApi:
    """The four KFP v2beta1 endpoints the upload Job uses (healthz, list, upload, upload_version), on
    127.0.0.1, keeping pipelines and versions in memory; a duplicate version name answers 409 like KFP."""

    def __init__(self) -> None:
        import http.server
        import json as _json
        import urllib.parse

        self.pipelines: dict[str, str] = {}  # display name -> id
        self.versions: dict[str, list[str]] = {}  # pipeline id -> version names
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = _json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urllib.parse.urlparse(self.path)
                if url.path == "/apis/v2beta1/healthz":
                    return self._reply(200, {"multi_user": False})
                if url.path == "/apis/v2beta1/pipelines":
                    wanted = _json.loads(urllib.parse.parse_qs(url.query)["filter"][0])["predicates"][0]["stringValue"]
                    found = [{"pipeline_id": i, "display_name": n} for n, i in api.pipelines.items() if n == wanted]
                    return self._reply(200, {"pipelines": found} if found else {})
                return self._reply(404, {"message": "not found"})

            def do_POST(self) -> None:
                url = urllib.parse.urlparse(self.path)
                query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
                self.rfile.read(int(self.headers["Content-Length"]))
                if url.path == "/apis/v2beta1/pipelines/upload":
                    pipeline_id = f"p{len(api.pipelines) + 1}"
                    api.pipelines[query["name"]] = pipeline_id
                    api.versions[pipeline_id] = [query["name"]]
                    return self._reply(200, {"pipeline_id": pipeline_id, "display_name": query["name"]})
                if url.path == "/apis/v2beta1/pipelines/upload_version":
                    versions = api.versions[query["pipelineid"]]
                    if query["name"] in versions:
                        return self._reply(409, {"message": f"version {query['name']} already exists"})
                    versions.append(query["name"])
                    return self._reply(200, {"pipeline_id": query["pipelineid"], "pipeline_version_id": query["name"]})
                return self._reply(404, {"message": "not found"})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _FakeKfpApi:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_kfp_upload_creates_then_versions_then_is_idempotent(tmp_path: Path) -> None:
    """What the chart's upload Job does on install and each upgrade: create, new version, no-op."""
    from tightfit.pipelines.upload import upload_pipelines

    package = tmp_path / "tiny.yaml"
    package.write_text("pipelineInfo:\n  name: tiny\nroot: {}\n")
    with _FakeKfpApi() as api:
        assert upload_pipelines(api.url, [package]) == ["tiny: created"]
        assert upload_pipelines(api.url, [package]) == [f"tiny: new version tiny-{_sha(package)}"]
        assert upload_pipelines(api.url, [package]) == [f"tiny: unchanged (tiny-{_sha(package)} exists)"]
        package.write_text("pipelineInfo:\n  name: tiny\nroot: {dag: {}}\n")
        assert upload_pipelines(api.url, [package]) == [f"tiny: new version tiny-{_sha(package)}"]
    assert api.pipelines == {"tiny": "p1"}
    assert len(api.versions["p1"]) == 3


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]
