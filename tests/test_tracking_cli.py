"""``tightfit compare``: the table from MLflow, the front, the best fit, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_tracking_support import log_summary
from typer.testing import CliRunner

from tightfit import track
from tightfit.cli import app
from tightfit.footprint import Footprint

MiB = 2**20


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("cli-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    t = track.Tracker(uri, "cli", outbox_dir=root)
    parent = track.start_parent("cli-sweep", tracker=t)
    records = [
        Footprint(variant="fp32", accuracy=0.81, disk_bytes=87 * MiB, peak_rss_serve_bytes=600 * MiB,
                  peak_rss_load_bytes=550 * MiB, latency_ms_b1_p95=10.0),
        Footprint(variant="int8", chain="int8_dynamic", accuracy=0.79, disk_bytes=56 * MiB,
                  peak_rss_serve_bytes=380 * MiB, peak_rss_load_bytes=300 * MiB, latency_ms_b1_p95=4.5),
        Footprint(variant="pruned", chain="prune_unstructured:sparsity=0.5", accuracy=0.7, disk_bytes=60 * MiB,
                  peak_rss_serve_bytes=450 * MiB, peak_rss_load_bytes=400 * MiB, latency_ms_b1_p95=6.0),
        Footprint(variant="int4", chain="int4_weight_only", status="failed", error="needs a GPU"),
    ]
    for r in records:
        track.log_variant(r, parent=parent, tracker=t)
    log_summary(parent, records, t)
    return uri


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["compare", *args], catch_exceptions=True, env={"COLUMNS": "260"})
    text = result.output + (str(result.exception) if result.exception else "")
    return result.exit_code, text


def test_compare_prints_table_front_and_best(store: str) -> None:
    code, out = _run("--tracking-uri", store, "--experiment", "cli", "--budget", "530MiB")
    assert code == 0, out
    for name in ("fp32", "int8", "pruned", "int4"):
        assert name in out
    assert "best under the limits: int8" in out
    assert "memory: peak_rss_serve_bytes 600.0 MiB > budget 530.0 MiB" in out
    assert "failed: needs a GPU" in out
    rows = {line.split("│")[2].strip(): line for line in out.splitlines() if line.count("│") > 10}
    assert rows["int8"].split("│")[1].strip() == "★"
    assert rows["fp32"].split("│")[1].strip() == "●" and rows["pruned"].split("│")[1].strip() == ""


def test_compare_json_and_no_fit(store: str) -> None:
    code, out = _run("--tracking-uri", store, "--experiment", "cli", "--json", "--min-accuracy", "0.8")
    assert code == 0, out
    report = json.loads(out)
    assert report["chosen"] == "fp32" and report["front"] == ["fp32", "int8"]
    code, out = _run("--tracking-uri", store, "--experiment", "cli", "--budget", "100MiB")
    assert code != 0 and "no variant fits memory <= 100.0 MiB" in out


def test_compare_errors_are_clear(store: str, tmp_path: Path) -> None:
    code, out = _run("--tracking-uri", store, "--experiment", "nope")
    assert code != 0 and "no MLflow experiment 'nope'" in out
    code, out = _run("--tracking-uri", store, "--experiment", "cli", "--budget", "-5MiB")
    assert code != 0 and "negative" in out


def test_compare_reports_operations_mlflow_refused(store: str, tmp_path: Path) -> None:
    from tightfit import names
    from tightfit.track.outbox import OP_LOG

    home = tmp_path / "home"
    t = track.Tracker(store, "cli", outbox_dir=home)
    run = track.start_run(names.ROLE_TRAINING, "refused", params={names.PARAM_EPOCHS: 1}, tracker=t)
    t.push(OP_LOG, run, params={names.PARAM_EPOCHS: "3"})  # MLflow refuses changing a logged param
    result = CliRunner().invoke(app, ["compare", "--tracking-uri", store, "--experiment", "cli"],
                                env={"COLUMNS": "260", "TIGHTFIT_HOME": str(home)})
    assert result.exit_code == 0, result.output
    assert "1 MLflow operation(s) refused or not applied, kept in" in result.output
    assert names.DEAD_LETTER_FILE in result.output and f"log {run}: " in result.output
