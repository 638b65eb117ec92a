"""Progress reporters: plain lines for logs, a live table for terminals, estimates of what is left."""

from __future__ import annotations

import io

import pytest

from tightfit.progress import (
    CACHED,
    FAILED,
    LineReporter,
    LiveReporter,
    Reporter,
    format_duration,
    reporter_for,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_one_per_start_and_end_with_duration() -> None:
    clock, out = Clock(), io.StringIO()
    reporter = LineReporter(out, clock=clock)
    reporter.plan("a", "compress bf16")
    reporter.start("a")
    clock.now += 12.34
    reporter.update("a", detail="quiet update")  # not a milestone: no line
    reporter.finish("a")
    reporter.finish("b", CACHED, label="profile bf16")
    with pytest.raises(RuntimeError), reporter.step("c", "select"):
        raise RuntimeError("no variant")
    lines = [line.split(" ", 1)[1] for line in out.getvalue().splitlines()]
    assert lines == [
        "start   compress bf16",
        "done    compress bf16 (12.3 s)  quiet update",  # the end line keeps the last detail
        "cached  profile bf16 (from cache)",
        "start   select",
        "failed  select (0.0 s)  RuntimeError: no variant",
    ]
    assert reporter.tasks["c"].state == FAILED


def test_estimates_come_from_the_rate_or_the_previous_run() -> None:
    clock = Clock()
    reporter = Reporter(clock=clock)
    reporter.start("steps", total=10)
    clock.now += 20
    reporter.update("steps", completed=4)
    assert reporter.tasks["steps"].remaining(clock.now) == pytest.approx(30.0)
    reporter.plan("later", "profile", expected_s=50.0)
    assert reporter.remaining_s() == pytest.approx(80.0)
    reporter.plan("unknown", "deploy")
    assert reporter.remaining_s() is None  # one task without an estimate: no total claimed


def test_live_table_in_a_terminal_and_nothing_when_quiet() -> None:
    from rich.console import Console

    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    assert isinstance(reporter_for(console), LiveReporter)
    clock = Clock()
    reporter = LiveReporter(console, clock=clock)
    reporter.plan("p", "profile int8", expected_s=30)
    reporter.start("c", "compress int8", detail="int8_dynamic", expected_s=8)
    clock.now += 5
    screen = Console(file=io.StringIO(), width=120, record=True)
    screen.print(reporter.render())
    text = screen.export_text()
    assert "running" in text and "compress int8" in text and "int8_dynamic" in text and "pending" in text
    assert "0/2 tasks · elapsed 5.0 s · about 33.0 s left" in text
    reporter.close()
    assert type(reporter_for(console, quiet=True)) is Reporter
    assert isinstance(reporter_for(Console(file=io.StringIO())), LineReporter)  # not a terminal: lines


def test_the_live_table_stays_on_its_terminal_while_stdout_is_redirected(monkeypatch: pytest.MonkeyPatch) -> None:
    """kfp.local's task logs go through a redirected ``sys.stdout``; the table must keep drawing where it began."""
    import contextlib
    import sys

    from rich.console import Console

    terminal, log = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", terminal)
    reporter = LiveReporter(Console(force_terminal=True, width=120))  # no file: it follows sys.stdout
    with contextlib.redirect_stdout(log):
        reporter.start("c", "compress int8")
        reporter.live.refresh()
        assert "compress int8" in terminal.getvalue() and "compress int8" not in log.getvalue()
        reporter.close()


def test_durations_read_like_a_person_writes_them() -> None:
    assert [format_duration(s) for s in (None, 0.44, 59.9, 65, 3725)] == ["-", "0.4 s", "59.9 s", "1 min 05 s",
                                                                           "1 h 02 min"]
