"""The local outbox: every tracking record is written here first, then synced to MLflow when it answers.

An append-only JSONL file (``mlflow-outbox.jsonl`` under the run dir). Each line is either an *op* (start a
run, log to it, end it, register it) or a *done* marker naming the op and the MLflow run it landed in.
Ops carry a stable ``record_id`` (also an MLflow tag on the run), so replaying the outbox, from this
process or a rerun, never creates a run twice. Several processes (KFP tasks) may share one outbox: writes
and syncs take a file lock. An op MLflow refuses (or that cannot be applied: its run was never created) is
never dropped silently: it is kept with the reason in the dead-letter file beside the outbox
(``mlflow-dead-letters.jsonl``), which ``tightfit compare`` and the run summary report.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tightfit import names

OP_START = "start"
OP_LOG = "log"
OP_END = "end"
OP_REGISTER = "register"
OP_KINDS = (OP_START, OP_LOG, OP_END, OP_REGISTER)


def new_record_id() -> str:
    """A fresh record id (``tf-`` + 24 hex digits: never mistaken for a 32-digit MLflow run id)."""
    return "tf-" + uuid.uuid4().hex[:24]


def stable_record_id(*parts: str) -> str:
    """A record id derived from stable parts (parent record + variant name): the same inputs, the same id."""
    import hashlib

    return "tf-" + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:24]


def is_record_id(handle: str) -> bool:
    return handle.startswith("tf-")


@dataclass
class Op:
    """One buffered tracking operation on the run named by ``record_id``."""

    kind: str
    record_id: str
    payload: dict[str, Any] = field(default_factory=dict)
    op_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    def to_json(self) -> str:
        return json.dumps(
            {"op": self.kind, "op_id": self.op_id, "record_id": self.record_id, "created_ms": self.created_ms, **self.payload},
            default=str,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Op:
        payload = {k: v for k, v in data.items() if k not in {"op", "op_id", "record_id", "created_ms"}}
        return cls(kind=data["op"], record_id=data["record_id"], payload=payload, op_id=data["op_id"], created_ms=data["created_ms"])


@dataclass(frozen=True)
class DeadLetter:
    """An op MLflow refused, or part of one that could not be applied, and why."""

    op: Op
    reason: str
    at_ms: int

    def describe(self) -> str:
        name = self.op.payload.get("name") or self.op.record_id
        return f"{self.op.kind} {name}: {self.reason}"


class Outbox:
    """Append-only JSONL of ops and done markers, safe to share between processes."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).expanduser().resolve()
        self.path = self.directory / names.OUTBOX_FILE
        self.lock_path = self.directory / (names.OUTBOX_FILE + ".lock")
        self.artifact_dir = self.directory / "outbox-artifacts"
        self.dead_letter_path = self.directory / names.DEAD_LETTER_FILE

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the outbox's exclusive lock (appends and syncs are serialized across processes)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.lock_path.open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _append_line(self, line: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def append(self, op: Op) -> Op:
        if op.kind not in OP_KINDS:
            raise ValueError(f"unknown outbox op {op.kind!r}")
        with self.locked():
            self._append_line(op.to_json())
        return op

    def mark_done(self, op: Op, run_id: str | None, **info: Any) -> None:
        """Record that ``op`` reached MLflow (call with the lock held, i.e. inside ``locked()``)."""
        self._append_line(json.dumps({"done": op.op_id, "record_id": op.record_id, "run_id": run_id, **info}))

    def add_dead_letter(self, op: Op, reason: str) -> None:
        """Keep ``op`` with ``reason`` in the dead-letter file (call with the lock held, i.e. inside ``locked()``)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"reason": reason[:2000], "at_ms": int(time.time() * 1000), "op": json.loads(op.to_json())},
                          default=str)
        with self.dead_letter_path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def dead_letters(self) -> list[DeadLetter]:
        """Every kept refusal, oldest first (torn lines skipped)."""
        if not self.dead_letter_path.exists():
            return []
        out = []
        for raw in self.dead_letter_path.read_text(encoding="utf-8").splitlines():
            try:
                data = json.loads(raw)
                out.append(DeadLetter(Op.from_dict(data["op"]), str(data["reason"]), int(data["at_ms"])))
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
        return out

    def dead_letter_report(self, limit: int = 3) -> list[str]:
        """Lines for a person: how many ops were refused, where they are kept, the newest reasons ([] if none)."""
        letters = self.dead_letters()
        if not letters:
            return []
        lines = [f"{len(letters)} MLflow operation(s) refused or not applied, kept in {self.dead_letter_path}:"]
        lines += [f"  {letter.describe()[:300]}" for letter in letters[-limit:]]
        if len(letters) > limit:
            lines.append(f"  ... and {len(letters) - limit} more")
        return lines

    def read(self) -> tuple[list[Op], dict[str, str], dict[str, str | None]]:
        """(all ops in order, done op ids -> record id, record id -> MLflow run id). Torn lines are skipped."""
        ops: list[Op] = []
        done: dict[str, str] = {}
        runs: dict[str, str | None] = {}
        if not self.path.exists():
            return ops, done, runs
        for raw in self.path.read_text(encoding="utf-8").splitlines():
            if not raw.strip():
                continue
            try:
                data = json.loads(raw)
            except json.JSONDecodeError:
                continue  # a line torn by a crash mid-write; its op was never acknowledged
            if "done" in data:
                done[data["done"]] = data["record_id"]
                if data.get("run_id"):
                    runs[data["record_id"]] = data["run_id"]
            elif "op" in data:
                ops.append(Op.from_dict(data))
        return ops, done, runs

    def pending(self) -> list[Op]:
        ops, done, _ = self.read()
        return [op for op in ops if op.op_id not in done]

    def run_id_for(self, record_id: str) -> str | None:
        return self.read()[2].get(record_id)

    def start_op(self, record_id: str) -> Op | None:
        """The op that creates ``record_id``'s run (its name, tags, params, parent), if buffered here."""
        for op in self.read()[0]:
            if op.kind == OP_START and op.record_id == record_id:
                return op
        return None

    def compact(self, max_bytes: int = 1 << 20) -> bool:
        """When every op is synced and the file is large, keep only record id -> run id (call under the lock)."""
        if not self.path.exists() or self.path.stat().st_size <= max_bytes:
            return False
        ops, done, runs = self.read()
        if any(op.op_id not in done for op in ops):
            return False
        tmp = self.path.with_suffix(".compact")
        tmp.write_text(
            "".join(json.dumps({"done": f"compacted-{rid}", "record_id": rid, "run_id": run}) + "\n" for rid, run in runs.items()),
            encoding="utf-8",
        )
        os.replace(tmp, self.path)
        return True

    def stash_file(self, record_id: str, src: str | Path, name: str | None = None) -> Path:
        """Keep a copy of a small artifact file until it is synced; returns the kept path."""
        import shutil

        dst_dir = self.artifact_dir / record_id
        dst_dir.mkdir(parents=True, exist_ok=True)
        dst = dst_dir / (name or Path(src).name)
        if Path(src).resolve() != dst.resolve():
            shutil.copy2(src, dst)
        return dst
