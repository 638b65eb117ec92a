"""The first screen (``tightfit`` with no arguments) and the next steps ``tightfit run`` ends with.

A newcomer needs three commands (run, compare, serve) and where results land; someone who just ran the
pipeline needs the exact commands to open the report, browse MLflow and serve the chosen variant, with
paths that exist on this machine.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tightfit import names, settings
from tightfit.units import format_bytes

if TYPE_CHECKING:
    from tightfit.pipelines.local import RunSummary

DEFAULT_SERVE_BUDGET = 2**30
MLFLOW_UI_PORT = 5000


def _tool(name: str) -> str:
    """A console script of this environment by absolute path when it is there (works without activating
    the venv), else its bare name."""
    path = Path(sys.executable).with_name(name)
    return str(path) if path.exists() else name


def welcome_text(home: Path | None = None) -> str:
    """The screen ``tightfit`` prints with no arguments (rich markup; every line fits 80 columns)."""
    root = home or settings.home_dir()
    earlier = ""
    if (root / settings.LOCAL_DB_FILE).exists():
        earlier = "  [dim]results of earlier runs are there: tightfit compare shows them[/]\n"
    store = f"{settings.LOCAL_DB_FILE}, {settings.LOCAL_ARTIFACT_DIR}/"
    return f"""[bold]tightfit[/]: fit a model to the hardware you have. Compress it, measure every
variant, pick the one that fits your limits, serve it.

[bold]Start here[/]
  [bold cyan]tightfit run --quick[/]
      fine-tune MiniLM on Rotten Tomatoes, build 3 compressed variants, measure
      each, pick the one that fits (a few minutes; without --quick: 9 variants)
  [bold cyan]tightfit compare[/]
      the variants side by side from MLflow: footprint, Pareto front, what fits
      a budget: --budget 500MiB --latency 20ms --min-accuracy 0.8
  [bold cyan]tightfit serve --from-mlflow {names.DEFAULT_EXPERIMENT} --memory-budget 1GiB[/]
      serve the best variant that fits 1 GiB per replica on Ray Serve
      (--dry-run: print the plan only)

[bold]Results land in[/] {root}   ({settings.ENV_HOME} moves them)
{earlier}  {"pipeline/.../report.html":<26} each run's selection report (run prints the path)
  {store:<26} MLflow: runs, LoggedModels, registered champion
  {"logs/":<26} every pipeline task's output

All commands: [bold]tightfit --help[/]      One command: [bold]tightfit run --help[/]"""


def next_steps(summary: RunSummary, experiment: str = names.DEFAULT_EXPERIMENT) -> list[tuple[str, str]]:
    """(what, the exact command) after a pipeline run; only steps whose files exist."""
    steps: list[tuple[str, str]] = []
    report = Path(summary.report_path) if summary.report_path else None
    if report is not None and report.exists():
        steps.append(("open the report", f"xdg-open {shlex.quote(str(report))}   # or {report.as_uri()}"))
    if summary.tracking_uri.startswith("sqlite:///"):
        ui = (f"{_tool('mlflow')} ui --backend-store-uri {shlex.quote(summary.tracking_uri)} --host 127.0.0.1 "
              f"--port {MLFLOW_UI_PORT}   # then http://127.0.0.1:{MLFLOW_UI_PORT} (Runs and Models tabs)")
    else:
        ui = f"open {summary.tracking_uri} (experiment {experiment}: Runs and Models tabs)"
    steps.append(("browse in MLflow", ui))
    steps.append(("compare the variants",
                  f"{_tool('tightfit')} compare --experiment {shlex.quote(experiment)} "
                  f"--tracking-uri {shlex.quote(summary.tracking_uri)}"))
    chosen_dir = _chosen_dir(summary)
    if chosen_dir is not None:
        budget = (summary.selection.get("target") or {}).get("memory_bytes") or DEFAULT_SERVE_BUDGET
        steps.append((f"serve {summary.chosen}",
                      f"{_tool('tightfit')} serve --variant {shlex.quote(str(chosen_dir))} "
                      f"--memory-budget {format_bytes(int(budget)).replace(' ', '')}"))
    return steps


def _chosen_dir(summary: RunSummary) -> Path | None:
    dirs: dict[str, Any] = summary.selection.get("variant_dirs") or {}
    path = Path(dirs[summary.chosen]) if summary.chosen and summary.chosen in dirs else None
    return path if path is not None and (path / "manifest.json").exists() else None


def print_next_steps(summary: RunSummary, console: Any, experiment: str = names.DEFAULT_EXPERIMENT) -> None:
    """The next-steps block at the end of ``tightfit run``."""
    steps = next_steps(summary, experiment)
    console.print("\n[bold]Next[/]")
    width = max(len(what) for what, _ in steps)
    for what, command in steps:
        console.print(f"  {what + ':':<{width + 1}}  {command}", highlight=False, soft_wrap=True)
