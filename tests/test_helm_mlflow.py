"""The chart's MLflow container, run for real: the rendered Deployment's command, args and env start a real
`mlflow server` (on 127.0.0.1, its /data volume a temp dir, its Secret and ConfigMap files from the chart),
the probes' /health answers without credentials, every API call needs the admin's basic-auth credentials
from the Secret, the in-cluster service name is an allowed Host, and a foreign Host is refused."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "tightfit"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _mlflow_container(port: int) -> tuple[dict[str, Any], str]:
    """The rendered MLflow container and the basic-auth settings file of the chart's ConfigMap."""
    import helm_python

    chart = helm_python.Chart.load(str(CHART))
    rendered = chart.render({"mlflow": {"service": {"port": port}}}, name="tf", namespace="ml")
    deployment = yaml.safe_load(rendered["tightfit/templates/mlflow-deployment.yaml"])
    config_map = yaml.safe_load(rendered["tightfit/templates/mlflow-auth-configmap.yaml"])
    return dict(deployment["spec"]["template"]["spec"]["containers"][0]), config_map["data"]["basic_auth.ini"]


@pytest.mark.slow
def test_rendered_mlflow_container_serves_health_and_guards_hosts(tmp_path: Path) -> None:
    import secrets

    port = _free_port()
    container, auth_settings = _mlflow_container(port)
    data = tmp_path / "data"
    data.mkdir()
    mounted = {"/data": str(data), "/etc/mlflow-auth": str(tmp_path / "auth")}
    (tmp_path / "auth").mkdir()
    (tmp_path / "auth" / "basic_auth.ini").write_text(auth_settings.replace("/data", str(data)))
    admin = ("admin", secrets.token_urlsafe(16))
    secret = {"tightfit-mlflow-auth": {"username": admin[0], "password": admin[1], "secret-key": secrets.token_hex(16)}}
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    for item in container["env"]:
        if "valueFrom" in item:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secret[ref["name"]][ref["key"]]
            continue
        value = str(item["value"])
        for where, local in mounted.items():
            value = value.replace(where, local)
        env[item["name"]] = str(tmp_path) if value == "/tmp" else value
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"

    def expand(arg: str) -> str:  # Kubernetes' $(VAR) expansion, then the pod's paths mapped to temp dirs
        arg = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg)
        return arg.replace("--host=0.0.0.0", "--host=127.0.0.1").replace("=/data", f"={data}")

    assert "--app-name=basic-auth" in container["args"]

    mlflow_bin = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    command = [mlflow_bin, *container["command"][1:], *(expand(a) for a in container["args"])]
    assert f"--port={port}" in command
    log = (tmp_path / "mlflow.log").open("w")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        probe = container["readinessProbe"]["httpGet"]["path"]
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "mlflow.log").read_text()[-3000:]
            try:
                if requests.get(base + probe, timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not become ready"
            time.sleep(0.5)
        # What the Ray pods use: MLFLOW_TRACKING_URI=http://tf-tightfit-mlflow:<port> with the Secret's account
        search = base + "/api/2.0/mlflow/experiments/search?max_results=5"
        host = {"Host": f"tf-tightfit-mlflow:{port}"}
        assert requests.get(search, headers=host, timeout=10).status_code == 401  # no credentials
        assert requests.get(search, headers=host, auth=(admin[0], "wrong"), timeout=10).status_code == 401
        inside = requests.get(search, headers=host, auth=admin, timeout=10)
        assert inside.status_code == 200, inside.text
        fqdn = f"tf-tightfit-mlflow.ml.svc.cluster.local:{port}"
        assert requests.get(base + probe, headers={"Host": fqdn}, timeout=5).status_code == 200
        foreign = requests.get(search, headers={"Host": "evil.example.com"}, auth=admin, timeout=5)
        assert foreign.status_code in (400, 403), foreign.status_code
        assert (data / "mlflow.db").exists(), "the SQLite store lives on the chart's volume"
    finally:
        # The server and its uvicorn worker share the session this test started: stop that group only.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()
