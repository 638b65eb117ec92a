"""Launch paths of fine-tuning: the KubeRay RayJob (kmock API + CRD schema) and a real Ray Jobs API head."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tightfit.settings import LOCAL_RAY_ENV


def _config(tmp: Path, **overrides: Any):
    from tightfit.train import FinetuneConfig

    values: dict[str, Any] = dict(workers=1, epochs=1, limit=48, global_batch=16, memory_budget="3GiB",
                                  out_dir=str(tmp / "out"), tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    values.update(overrides)
    return FinetuneConfig(**values)


@pytest.fixture
def kube_api() -> Iterator[Any]:
    """A kubernetes ApiClient talking HTTP to an in-memory API server (kmock) on 127.0.0.1."""
    import kmock
    from kubernetes import client

    ready, box = threading.Event(), dict[str, Any]()

    async def serve() -> None:
        k8s = kmock.KubernetesEmulator()
        async with k8s, kmock.Server(k8s, host="127.0.0.1") as server:
            box["url"], box["stop"] = str(server.url), asyncio.Event()
            ready.set()
            await box["stop"].wait()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    thread.start()
    assert ready.wait(20), "kmock server did not start"
    configuration = client.Configuration()
    configuration.host = box["url"].rstrip("/")
    api = client.ApiClient(configuration)
    yield api
    api.close()
    loop.call_soon_threadsafe(box["stop"].set)
    thread.join(10)


def test_rayjob_created_through_kubernetes_client_matches_crd(kube_api, kuberay_crd_dir, tmp_path) -> None:
    from kubernetes import client

    from tightfit.kube import validate_kuberay
    from tightfit.train import FinetuneConfig
    from tightfit.train.launch import CONFIG_ENV, launch_kuberay

    config = _config(tmp_path, workers=2, cpus_per_worker=2, run_name="ft-kmock-test")
    created = launch_kuberay(config, "ml-team", api_client=kube_api)
    stored = client.CustomObjectsApi(kube_api).get_namespaced_custom_object(
        "ray.io", "v1", "ml-team", "rayjobs", "ft-kmock-test"
    )
    assert stored["spec"] == created["spec"]
    validate_kuberay(stored, kuberay_crd_dir)
    spec = stored["spec"]
    assert spec["entrypoint"] == "python -m tightfit.ray_jobs.finetune"
    import yaml

    env = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    assert FinetuneConfig.from_dict(json.loads(env[CONFIG_ENV])) == config
    groups = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert groups[0]["replicas"] == 2
    limits = groups[0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["cpu"] == "2" and limits["memory"] == "3072Mi"
    with pytest.raises(Exception, match=r"409|exists|Conflict"):
        launch_kuberay(config, "ml-team", api_client=kube_api)


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _stop_own_head(temp_dir: str) -> None:
    """Kill only the processes of this head (their command line names its temp dir) and their children."""
    import psutil

    own = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.pid != os.getpid() and temp_dir in " ".join(proc.info["cmdline"] or []):
            own.append(proc)
            with contextlib.suppress(psutil.NoSuchProcess):
                own.extend(proc.children(recursive=True))
    for proc in own:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(own, timeout=5)
    for proc in alive:
        proc.kill()


@pytest.fixture
def ray_head() -> Iterator[dict[str, str]]:
    """A real `ray start --head` on 127.0.0.1 with its own ports and temp dir, token auth left on."""
    temp_dir = tempfile.mkdtemp(prefix="tfhead-", dir="/tmp")  # short: Ray's socket paths are length-limited
    names = ["port", "dashboard-port", "ray-client-server-port", "node-manager-port", "object-manager-port",
             "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
             "runtime-env-agent-port"]
    ports = dict(zip(names, _free_ports(len(names)), strict=True))
    token = secrets.token_hex(32)
    # Ray's local-only switch: every service of the head on 127.0.0.1, not only the ones given a host.
    env = {**os.environ, "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0", LOCAL_RAY_ENV: "0"}
    env.pop("RAY_ADDRESS", None)
    ray_bin = str(Path(sys.executable).with_name("ray"))
    cmd = [ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
           "--temp-dir", temp_dir, "--num-cpus", "2", "--include-dashboard", "true", "--disable-usage-stats"]
    for name, port in ports.items():
        cmd += [f"--{name}", str(port)]
    started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        address = f"http://127.0.0.1:{ports['dashboard-port']}"
        yield {"address": address, "token": token, "temp_dir": temp_dir}
    finally:
        _stop_own_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_jobs_api_submission_with_token_succeeds(ray_head, tmp_path) -> None:
    import urllib.error
    import urllib.request

    from tightfit.train.launch import submit_finetune

    # Token auth is on: without the token the Jobs API refuses.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{ray_head['address']}/api/jobs/", timeout=10)
    assert refused.value.code in (401, 403)

    outcome = submit_finetune(_config(tmp_path), ray_head["address"], token=ray_head["token"], timeout_s=420)
    assert outcome.status == "SUCCEEDED", outcome.logs[-3000:]
    line = next(x for x in outcome.logs.splitlines() if x.startswith("TIGHTFIT_FINETUNE_RESULT "))
    payload = json.loads(line.split(" ", 1)[1])
    assert Path(payload["model_dir"], "config.json").exists()
    assert payload["metrics"]["micro_batch"] >= 1 and 0 <= payload["metrics"]["test_accuracy"] <= 1


def test_entrypoint_reads_config_from_file_env_and_overrides(tmp_path, monkeypatch) -> None:
    from tightfit.config import load_finetune_config as load_config
    from tightfit.errors import ConfigError
    from tightfit.train.launch import CONFIG_ENV, entrypoint_command, job_runtime_env

    config = _config(tmp_path, workers=3, teacher_dir="/models/teacher")
    path = tmp_path / "cfg.json"
    path.write_text(config.to_json())
    assert load_config(str(path)) == config
    monkeypatch.setenv(CONFIG_ENV, job_runtime_env(config)["env_vars"][CONFIG_ENV])
    assert load_config(overrides=["epochs=3", "precision=bf16"]).epochs == 3
    with pytest.raises(ConfigError, match="epoch: unknown key"):
        load_config(overrides=["epoch=3"])
    with pytest.raises(ConfigError, match="workers: Input should be greater than 0"):
        load_config(overrides=["workers=0"])
    with pytest.raises(ConfigError, match="memory_budget: 4096 has no unit"):
        load_config(overrides=["memory_budget=4096"])
    assert entrypoint_command().startswith(sys.executable + " -m tightfit.ray_jobs.finetune")
