"""The body of the profile stage: every variant measured one after another, alone on the machine.

The stage runs after the whole compression sweep (it takes every variant the loop built), so no
compression, distillation or fine-tuning shares the cores while a latency that drives the choice is timed;
inside it, one measurement runs at a time. Each record carries the wall-clock window of its measurement
(``extra.profile_started_at`` / ``profile_ended_at``, epoch seconds), so a run shows that none overlapped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tightfit.components.common import fail_task, stopwatch
from tightfit.components.steps import profile_step, record_json
from tightfit.components.tracking_steps import log_variant_run

from tightfit.footprint import Footprint

PROFILE_STARTED_AT, PROFILE_ENDED_AT = "profile_started_at", "profile_ended_at"


def variant_identity(variant_dir: str) -> tuple[str, str]:
    """(variant name, chain) of a variant the sweep built, from its manifest."""
    manifest = json.loads((Path(variant_dir) / "manifest.json").read_text())
    return str(manifest["name"]), str(manifest["chain"])


def _timed(measure: Any) -> Footprint:
    started = time.time()
    record: Footprint = measure()
    record.extra[PROFILE_STARTED_AT], record.extra[PROFILE_ENDED_AT] = round(started, 3), round(time.time(), 3)
    return record


def profile_all_step(
    baseline_dir: str,
    variant_dirs: list[str],
    data_dir: str,
    *,
    seq_len: int,
    quick: bool,
    memory_subprocess: bool,
    tracking_uri: str,
    experiment: str,
    pipeline_run: str,
) -> tuple[Footprint, list[Footprint], dict[str, Any]]:
    """Profile the baseline (the reference of every ratio), then each variant in turn, logging each variant
    as a nested MLflow run. Returns (baseline record, variant records in input order, stats). A measurement
    that cannot finish fails the task with one line naming the variant (``fail_task``)."""
    stats: dict[str, Any] = {}
    settings = {"seq_len": seq_len, "quick": quick, "memory_subprocess": memory_subprocess}
    with stopwatch(stats):
        with fail_task("profile"):  # without the reference nothing can be compared: the run fails
            baseline = _timed(lambda: profile_step(baseline_dir, data_dir, "baseline", "fp32", "", **settings)[0])
        reference = record_json(baseline)
        records = []
        for directory in variant_dirs:
            name, chain = variant_identity(directory)
            with fail_task("profile", name):  # the failure line names the variant; tightfit run leaves it out
                record = _timed(lambda d=directory, n=name, c=chain: profile_step(
                    d, data_dir, n, c, reference, **settings)[0])
                log_variant_run(record, directory, tracking_uri, experiment, pipeline_run, data_dir)
            records.append(record)
    stats["profiles"] = len(records) + 1
    stats["noisy_profiles"] = sum(1 for r in [baseline, *records] if r.noisy_figures)
    return baseline, records, stats
