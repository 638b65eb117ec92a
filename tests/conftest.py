"""Shared test set-up: hermetic, offline, quiet; temp dirs per test; servers on 127.0.0.1 only."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / ".build"

# Offline and quiet before any library is imported by a test module.
for key, value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
}.items():
    os.environ.setdefault(key, value)
os.environ.setdefault("TIGHTFIT_CACHE", str(BUILD / "cache"))
os.environ.setdefault("RAY_TMPDIR", "/tmp/tightfit-ray")

pytest_plugins = ["fixtures_models", "fixtures_onnx"]

KUBERAY_CRDS = Path(__file__).resolve().parent / "data" / "kuberay-crds"


@pytest.fixture
def mlflow_uri(tmp_path: Path) -> str:
    """A fresh local SQLite tracking store for one test."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A scratch folder for one module's shared fixtures, removed when the module is done.

    A full run writes several GB (checkpoints, pipeline outputs, MLflow artifacts); per-test folders go as
    each test passes (`tmp_path_retention_policy`), and this keeps the module-wide ones from piling up on
    a small CI disk too.
    """
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def kuberay_crd_dir() -> Path:
    """The KubeRay v1.7.0 CRDs vendored under tests/data/kuberay-crds (version and license in its README)."""
    return KUBERAY_CRDS
