"""Start and stop a local ``mlflow server`` (SQLite backend, proxied artifacts) on 127.0.0.1.

Used by the tests and by anyone who wants the MLflow UI over a tightfit store. The server runs in its own
process group, so ``stop`` ends exactly the processes it started (the server and its worker), nothing else.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from tightfit.errors import BackendError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LocalMlflowServer:
    """``python -m mlflow server --workers 1`` over ``root/mlflow.db`` and ``root/artifacts``.

    Job execution is off (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``: no CLI flag does it in 3.17).
    The same instance can be stopped and started again on the same port and store.
    """

    def __init__(self, root: str | Path, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.root = Path(root).resolve()
        self.host = host
        self.port = port or free_port(host)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def backend_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def start(self, timeout_s: float = 90.0) -> str:
        """Start the server and wait until ``/health`` answers; returns its URI."""
        import requests

        if self.process is not None and self.process.poll() is None:
            return self.uri
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "artifacts").mkdir(exist_ok=True)
        env = {
            **os.environ,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "1",
        }
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", self.backend_uri,
            "--artifacts-destination", str(self.root / "artifacts"),
            "--host", self.host,
            "--port", str(self.port),
            "--workers", "1",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BackendError(
                    f"mlflow server exited with status {self.process.returncode}; see {self.log_path}"
                )
            try:
                if requests.get(self.uri + "/health", timeout=2).status_code == 200:
                    return self.uri
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.stop()
        raise BackendError(f"mlflow server on {self.uri} did not answer within {timeout_s:.0f} s; see {self.log_path}")

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop the server's own process group (SIGTERM, then SIGKILL after ``timeout_s``)."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        self._wait_port_closed()

    def _wait_port_closed(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                if sock.connect_ex((self.host, self.port)) != 0:
                    return
            time.sleep(0.2)

    def __enter__(self) -> LocalMlflowServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
