"""Shared test set-up: hermetic, offline, quiet; temp dirs per test; servers on 127.0.0.1 only."""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session")
def kuberay_crd_dir() -> Path:
    """The KubeRay v1.7.0 CRDs vendored under tests/data/kuberay-crds (version and license in its README)."""
    return KUBERAY_CRDS
