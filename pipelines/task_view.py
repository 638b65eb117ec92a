"""A pipeline run's tasks as a person follows them: one row per task and per variant of a loop task.

The plan comes from the pipeline's own IR (its tasks, their order, which run once per loop item) and the
loop items; states come from what kfp.local reports per task (``Executing``, ``cache hit``, ``finished
with status``, ``Skipping``) and from the line each component body prints when it starts and ends
(``TaskEvent``: kfp.local names only the task, and runs two loop iterations at once, so the component
says which variant it works on). Everything is passed on to a ``tightfit.progress.Reporter``: a live
table in a terminal, one line per task start and end elsewhere.

Estimates of what is left come from the previous run's task times (``logs/task-times.json``).
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tightfit.components.common import TaskEvent, TaskFailure

from tightfit.progress import CACHED, DONE, FAILED, PENDING, RUNNING, SKIPPED, Reporter

TASK_TIMES_FILE = "task-times.json"


@dataclass(frozen=True)
class PlannedTask:
    """One row: a root task, or a loop task for one variant."""

    key: str
    task: str  # the KFP task name (compress-2)
    step: str  # the component (compress)
    label: str
    variant: str = ""
    detail: str = ""


def _step(component_ref: str) -> str:
    """``comp-compress-2`` -> ``compress``; ``comp-prepare-data`` -> ``prepare_data``."""
    return re.sub(r"-\d+$", "", component_ref.removeprefix("comp-")).replace("-", "_")


def _ordered(dag: Any) -> list[str]:
    """A DAG's task names with every task after the ones it depends on (ties by name)."""
    names = sorted(dag.tasks)
    done: list[str] = []
    while len(done) < len(names):
        ready = [n for n in names if n not in done and all(d in done or d not in names
                                                           for d in dag.tasks[n].dependent_tasks)]
        done.extend(ready or [n for n in names if n not in done][:1])
    return done


def plan_tasks(pipeline_spec: Any, items: list[dict[str, Any]]) -> list[PlannedTask]:
    """Every row of a run, in the order they run: root tasks, and each loop task once per item."""
    out: list[PlannedTask] = []

    def walk(dag: Any) -> None:
        for name in _ordered(dag):
            task = dag.tasks[name]
            component = pipeline_spec.components[task.component_ref.name]
            if component.HasField("dag"):
                if task.HasField("parameter_iterator") or task.HasField("artifact_iterator"):
                    loop = component.dag
                    for item in items:
                        variant = str(item["variant"])
                        for inner in _ordered(loop):
                            step = _step(loop.tasks[inner].component_ref.name)
                            chain = str(item.get("chain", ""))
                            out.append(PlannedTask(f"{inner}:{variant}", inner, step, f"{step.replace('_', ' ')} "
                                                   f"{variant}", variant, chain if chain != variant else ""))
                else:
                    walk(component.dag)  # a condition: its tasks run (or are skipped) once
                continue
            display = task.task_info.name or name
            out.append(PlannedTask(name, name, _step(task.component_ref.name), display.replace("-", " ")))

    walk(pipeline_spec.root.dag)
    return out


class TaskView:
    """Turns kfp.local's task events and the components' lines into reporter events for the planned rows."""

    def __init__(self, reporter: Reporter, planned: list[PlannedTask], expected: dict[str, float] | None = None):
        self.reporter = reporter
        self.planned = {p.key: p for p in planned}
        self._lock = threading.RLock()
        self._kfp_ends: dict[str, int] = {}
        for p in planned:
            reporter.plan(p.key, p.label, expected_s=(expected or {}).get(p.key))

    def _rows(self, task: str, states: tuple[str, ...]) -> list[PlannedTask]:
        return [p for p in self.planned.values() if p.task == task and self.reporter.tasks[p.key].state in states]

    def kfp_event(self, kind: str, task: str, status: str = "") -> None:
        """``started`` / ``finished`` (with KFP's status) / ``cached`` / ``skipped`` for a KFP task name."""
        with self._lock:
            if task in self.planned:  # a root task: the name is the row
                row: PlannedTask | None = self.planned[task]
            elif kind == "finished":
                # A loop task's row is ended by its component's line, which comes first; only when KFP counts
                # more ends than rows ended (a body that died before printing) the oldest running row ends here.
                self._kfp_ends[task] = self._kfp_ends.get(task, 0) + 1
                ended = len(self._rows(task, (DONE, FAILED)))
                running = self._rows(task, (RUNNING,))
                row = running[0] if running and self._kfp_ends[task] > ended else None
            else:
                pending = self._rows(task, (PENDING,))
                row = pending[0] if pending else None
            if row is None:
                return
            if kind == "started":
                self.reporter.start(row.key, row.label, detail=row.detail)
            elif kind == "cached":
                self.reporter.finish(row.key, CACHED)
            elif kind == "skipped":
                self.reporter.finish(row.key, SKIPPED)
            elif kind == "finished" and self.reporter.tasks[row.key].state == RUNNING:
                self.reporter.finish(row.key, DONE if status == "SUCCESS" else FAILED)

    def task_line(self, line: str) -> None:
        """A line a task printed: its start/end event or its failure names the variant of a loop row."""
        failure = TaskFailure.parse(line)
        event = TaskEvent.parse(line) if failure is None else None
        step, variant = (failure.step, failure.variant) if failure else (event.step, event.variant) if event else ("", "")
        if not variant:
            return
        with self._lock:
            rows = [p for p in self.planned.values() if p.step == step and p.variant == variant]
            if not rows:
                return
            row = rows[0]
            state = self.reporter.tasks[row.key].state
            if event is not None and event.event == "started" and state != RUNNING:
                # kfp.local started another iteration's row for this task first: hand that start over
                others = [p for p in self._rows(row.task, (RUNNING,)) if p.key != row.key]
                if others:
                    other = self.reporter.tasks[others[-1].key]
                    other.state, other.started = PENDING, None
                self.reporter.start(row.key, row.label, detail=row.detail)
            elif event is not None and event.event == "done":
                self.reporter.finish(row.key, DONE)
            elif failure is not None:
                self.reporter.finish(row.key, FAILED, detail=failure.cause[:160])

    def task_times(self) -> dict[str, float]:
        """Seconds each row took in this run (rows that ran and finished)."""
        now = self.reporter.clock()
        return {k: round(t.elapsed(now) or 0.0, 1) for k, t in self.reporter.tasks.items()
                if k in self.planned and t.state == DONE}


def read_task_times(logs: Path) -> dict[str, float]:
    """The previous run's task times (empty when there was none)."""
    try:
        data = json.loads((logs / TASK_TIMES_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in data.items() if isinstance(v, int | float)}


def write_task_times(logs: Path, times: dict[str, float]) -> None:
    """Keep this run's task times for the next run's estimates (rows served from the cache keep the old)."""
    merged = {**read_task_times(logs), **times}
    (logs / TASK_TIMES_FILE).write_text(json.dumps(merged, indent=1, sort_keys=True))
