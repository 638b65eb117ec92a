"""Progress a person can follow while work runs: each task's state, what it is doing, how long it took,
and an estimate of what is left.

Long operations (a pipeline run, a compression chain, distillation, Ray Train epochs, Serve replicas
starting) report to a ``Reporter``. In a terminal ``LiveReporter`` redraws one table (state, task, detail,
progress, elapsed, left); anywhere else (CI, ``> log``) ``LineReporter`` writes one plain line when a task
starts and one when it ends, with its duration; the base ``Reporter`` reports nothing (``-q``, or a
library call made without one). ``reporter_for`` picks.

States: ``pending`` (known, not started), ``running``, ``cached`` (served from a cache), ``done``,
``failed``, ``skipped`` (a condition was false, or an upstream task failed). Estimates come from a task's own rate (``completed`` of ``total``) or from ``expected_s`` (e.g.
the same task's time in the previous run).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

PENDING, RUNNING, CACHED, DONE, FAILED, SKIPPED = "pending", "running", "cached", "done", "failed", "skipped"
STATES = (PENDING, RUNNING, CACHED, DONE, FAILED, SKIPPED)
FINISHED = frozenset({CACHED, DONE, FAILED, SKIPPED})


def format_duration(seconds: float | None) -> str:
    """``0.4 s``, ``12.3 s``, ``3 min 05 s``, ``1 h 02 min`` (``-`` for unknown)."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@dataclass
class Task:
    """One unit of work as a person sees it."""

    key: str
    label: str
    state: str = PENDING
    detail: str = ""
    total: float | None = None
    completed: float = 0.0
    unit: str = ""
    expected_s: float | None = None
    started: float | None = None
    ended: float | None = None

    def elapsed(self, now: float) -> float | None:
        if self.started is None:
            return None
        return (self.ended if self.ended is not None else now) - self.started

    def remaining(self, now: float) -> float | None:
        """Seconds left: from the task's own rate when it counts steps, else from ``expected_s``."""
        if self.state in FINISHED:
            return 0.0
        elapsed = self.elapsed(now)
        if self.total and self.completed > 0 and elapsed:
            return max(0.0, elapsed * (self.total - self.completed) / self.completed)
        if self.expected_s is not None:
            return max(0.0, self.expected_s - (elapsed or 0.0))
        return None


class Reporter:
    """Receives progress events and keeps the tasks; this base class shows nothing (quiet)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.tasks: dict[str, Task] = {}
        self.clock = clock
        self.began = clock()
        self._lock = threading.RLock()

    # events ---------------------------------------------------------------------------------------
    def plan(self, key: str, label: str, *, expected_s: float | None = None) -> Task:
        """Announce a task that will run later (state ``pending``)."""
        with self._lock:
            task = self.tasks.setdefault(key, Task(key, label))
            task.expected_s = expected_s if expected_s is not None else task.expected_s
            self._changed(task, "plan")
            return task

    def start(self, key: str, label: str | None = None, *, total: float | None = None, unit: str = "",
              detail: str = "", expected_s: float | None = None) -> Task:
        with self._lock:
            task = self.tasks.setdefault(key, Task(key, label or key))
            task.label = label or task.label
            task.state, task.detail, task.total, task.unit = RUNNING, detail, total, unit
            task.expected_s = expected_s if expected_s is not None else task.expected_s
            task.started, task.ended, task.completed = self.clock(), None, 0.0
            self._changed(task, "start")
            return task

    def update(self, key: str, *, completed: float | None = None, advance: float = 0.0, detail: str | None = None,
               total: float | None = None, milestone: bool = False) -> None:
        """Move a running task on; ``milestone`` marks an update worth a line of its own in a log."""
        with self._lock:
            task = self.tasks.get(key)
            if task is None:
                return
            if total is not None:
                task.total = total
            task.completed = completed if completed is not None else task.completed + advance
            if detail is not None:
                task.detail = detail
            self._changed(task, "milestone" if milestone else "update")

    def finish(self, key: str, state: str = DONE, detail: str | None = None, label: str | None = None) -> None:
        if state not in FINISHED:
            raise ValueError(f"a task finishes as one of {sorted(FINISHED)}, not {state!r}")
        with self._lock:
            task = self.tasks.setdefault(key, Task(key, label or key))
            task.label = label or task.label
            now = self.clock()
            if task.started is None:
                task.started = now
            task.ended, task.state = now, state
            if task.total:
                task.completed = task.total if state != FAILED else task.completed
            if detail is not None:
                task.detail = detail
            self._changed(task, "finish")

    def note(self, text: str) -> None:
        """A one-off line (a plan, a warning) between task updates."""

    def close(self) -> None:
        """Stop drawing (the last state stays on screen)."""

    # helpers ----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def step(self, key: str, label: str, **start: Any) -> Iterator[Task]:
        """``start`` on entry; ``done`` on exit, ``failed`` (with the error) when the block raises."""
        task = self.start(key, label, **start)
        try:
            yield task
        except BaseException as exc:
            self.finish(key, FAILED, detail=f"{type(exc).__name__}: {exc}"[:160])
            raise
        self.finish(key, DONE)

    def remaining_s(self) -> float | None:
        """Estimated seconds left over the tasks not finished (None when some have no estimate)."""
        now = self.clock()
        left = [t.remaining(now) for t in self.tasks.values() if t.state not in FINISHED]
        return None if any(v is None for v in left) else float(sum(v or 0.0 for v in left))

    def _changed(self, task: Task, event: str) -> None:
        """Subclasses draw here."""

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LineReporter(Reporter):
    """One plain line per task start and end (with its duration), and per milestone: for logs and CI."""

    def __init__(self, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self.stream = stream

    def _write(self, text: str) -> None:
        stream = self.stream or sys.stdout
        stream.write(f"{time.strftime('%H:%M:%S')} {text}\n")
        stream.flush()

    def _changed(self, task: Task, event: str) -> None:
        detail = f"  {task.detail}" if task.detail else ""
        if event == "start":
            self._write(f"start   {task.label}{detail}")
        elif event == "finish":
            took = {CACHED: "from cache", SKIPPED: "not run"}.get(task.state) or format_duration(task.elapsed(self.clock()))
            self._write(f"{task.state:<7} {task.label} ({took}){detail}")
        elif event == "milestone":
            count = f" {task.completed:g}/{task.total:g} {task.unit}".rstrip() if task.total else ""
            self._write(f"        {task.label}{count}{detail}")

    def note(self, text: str) -> None:
        for line in text.splitlines():
            self._write(line)


_STYLE = {PENDING: "dim", RUNNING: "bold yellow", CACHED: "cyan", DONE: "green", FAILED: "bold red", SKIPPED: "dim"}
_MARK = {PENDING: "·", RUNNING: "▶", CACHED: "≡", DONE: "✓", FAILED: "✗", SKIPPED: "-"}


class LiveReporter(Reporter):
    """A table redrawn in place in a terminal (rich ``Live``): one row per task, a footer with the total."""

    def __init__(self, console: Any, title: str = "", clock: Callable[[], float] = time.monotonic) -> None:
        from rich.live import Live

        super().__init__(clock)
        # Pin the stream the console draws on now: a console made without a file follows ``sys.stdout``,
        # which the work being watched may redirect (kfp.local's task logs), and the table would vanish there.
        console.file = console.file
        self.console = console
        self.title = title
        self.live = Live(console=console, get_renderable=self.render, refresh_per_second=4, transient=False,
                         redirect_stdout=False, redirect_stderr=False)
        self._started = False

    def _changed(self, task: Task, event: str) -> None:
        if not self._started:
            self._started = True
            self.live.start()

    def render(self) -> Any:
        from rich import box
        from rich.table import Table

        now = self.clock()
        table = Table(box=box.SIMPLE_HEAD, title=self.title or None, title_justify="left", expand=False,
                      padding=(0, 1), show_edge=False)
        with self._lock:
            tasks = list(self.tasks.values())
            counted = any(t.total for t in tasks)
            table.add_column("state", no_wrap=True)
            table.add_column("task", no_wrap=True)
            table.add_column("now", overflow="fold")
            for name in ("progress", "elapsed", "left") if counted else ("elapsed", "left"):
                table.add_column(name, justify="right", no_wrap=True)
            for t in tasks:
                shown = [f"{t.completed:g}/{t.total:g} {t.unit}".strip() if t.total else ""] if counted else []
                left = t.remaining(now) if t.state == RUNNING else None
                table.add_row(f"[{_STYLE[t.state]}]{_MARK[t.state]} {t.state}[/]", t.label, t.detail, *shown,
                              format_duration(t.elapsed(now)), format_duration(left) if left is not None else "")
            done = sum(t.state in FINISHED for t in tasks)
            remaining = self.remaining_s()
        table.caption = (f"{done}/{len(tasks)} tasks · elapsed {format_duration(now - self.began)}"
                         + (f" · about {format_duration(remaining)} left" if remaining else ""))
        table.caption_justify = "left"
        return table

    def note(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def close(self) -> None:
        if self._started:
            self.live.refresh()
            self.live.stop()
            self._started = False


def reporter_for(console: Any = None, *, quiet: bool = False, title: str = "") -> Reporter:
    """The reporter for where output goes: nothing (``quiet``), a live table (a terminal), lines (else)."""
    if quiet:
        return Reporter()
    if console is None:
        from rich.console import Console

        console = Console()
    if console.is_terminal and not console.is_dumb_terminal:
        return LiveReporter(console, title=title)
    return LineReporter(console.file)


def as_reporter(progress: Reporter | bool | None) -> Reporter:
    """A library argument to a reporter: a reporter as given, True for ``reporter_for()``, else quiet."""
    if isinstance(progress, Reporter):
        return progress
    return reporter_for() if progress else Reporter()


@contextlib.contextmanager
def polled(report: Callable[[], None], every_s: float, name: str) -> Iterator[None]:
    """Call ``report`` every ``every_s`` seconds on a daemon thread while the block runs, and once more when
    it ends (the final state). A failing call is skipped: the thing watched may not be up yet."""
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(every_s):
            with contextlib.suppress(Exception):
                report()

    thread = threading.Thread(target=poll, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=every_s * 3)
        with contextlib.suppress(Exception):
            report()
