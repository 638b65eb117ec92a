"""Run a pipeline once with kfp.local and keep what KFP reports: the run's result, every task's state, and
the one-line cause of every failed task.

kfp.local 2.17.3 returns a run's outputs, or raises ``RuntimeError`` naming the first failed task; it has
no API for per-task state. What it does give per task is one log record per event ("Executing task",
"cache hit", "finished with status", "Skipping task"), logged on the root logger: a ``logging.Filter``
there (kfp.local swaps the root handlers around each task, filters stay) collects those records, and
never sees the tasks' own output. The cause of a failure is the line the failed component printed
(``tightfit.components.common.TaskFailure``); task output goes to the run's log file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from tightfit.components.common import TaskFailure
from tightfit.pipelines.task_view import TaskView

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# The records kfp.local logs per task (kfp/local/task_dispatcher.py, orchestrator/task_executor.py and
# enhanced_dag_orchestrator.py in 2.17.3).
_STARTED = re.compile(r"^Executing task '(?P<task>[^']+)'$")
_CACHE_HIT = re.compile(r"^Task (?P<task>[\w.-]+) cache hit\b")
_FINISHED = re.compile(r"^Task '(?P<task>[^']+)' finished with status (?P<status>\w+)")
_SKIPPED = re.compile(r"^Skipping (?:conditional )?task (?P<task>[\w.-]+)")


@dataclass
class KfpRun:
    """One kfp.local run as KFP reported it. Task names are the pipeline's (a loop task once per iteration)."""

    variants: list[str]
    output: Any = None
    error: str = ""
    started: list[str] = field(default_factory=list)
    cache_hits: list[str] = field(default_factory=list)
    failed_tasks: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: list[TaskFailure] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return not self.error

    def variant_failures(self) -> dict[str, TaskFailure]:
        """The failed tasks of this run's loop variants, by variant (the first failure of each)."""
        out: dict[str, TaskFailure] = {}
        for failure in self.failures:
            if failure.variant in self.variants:
                out.setdefault(failure.variant, failure)
        return out

    def step_failures(self) -> list[TaskFailure]:
        """Failed tasks outside the variant loop (the data, the baseline, select ...): the run cannot go on."""
        return [f for f in self.failures if f.variant not in self.variants]

    def describe(self) -> str:
        """``tasks: 3 ran, 9 from the cache, 1 failed`` (what KFP reported)."""
        text = f"tasks: {len(self.started)} ran, {len(self.cache_hits)} from the cache"
        return f"{text}, {len(self.failed_tasks)} failed" if self.failed_tasks else text


class _TaskRecords(logging.Filter):
    """Sees kfp.local's records on the root logger, notes each task event in a ``KfpRun`` and passes it on
    to the run's ``TaskView`` (the progress a person sees)."""

    def __init__(self, run: KfpRun, view: TaskView | None) -> None:
        super().__init__()
        self._run = run
        self._view = view

    def filter(self, record: logging.LogRecord) -> bool:
        text = _ANSI.sub("", record.getMessage()).strip()
        event, status = "", ""
        if match := _STARTED.match(text):
            self._run.started.append(match["task"])
            event = "started"
        elif match := _FINISHED.match(text):
            status = match["status"]
            if status != "SUCCESS":
                self._run.failed_tasks.append(match["task"])
            event = "finished"
        elif match := _CACHE_HIT.match(text):
            self._run.cache_hits.append(match["task"])
            event = "cached"
        elif match := _SKIPPED.match(text):
            self._run.skipped.append(match["task"])
            event = "skipped"
        if match and event and self._view is not None:
            self._view.kfp_event(event, match["task"], status)
        return True


class _TaskOutput(io.TextIOBase):
    """A stdout stand-in: every line goes to the log file (and to ``echo``); failure lines are noted."""

    def __init__(self, handle: Any, run: KfpRun, echo: Any = None, view: TaskView | None = None) -> None:
        self._handle = handle
        self._run = run
        self._echo = echo
        self._view = view
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not self._handle.closed:
            self._handle.write(text)
        if self._echo is not None:
            self._echo.write(text)
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            failure = TaskFailure.parse(line)
            if failure is not None:
                self._run.failures.append(failure)
            if self._view is not None:
                self._view.task_line(line)
        return len(text)

    def flush(self) -> None:
        if not self._handle.closed:
            self._handle.flush()
        if self._echo is not None:
            self._echo.flush()


def run_once(
    pipeline_func: Any, arguments: dict[str, Any], handle: Any, *, view: TaskView | None = None, echo: Any = None
) -> KfpRun:
    """Run ``pipeline_func(**arguments)`` once with kfp.local (already initialised) and report what KFP said.

    Task output goes to ``handle`` (and ``echo``); ``view`` follows every task (its progress reporter shows
    it). A failed run is returned with ``error`` set, not raised.
    """
    run = KfpRun(variants=[str(item["variant"]) for item in arguments.get("variants", [])])
    records = _TaskRecords(run, view)
    root = logging.getLogger()
    level = root.level
    root.addFilter(records)
    root.setLevel(logging.INFO)  # kfp.local logs cache hits outside its own logger context
    sink = _TaskOutput(handle, run, echo, view)
    try:
        # kfp.local makes its log handler on sys.stdout for each task, so redirecting stdout is enough;
        # other handlers (pytest's, the user's) are left alone.
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            task = pipeline_func(**arguments)
        run.output = task.output
    except RuntimeError as exc:  # kfp.local's report of a failed run (raise_on_error=True)
        run.error = " ".join(_ANSI.sub("", str(exc)).split())
    finally:
        sink.write("\n")
        sink.flush()
        root.removeFilter(records)
        root.setLevel(level)
    return run
