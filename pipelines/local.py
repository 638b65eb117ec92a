"""Run a tightfit pipeline on this machine with ``kfp.local`` (what ``tightfit run`` does).

Everything lives under one run directory (default ``./tightfit-runs``): the pipeline root and its task
cache, the MLflow SQLite store and artifacts, and the log of every task. Caching is on, so an unchanged
rerun is served from cache. A failed step fails its KFP task (never cached); when only some variants
failed, kfp.local has skipped the fan-in, so a second run over the variants that succeeded, served from
the cache, selects among them, and a later rerun redoes only the failed variants.
Ray runs locally inside the finetune task. Task logs go to a file; the console shows each task's progress
(``tightfit.pipelines.task_view``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tightfit.components.common import TaskFailure
from tightfit.pipelines.kfp_watch import KfpRun, run_once
from tightfit.pipelines.task_view import TaskView, plan_tasks, read_task_times, write_task_times

from tightfit import settings
from tightfit.config import PipelineConfig
from tightfit.errors import BackendError, ConfigError
from tightfit.footprint import Footprint
from tightfit.progress import LineReporter, Reporter, reporter_for

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
    deploy_plan: Path | None = None
    kfp_runs: list[KfpRun] = field(default_factory=list)
    """What KFP reported for each kfp.local run: one, or two when variants failed (all, then the rest)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def chosen(self) -> str | None:
        return self.selection.get("chosen")

    @property
    def failures(self) -> dict[str, TaskFailure]:
        """The variants whose compress or profile task failed, with the step and the cause."""
        return self.kfp_runs[0].variant_failures() if self.kfp_runs else {}

    @property
    def failed(self) -> dict[str, str]:
        """Variant -> the one-line cause of its failure."""
        out = dict(self.selection.get("failed") or {})
        out.update({name: failure.cause for name, failure in self.failures.items()})
        return out

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


def run_local(
    config: PipelineConfig,
    *,
    pipeline: str = "fit_for_serving",
    run_dir: str | Path | None = None,
    tracking_uri: str | None = None,
    console: Any = None,
    show_logs: bool = False,
    quiet: bool = False,
) -> RunSummary:
    """Run ``pipeline`` with kfp.local (SubprocessRunner, use_venv=False, caching on) under ``run_dir``.

    When some variants fail, the run fails (kfp.local skips ``select``); a second run over the variants that
    succeeded (same arguments otherwise, so every finished task is a cache hit) selects among them. Any other
    failed step is a ``BackendError`` with the step's one-line cause.
    """
    from kfp import local

    root = Path(run_dir).expanduser().resolve() if run_dir else settings.home_dir()
    root.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri or os.environ.get(settings.ENV_TRACKING_URI) or settings.local_tracking_uri(root)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    workspace = root / "workspace"
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
    reporter = _reporter(console, show_logs, quiet, pipeline)
    view = TaskView(reporter, plan_tasks(pipeline_func.pipeline_spec, arguments["variants"]), read_task_times(logs))
    with log_file.open("w") as handle, _task_environment(root), reporter:
        echo = sys.stdout if show_logs else None

        def run(args: dict[str, Any]) -> KfpRun:
            workspace.mkdir(exist_ok=True)  # kfp.local removes it after each run
            return run_once(pipeline_func, args, handle, view=view, echo=echo)

        runs = [run(arguments)]
        survivors = _survivors(runs[0], arguments["variants"], log_file)
        if survivors is not None:
            failed = _failed_variants(runs[0], arguments["variants"])
            reporter.note(f"{len(failed)} variant(s) failed; selecting among the other {len(survivors)} "
                          "(a second run, served from the cache)")
            runs.append(run({**arguments, "variants": survivors, "failed_variants": json.dumps(failed)}))
            if runs[-1].error:
                raise BackendError(_failure_message(runs[-1], log_file))
    write_task_times(logs, view.task_times())
    wall = time.perf_counter() - started
    final = runs[-1]
    selection = json.loads(final.output) if isinstance(final.output, str) else dict(final.output)
    records = _records_in_order(selection, arguments["variants"])
    ran_deploy = "deploy" in final.started or "deploy" in final.cache_hits
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
        deploy_plan=_latest(root / "pipeline", "*/deploy/manifest/plan.json") if ran_deploy else None,
        kfp_runs=runs,
    )


def _survivors(first: KfpRun, items: list[dict[str, Any]], log_file: Path) -> list[dict[str, Any]] | None:
    """The loop items to select among after ``first`` failed (None when it succeeded).

    Only failed variants can be left out: a run that failed anywhere else, or without a failure line that
    names a variant, or in which every variant failed, is a ``BackendError``.
    """
    if first.succeeded:
        return None
    failed = first.variant_failures()
    survivors = [item for item in items if item["variant"] not in failed]
    if not failed or not survivors or first.step_failures():
        raise BackendError(_failure_message(first, log_file))
    return survivors


def _failure_message(run: KfpRun, log_file: Path) -> str:
    """One line: the failed steps with their causes (or kfp.local's own message), and where the logs are."""
    causes = [f.line().removeprefix("tightfit: ") for f in run.failures]
    if len(run.failed_tasks) > len(run.failures):  # a task without its line: killed (a signal, the OOM killer)
        silent = run.failed_tasks if not run.failures else ["another task"]
        causes.append(f"{', '.join(silent)} stopped without an error of its own (killed by a signal or out of "
                      "memory?); a rerun takes every finished task from the cache")
    return f"the local pipeline run failed: {'; '.join(causes) or run.error} Task logs: {log_file}"


def _failed_variants(first: KfpRun, items: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """``{variant: {"chain", "error"}}`` for the variants whose tasks failed in ``first``: the second run hands
    them to ``select``, so the report and MLflow show them as failed records."""
    chains = {str(item["variant"]): str(item["chain"]) for item in items}
    return {
        name: {"chain": chains.get(name, "fp32"), "error": f"{failure.cause} (at {failure.step})"}
        for name, failure in first.variant_failures().items()
    }


def _records_in_order(selection: dict[str, Any], items: list[dict[str, Any]]) -> list[Footprint]:
    """The selection's records (measured and failed), in the order the variants were asked for."""
    order = {str(item["variant"]): i for i, item in enumerate(items)}
    records = [Footprint.from_dict(r) for r in selection.get("records", [])]
    return sorted(records, key=lambda r: order.get(r.variant, len(order)))


@contextlib.contextmanager
def _task_environment(root: Path) -> Iterator[None]:
    """Tasks inherit the environment: the tracking outbox and Ray/finetune files land in the run dir, and
    loop iterations that run at once share the cores (``TIGHTFIT_LOOP_THREADS``); the warnings kfp.local
    gives for cluster-only task settings are dropped."""
    from tightfit.pipelines.sweep import LOOP_PARALLELISM

    from tightfit.device import cpu_threads

    values = {settings.ENV_HOME: str(root),
              # loop iterations run LOOP_PARALLELISM at once here: each takes its share of the cores
              settings.ENV_LOOP_THREADS: str(max(1, cpu_threads() // LOOP_PARALLELISM))}
    with settings.environ(values), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*")
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        yield


def _reporter(console: Any, show_logs: bool, quiet: bool, pipeline: str) -> Reporter:
    """Where the run's progress goes: nowhere without a console or with ``quiet``; plain lines between the
    streamed task logs (``show_logs``) or outside a terminal; else a live table."""
    if console is None or quiet:
        return Reporter()
    if show_logs:
        return LineReporter(console.file)
    return reporter_for(console, title=f"tightfit run: {pipeline}")


def summary_has_deploy(pipeline: str) -> bool:
    return pipeline.replace("-", "_") == "fit_for_serving"


def _latest(root: Path, pattern: str) -> Path | None:
    found = sorted(root.glob(pattern), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


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
        failure = summary.failures.get(name)
        where = f" at {failure.step}" if failure else ""
        console.print(f"[red]variant {name} failed{where}:[/] {error}")
    for number, run in enumerate(summary.kfp_runs, 1):
        outcome = "succeeded" if run.succeeded else "failed"
        console.print(f"[dim]kfp.local run {number} ({len(run.variants)} variants) {outcome}: {run.describe()}[/]")
    if len(summary.kfp_runs) > 1:
        console.print("[dim]run 2 left the failed variants out (the rest came from the cache); a rerun retries them[/]")
    from tightfit.pipelines.run_notes import run_notes

    for line in run_notes(summary.run_dir, summary.selection):  # training, noisy figures, refused MLflow ops
        console.print(line, soft_wrap=True, markup=False)
    console.print(f"report:      {summary.report_path or '-'}", soft_wrap=True)
    console.print(f"pareto plot: {summary.pareto_path or '-'}", soft_wrap=True)
    if summary.deploy_plan is not None:
        plan = json.loads(summary.deploy_plan.read_text())
        state = "RayService manifest beside it" if plan.get("deployed") else f"not deployed: {plan.get('error')}"
        console.print(f"serving:     {summary.deploy_plan} ({state})", soft_wrap=True)
    console.print(f"task logs:   {summary.log_file}", soft_wrap=True)
    console.print(f"wall time:   {summary.wall_s:.1f} s")
