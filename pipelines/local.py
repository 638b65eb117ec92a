"""Run a tightfit pipeline on this machine with ``kfp.local`` (what ``tightfit run`` does).

Everything lives under one run directory (default ``./tightfit-runs``): the pipeline root and its task
cache, the MLflow SQLite store and artifacts, and the log of every task. Caching is on, so an unchanged
rerun is served from cache; a variant that failed is taken out of the cache so a rerun retries it.
Ray runs locally inside the finetune task. Task logs go to a file; the console shows a status line.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tightfit import settings
from tightfit.config import PipelineConfig
from tightfit.errors import BackendError, ConfigError
from tightfit.footprint import Footprint

PIPELINES = ("fit_for_serving", "compress_sweep")


@dataclass
class RunSummary:
    """What a local pipeline run produced, for the console and for tests."""

    pipeline: str
    run_dir: Path
    wall_s: float
    selection: dict[str, Any]
    records: list[Footprint]
    tracking_uri: str
    log_file: Path
    report_path: str | None = None
    pareto_path: str | None = None
    evicted_cache_entries: int = 0
    deploy_plan: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def chosen(self) -> str | None:
        return self.selection.get("chosen")

    @property
    def failed(self) -> dict[str, str]:
        return dict(self.selection.get("failed") or {})

    def mlflow_ui_command(self) -> str:
        return f"mlflow ui --backend-store-uri {self.tracking_uri}"


def build_pipeline(name: str, config: PipelineConfig) -> Any:
    """The pipeline function ``name`` (``fit_for_serving`` or ``compress_sweep``) built from ``config``."""
    key = name.replace("-", "_")
    if key == "fit_for_serving":
        from tightfit.pipelines.fit_for_serving import build_fit_for_serving

        return build_fit_for_serving(config)
    if key == "compress_sweep":
        from tightfit.pipelines.compress_sweep import build_compress_sweep

        return build_compress_sweep(config)
    raise ConfigError(f"unknown pipeline {name!r}; pipelines: {', '.join(PIPELINES)}")


def pipeline_arguments(name: str, config: PipelineConfig, tracking_uri: str) -> dict[str, Any]:
    """Arguments for one run: the config's values (the pipeline's defaults) plus where to track."""
    args: dict[str, Any] = {
        "model": config.model,
        "kind": config.kind,
        "dataset": config.dataset,
        "seed": config.seed,
        "data_limit": config.data.limit or 0,
        "variants": config.loop_items(),
        "target": config.target_json(),
        "tracking_uri": tracking_uri,
        "experiment": config.tracking.experiment,
        "run_name": f"{name.replace('_', '-')}-{config.profile}",
    }
    # Stable for an unchanged config, so a rerun hits the cache and finds the same MLflow parent run.
    digest = hashlib.sha256(json.dumps({"pipeline": name, **args}, sort_keys=True).encode()).hexdigest()
    args["pipeline_run"] = f"{name}-{digest[:16]}"
    return args


class _TaskLog(io.TextIOBase):
    """A stdout stand-in: every line goes to the log file; task starts/ends update the status line."""

    def __init__(self, handle: Any, status: Any) -> None:
        self._handle = handle
        self._status = status
        self._running: dict[str, float] = {}
        self._done = 0
        self._start = time.monotonic()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self._handle.closed:  # a logging handler kfp created during an earlier run
            return sys.__stdout__.write(text) if sys.__stdout__ else len(text)
        self._handle.write(text)
        for line in text.splitlines():
            plain = re.sub(r"\x1b\[[0-9;]*m", "", line)
            started = re.search(r"Executing task '([^']+)'", plain)
            finished = re.search(r"Task '([^']+)' finished with status (\w+)", plain)
            if started:
                self._running[started.group(1)] = time.monotonic()
            elif finished:
                self._running.pop(finished.group(1), None)
                self._done += 1
            elif "cache hit" in plain:
                self._done += 1
            else:
                continue
            self._refresh()
        return len(text)

    def _refresh(self) -> None:
        if self._status is None:
            return
        running = ", ".join(self._running) or "-"
        elapsed = time.monotonic() - self._start
        self._status.update(f"[bold]{elapsed:5.0f}s[/] tasks done {self._done}; running: {running}")

    def flush(self) -> None:
        if not self._handle.closed:
            self._handle.flush()


def run_local(
    config: PipelineConfig,
    *,
    pipeline: str = "fit_for_serving",
    run_dir: str | Path | None = None,
    tracking_uri: str | None = None,
    console: Any = None,
    show_logs: bool = False,
) -> RunSummary:
    """Run ``pipeline`` with kfp.local (SubprocessRunner, use_venv=False, caching on) under ``run_dir``."""
    from kfp import local

    root = Path(run_dir).expanduser().resolve() if run_dir else settings.home_dir()
    root.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri or os.environ.get(settings.ENV_TRACKING_URI) or settings.local_tracking_uri(root)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    workspace = root / "workspace"
    workspace.mkdir(exist_ok=True)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root / "pipeline"),
        workspace_root=str(workspace),
        enable_caching=True,
        raise_on_error=True,
    )
    pipeline_func = build_pipeline(pipeline, config)
    arguments = pipeline_arguments(pipeline, config, uri)
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    log_file = logs / f"{pipeline}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    started = time.perf_counter()
    # Tasks inherit the environment: the tracking outbox and Ray/finetune files land in this run dir.
    previous_home = os.environ.get(settings.ENV_HOME)
    os.environ[settings.ENV_HOME] = str(root)
    try:
        output = _run_logged(pipeline_func, arguments, log_file, console, show_logs)
    finally:
        if previous_home is None:
            os.environ.pop(settings.ENV_HOME, None)
        else:
            os.environ[settings.ENV_HOME] = previous_home
    wall = time.perf_counter() - started
    selection = json.loads(output) if isinstance(output, str) else dict(output)
    evicted = evict_failed(root / "pipeline" / ".kfp_cache", selection)
    records = [Footprint.from_dict(r) for r in selection.get("records", [])]
    return RunSummary(
        pipeline=pipeline,
        run_dir=root,
        wall_s=wall,
        selection=selection,
        records=records,
        tracking_uri=uri,
        log_file=log_file,
        report_path=selection.get("report_path"),
        pareto_path=selection.get("pareto_path"),
        evicted_cache_entries=evicted,
        deploy_plan=_latest(root / "pipeline", "*/deploy/manifest/plan.json") if summary_has_deploy(pipeline) else None,
    )


def summary_has_deploy(pipeline: str) -> bool:
    return pipeline.replace("-", "_") == "fit_for_serving"


def _latest(root: Path, pattern: str) -> Path | None:
    found = sorted(root.glob(pattern), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _run_logged(pipeline_func: Any, arguments: dict[str, Any], log_file: Path, console: Any, show: bool) -> Any:
    import warnings

    with log_file.open("w") as handle, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*")
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        return _execute(pipeline_func, arguments, handle, console, show)


def _execute(pipeline_func: Any, arguments: dict[str, Any], handle: Any, console: Any, show: bool) -> Any:
    """Run the pipeline, sending task output to ``handle`` (and the console when ``show``)."""
    if show:
        task = pipeline_func(**arguments)
        return task.output
    status_cm = console.status("starting pipeline ...") if console is not None else contextlib.nullcontext()
    with status_cm as status:
        sink = _TaskLog(handle, status)
        # kfp.local makes its log handler on sys.stdout when a run starts, so redirecting stdout is
        # enough; other handlers (pytest's, the user's) are left alone.
        try:
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                task = pipeline_func(**arguments)
        except RuntimeError as exc:
            plain = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
            raise BackendError(f"the local pipeline run failed: {plain} Task logs: {handle.name}") from None
    return task.output


def evict_failed(cache_dir: Path, selection: dict[str, Any]) -> int:
    """Delete cache entries that produced a failed variant, so the next run retries that variant."""
    failed = selection.get("failed") or {}
    dirs = selection.get("variant_dirs") or {}
    targets = [dirs[name] for name in failed if name in dirs]
    if not targets or not cache_dir.exists():
        return 0
    evicted = 0
    for entry in cache_dir.glob("*.json"):
        text = entry.read_text()
        if any(json.dumps(t)[1:-1] in text for t in targets):
            entry.unlink()
            evicted += 1
    return evicted


NARROW_LABELS = {"variant": "variant", "accuracy": "acc", "disk_bytes": "disk", "peak_rss_serve_bytes": "RSS",
                 "latency_ms_b1_p95": "p95 ms"}


def print_summary(summary: RunSummary, console: Any) -> None:
    """The variant table (rich), the chosen variant for the budget, and where everything is."""
    from rich.table import Table

    from tightfit.select.report import COLUMNS, cell

    front = set(summary.selection.get("front") or [])
    reasons = summary.selection.get("reasons") or {}
    from rich import box

    # A terminal narrower than the full table gets the headline columns only (the HTML report and MLflow
    # keep every figure); cells fold rather than being cut with an ellipsis.
    columns = list(COLUMNS)
    if console.width < 150:
        columns = [(k, NARROW_LABELS[k]) for k, _ in COLUMNS if k in NARROW_LABELS]
    table = Table(title=f"tightfit {summary.pipeline}: {len(summary.records)} variants", box=box.SIMPLE_HEAD,
                  padding=(0, 1), pad_edge=False)
    for key, label in columns:
        table.add_column(label, justify="left" if key in ("variant", "chain", "status") else "right",
                         overflow="fold", no_wrap=key != "chain")
    table.add_column("fits", no_wrap=True, min_width=8)
    for record in summary.records:
        style = "bold green" if record.variant == summary.chosen else ("red" if not record.ok else None)
        mark = "chosen" if record.variant == summary.chosen else ("yes" if record.variant in summary.selection.get("fitting", []) else "no")
        if record.variant in front:
            mark += " *"
        table.add_row(*[cell(record, key) for key, _ in columns], mark, style=style)
    console.print(table)
    console.print("[dim]* on the Pareto front (accuracy vs disk, serving memory, latency)[/]")
    console.print(f"target: {summary.selection.get('target_description', '-')}")
    if summary.chosen:
        console.print(f"[bold green]chosen variant:[/] {summary.chosen}")
    else:
        console.print("[bold red]no variant fits the target[/]")
        for name, why in reasons.items():
            console.print(f"  {name}: {'; '.join(why)}")
    for name, error in summary.failed.items():
        console.print(f"[red]failed variant[/] {name}: {error}")
    if summary.evicted_cache_entries:
        console.print(f"[dim]{summary.evicted_cache_entries} cache entries of failed variants removed; a rerun retries them[/]")
    from tightfit.pipelines.run_notes import run_notes

    for line in run_notes(summary.run_dir, summary.selection):  # training, noisy figures, refused MLflow ops
        console.print(line, soft_wrap=True, markup=False)
    console.print(f"report:      {summary.report_path or '-'}")
    console.print(f"pareto plot: {summary.pareto_path or '-'}")
    if summary.deploy_plan is not None:
        plan = json.loads(summary.deploy_plan.read_text())
        state = "RayService manifest beside it" if plan.get("deployed") else f"not deployed: {plan.get('error')}"
        console.print(f"serving:     {summary.deploy_plan} ({state})")
    console.print(f"MLflow UI:   {summary.mlflow_ui_command()}")
    console.print(f"task logs:   {summary.log_file}")
    console.print(f"wall time:   {summary.wall_s:.1f} s")
