"""Reliability: how many bad inputs end in one clear line, how many faults are survived, what an attack costs.

It runs the project's own robustness tests as a user's machine would (pytest in a fresh process per group,
real processes killed by signal, a real Ray Serve app attacked with a 200 MB upload) and counts outcomes
from their JUnit reports; the tests append the figures they measure (requests without an answer during a
replica kill, the replica's peak RSS under the upload attack) to a log this script reads.

Figures (benchmarks/results/reliability.json):
- ``bad_inputs_tested`` / ``bad_inputs_clear``: cases of tests/test_bad_inputs.py run / passed (each asserts
  the exit or HTTP status, the one-line message's key words, and that no traceback reached the user);
- ``faults_tested`` / ``faults_survived``: fault scenarios run / passed (Serve replica SIGKILL under load,
  Ray Train worker SIGKILL mid-epoch, MLflow server killed mid-sweep, kfp.local task killed, disk full while
  a variant is written), each repeated ``--rounds`` times;
- ``requests_lost``: requests that got no answer or another status than 200/503 while replicas were killed;
- ``max_rss_over_budget_under_attack``: the model replica's highest sampled RSS / its budget during the
  200 MB upload and the chunked upload.

    python benchmarks/reliability.py            # full: every group, 3 rounds of each fault (about 30 min)
    python benchmarks/reliability.py --quick    # bad inputs, the upload attack, disk full (a few minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results

ROOT = Path(__file__).resolve().parents[1]
NOT_CASES = ("test_the_table_is_large_and_distinct", "test_local_ray_and_serve_listen_on_loopback_only")
"""Tests of the bad-input module that are not a bad input (the table's own check, the exposure check)."""


@dataclass(frozen=True)
class Group:
    """One pytest run: what it selects and whether it counts as bad inputs or as a fault scenario."""

    name: str
    args: tuple[str, ...]
    kind: str  # "bad_inputs" or "fault"
    quick: bool


GROUPS = (
    Group("bad inputs (CLI, config files, datasets, model and variant dirs, HTTP, Helm)",
          ("tests/test_bad_inputs.py",), "bad_inputs", True),
    Group("disk full while a variant is written", ("tests/test_faults.py", "-k", "full_disk"), "fault", True),
    Group("kfp.local compress task killed",
          ("tests/test_pipeline_local.py", "-k", "failed_variant_fails_its_task"), "fault", False),
    Group("Serve replica SIGKILL under load",
          ("tests/test_serving_http.py", "-k", "replica_killed"), "fault", False),
    Group("Ray Train worker SIGKILL mid-epoch", ("tests/test_train.py", "-k", "worker_killed"), "fault", False),
    Group("MLflow server killed mid-sweep", ("tests/test_tracking_server.py", "-k", "outage"), "fault", False),
)


def run_group(group: Group, log: Path, work: Path) -> list[dict[str, Any]]:
    """Run one group under pytest; its test cases with their outcomes (from the JUnit report)."""
    report = work / f"junit-{abs(hash(group.args))}-{time.monotonic_ns()}.xml"
    env = {**os.environ, "TIGHTFIT_RELIABILITY_LOG": str(log)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *group.args]
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    cases: list[dict[str, Any]] = []
    if report.exists():
        for case in ET.parse(report).getroot().iter("testcase"):
            failed = case.find("failure") is not None or case.find("error") is not None
            skipped = case.find("skipped") is not None
            if skipped or case.get("name", "").split("[")[0] in NOT_CASES:
                continue
            cases.append({"id": f"{case.get('classname')}::{case.get('name')}", "passed": not failed})
    summary = [line for line in proc.stdout.splitlines() if re.search(r"\d+ (passed|failed|error)", line)]
    said = summary[-1].strip("= ") if summary else f"pytest exited {proc.returncode}"
    print(f"  {group.name}: {sum(c['passed'] for c in cases)}/{len(cases)} passed in {wall:.0f} s ({said})")
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="bad inputs, the upload attack and disk full only")
    parser.add_argument("--rounds", type=int, default=None, help="repetitions of each fault (default 3, quick 1)")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    groups = [g for g in GROUPS if g.quick or not args.quick]
    with tempfile.TemporaryDirectory(prefix="tightfit-reliability-") as tmp:
        work = Path(tmp)
        log = work / "figures.jsonl"
        bad: list[dict[str, Any]] = []
        faults: dict[str, list[bool]] = {}
        for group in groups:
            for round_no in range(1 if group.kind == "bad_inputs" else rounds):
                print(f"{group.name} (round {round_no + 1})")
                cases = run_group(group, log, work)
                if group.kind == "bad_inputs":
                    bad.extend(cases)
                elif cases:  # a scenario is one test; it survived when it passed
                    faults.setdefault(group.name, []).extend(c["passed"] for c in cases)
        events = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    kills = [e for e in events if e["event"] == "replica_kill"]
    attacks = [e for e in events if e["event"] == "upload_attack"]
    figures: dict[str, Any] = {
        "protocol": "quick" if args.quick else "full",
        "rounds": rounds,
        "bad_inputs_tested": len(bad),
        "bad_inputs_clear": sum(c["passed"] for c in bad),
        "bad_inputs_unclear": [c["id"] for c in bad if not c["passed"]],
        "faults_tested": sum(len(v) for v in faults.values()),
        "faults_survived": sum(sum(v) for v in faults.values()),
        "faults": {name: {"runs": len(v), "survived": sum(v)} for name, v in faults.items()},
        "requests_lost": sum(int(e["lost"]) for e in kills) if kills else None,
        "requests_during_kills": sum(int(e["requests"]) for e in kills) if kills else None,
        "replica_kill_statuses": [e["statuses"] for e in kills],
        "max_rss_over_budget_under_attack": (
            round(max(e["max_rss_bytes"] / e["budget_bytes"] for e in attacks), 4) if attacks else None
        ),
        "replica_peak_rss_growth_under_attack_bytes": (
            max(int(e["peak_after_bytes"]) - int(e["peak_before_bytes"]) for e in attacks) if attacks else None
        ),
        "goals": {"bad_inputs_clear": "all", "faults_survived": "all", "requests_lost": 0,
                  "max_rss_over_budget_under_attack": "<= 1"},
    }
    write_results("reliability", figures)
    print(json.dumps({k: v for k, v in figures.items() if not isinstance(v, list | dict)}, indent=2))


if __name__ == "__main__":
    main()
