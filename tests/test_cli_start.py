"""The first screen (``tightfit`` with no arguments) and the next steps ``tightfit run`` ends with."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from tightfit.pipelines.local import RunSummary

from tightfit import settings
from tightfit.commands.start import next_steps


def _tightfit(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, settings.ENV_HOME: str(home), "COLUMNS": "80", "TERM": "dumb"}
    return subprocess.run([sys.executable, "-m", "tightfit.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120, check=False)


def test_no_arguments_teaches_the_three_commands_and_where_results_land(tmp_path: Path) -> None:
    out = _tightfit(home=tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for command in ("tightfit run --quick", "tightfit compare", "tightfit serve --from-mlflow"):
        assert command in text
    assert str(tmp_path) in text and "report.html" in text and "mlflow.db" in text
    assert "earlier runs" not in text  # nothing there yet
    # fits an 80-column terminal (but for the line naming the results folder, as long as its path)
    assert max(len(line) for line in text.splitlines() if str(tmp_path) not in line) <= 80
    (tmp_path / settings.LOCAL_DB_FILE).write_bytes(b"")
    assert "earlier runs" in _tightfit(home=tmp_path).stdout
    assert "Usage" in _tightfit("--help", home=tmp_path).stdout  # --help is still the full list


def test_next_steps_name_paths_that_exist(tmp_path: Path) -> None:
    report = tmp_path / "select" / "report.html"
    report.parent.mkdir()
    report.write_text("<html></html>")
    chosen = tmp_path / "variants" / "bf16"
    chosen.mkdir(parents=True)
    (chosen / "manifest.json").write_text("{}")
    summary = RunSummary(
        pipeline="fit_for_serving", run_dir=tmp_path, wall_s=1.0, records=[], log_file=tmp_path / "log",
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", report_path=str(report),
        selection={"chosen": "bf16", "variant_dirs": {"bf16": str(chosen)}, "target": {"memory_bytes": 600 * 2**20}},
    )
    steps = dict(next_steps(summary, "my-exp"))
    assert shlex.split(steps["open the report"].split("#")[0])[1] == str(report)
    serve = shlex.split(steps["serve bf16"])
    assert serve[1:] == ["serve", "--variant", str(chosen), "--memory-budget", "600.0MiB"]
    assert Path(serve[0]).name == "tightfit"
    assert "--experiment my-exp" in steps["compare the variants"]
    assert summary.tracking_uri in steps["browse in MLflow"]
    # a step whose file is gone is left out rather than printed with a dead path
    report.unlink()
    (chosen / "manifest.json").unlink()
    assert set(dict(next_steps(summary))) == {"browse in MLflow", "compare the variants"}
