"""What every KFP component body shares: the step stopwatch, quiet logs, Metrics artifacts, JSON parameters,
and how a failed step fails its task.

Imported first by each component body (``steps``, ``tracking_steps``, ``serve_steps``), so ``BODY_START``
marks when the body began.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ELAPSED = "elapsed_s"
STARTED_AT, ENDED_AT = "started_at", "ended_at"
BODY_START = time.perf_counter()
"""When the component body began: its first statement imports this module."""
BODY_START_WALL = time.time()


@contextmanager
def stopwatch(into: dict[str, float], key: str = ELAPSED) -> Iterator[None]:
    """Record the step's own compute time in ``into[key]``: from the component body's start (library
    imports included) to the end of the block. Interpreter start-up and the KFP executor are not in it.
    The wall-clock window (``started_at``/``ended_at``, epoch seconds) goes beside it, so a run shows which
    steps overlapped (profiles must not overlap heavy work)."""
    try:
        yield
    finally:
        into[key] = round(time.perf_counter() - BODY_START, 3)
        into[STARTED_AT], into[ENDED_AT] = round(BODY_START_WALL, 3), round(time.time(), 3)


def quiet() -> None:
    """Quiet, bounded library logs inside a component process. Through the environment, so a task that never
    needs transformers (tracking, selection, deploy) does not pay for importing it; where the task body runs
    in a process that has already imported it, its verbosity is set directly."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    transformers = sys.modules.get("transformers")
    if transformers is not None:
        transformers.logging.set_verbosity_error()


def log_stats(artifact: Any, figures: dict[str, Any]) -> None:
    """Log ``figures`` on a Metrics artifact and write them to its file too: kfp.local treats a cached
    output artifact whose file is missing as a cache miss, so a metrics-only artifact must exist on disk."""
    numbers = {k: float(v) for k, v in figures.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    for key, value in numbers.items():
        artifact.log_metric(key, value)
    path = Path(artifact.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(numbers, sort_keys=True))


def read_text(path: str) -> str:
    return Path(path).read_text()


def model_uri(registered_model: str, alias: str) -> str:
    """``models:/NAME@ALIAS`` (``tightfit.names.model_uri``)."""
    from tightfit import names

    return names.model_uri(registered_model, alias)


def tracking_uri(value: str) -> str | None:
    """The tracking URI given to the task, else ``MLFLOW_TRACKING_URI`` (set from a Secret on a cluster)."""
    return value or os.environ.get("MLFLOW_TRACKING_URI") or None


def as_object(value: Any) -> Any:
    """A JSON string parameter as its object. kfp.local hands a str output that holds JSON to the next task
    already parsed; a cluster hands the string: accept both."""
    if isinstance(value, str):
        return json.loads(value) if value else None
    return value


# ----------------------------------------------------------------------------------------- failures


def error_line(exc: BaseException) -> str:
    """One line for an error: a ``TightfitError``'s own message (it names the problem and the fix); for any
    other error its type, message and where it was raised."""
    from tightfit.errors import TightfitError

    text = " ".join(str(exc).split())
    if isinstance(exc, TightfitError):
        return f"{type(exc).__name__}: {text}"
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" (at {Path(frame.filename).name}:{frame.lineno})" if frame else ""
    return f"{type(exc).__name__}: {text}{where}"


_FAILURE_RE = re.compile(
    r"^tightfit: (?:variant '(?P<variant>[^']+)' failed at (?P<variant_step>[\w-]+)|(?P<step>[\w-]+) failed): "
    r"(?P<cause>.+)$"
)


@dataclass(frozen=True)
class TaskFailure:
    """The one line a failed component prints to stderr: the step, the variant (loop steps) and the cause.

    The same line is what KFP shows in the task's log and what ``tightfit run`` reports (it reads the line
    back with ``parse``), so the format lives here only.
    """

    step: str
    cause: str
    variant: str = ""

    def line(self) -> str:
        where = f"variant {self.variant!r} failed at {self.step}" if self.variant else f"{self.step} failed"
        return f"tightfit: {where}: {self.cause}"

    @classmethod
    def parse(cls, line: str) -> TaskFailure | None:
        """The failure a ``line()`` describes, or None for any other line."""
        match = _FAILURE_RE.match(line.strip())
        if match is None:
            return None
        if match["variant"]:
            return cls(step=match["variant_step"], cause=match["cause"], variant=match["variant"])
        return cls(step=match["step"], cause=match["cause"])


_EVENT_RE = re.compile(r"^tightfit-task: (?P<event>started|done) (?P<step>[\w-]+)(?: variant=(?P<variant>\S+))?$")


@dataclass(frozen=True)
class TaskEvent:
    """The line a component body prints when it starts and when it is done: ``tightfit run`` reads it to show
    which variant a loop task is working on (kfp.local names only the task, and runs two iterations at once)."""

    event: str
    step: str
    variant: str = ""

    def line(self) -> str:
        return f"tightfit-task: {self.event} {self.step}" + (f" variant={self.variant}" if self.variant else "")

    @classmethod
    def parse(cls, line: str) -> TaskEvent | None:
        match = _EVENT_RE.match(line.strip())
        return None if match is None else cls(match["event"], match["step"], match["variant"] or "")


@contextmanager
def fail_task(step: str, variant: str = "") -> Iterator[None]:
    """Run a component body so that an error fails its KFP task with one clear line.

    The line (``TaskFailure``) goes to stderr, then the process exits 1: KFP marks the task failed, so it
    is never cached and never handed downstream as a result. An error that is not a ``TightfitError`` (a
    bug, not a user's problem) keeps its traceback above the line. A ``TaskEvent`` line marks the start and
    the successful end.
    """
    from tightfit.errors import TightfitError

    print(TaskEvent("started", step, variant).line(), flush=True)
    try:
        yield
    except Exception as exc:
        if not isinstance(exc, TightfitError):
            traceback.print_exc()
        print(TaskFailure(step, error_line(exc), variant).line(), file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    print(TaskEvent("done", step, variant).line(), flush=True)
