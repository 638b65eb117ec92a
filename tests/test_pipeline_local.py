"""kfp.local runs: what KFP reports per task (a small pipeline, fast), then end to end on real data (MiniLM +
Rotten Tomatoes): artifacts, MLflow runs, the selection, a failed variant that fails its task while the
others are selected, and cached reruns that redo only what failed or changed."""

import contextlib
import io
import itertools
import json
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_support import DOCS_IMG
from kfp import dsl
from tightfit.components.common import TaskFailure

from tightfit import names
from tightfit.config import PipelineConfig, config_from_dict
from tightfit.footprint import Footprint

# Measured on every variant on CPU. gpu_peak_bytes (no GPU), perplexity (LMs) and the sparse-only
# compressed size are left unset by design; every other footprint metric must be there.
NOT_ON_CPU_CLASSIFIER = {names.GPU_PEAK_BYTES, names.PERPLEXITY, names.DISK_BYTES_COMPRESSED} | names.LM_ONLY_METRICS
ROBUST_TARGET = {"memory": "1GiB", "disk": "64MiB", "min_accuracy": 0.55}


# A two-step sweep in miniature (no ``from __future__ import annotations`` here: KFP reads the annotations).
@dsl.component(base_image="python:3.11", install_kfp_package=False)
def toy_attempt(variant: str, chain: str) -> str:
    from tightfit.components.common import fail_task

    from tightfit.errors import ConfigError

    with fail_task("compress", variant):
        if chain == "bad":
            raise ConfigError("this chain cannot be built here")
    return variant


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def toy_gather(built: list) -> str:
    return ",".join(built)


@dsl.pipeline
def toy_sweep(variants: list) -> str:
    with dsl.ParallelFor(variants) as item:
        attempt = toy_attempt(variant=item.variant, chain=item.chain)
    return toy_gather(built=dsl.Collected(attempt.output)).output


def test_kfp_reports_each_task_and_the_cause_of_a_failure(tmp_path: Path) -> None:
    """The task states and failure lines ``run_local`` relies on, as kfp.local 2.17.3 reports them."""
    from kfp import local
    from tightfit.pipelines.kfp_watch import run_once

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               enable_caching=True, raise_on_error=True)
    items = [{"variant": "a", "chain": "good"}, {"variant": "b", "chain": "bad"}, {"variant": "c", "chain": "good"}]
    with (tmp_path / "log").open("w") as log:
        first = run_once(toy_sweep, {"variants": items}, log)
        again = run_once(toy_sweep, {"variants": items}, log)
        rest = run_once(toy_sweep, {"variants": [items[0], items[2]]}, log)

    # The failed task failed (and made the run fail: kfp.local skips the fan-in); the others finished.
    assert not first.succeeded and "toy-sweep" in first.error
    assert first.started == ["toy-attempt"] * 3 and first.failed_tasks == ["toy-attempt"]
    assert first.skipped == ["toy-gather"]
    assert first.variant_failures() == {
        "b": TaskFailure(step="compress", variant="b", cause="ConfigError: this chain cannot be built here")
    }
    assert first.step_failures() == []
    # Nothing failed is cached: the same run again redoes only the failed task.
    assert again.started == ["toy-attempt"] and again.cache_hits == ["toy-attempt"] * 2
    # The variants that succeeded fan in from the cache.
    assert rest.succeeded and rest.output == "a,c"
    assert rest.started == ["toy-gather"] and rest.cache_hits == ["toy-attempt"] * 2


def _task_windows(root: Path) -> dict[str, tuple[float, float]]:
    """The wall-clock window every task recorded (``started_at``/``ended_at`` in its Metrics), by task path."""
    import json

    out: dict[str, tuple[float, float]] = {}
    for path in root.rglob("executor_output.json"):
        for artifact in json.loads(path.read_text()).get("artifacts", {}).values():
            for item in artifact.get("artifacts", []):
                meta = item.get("metadata") or {}
                if "started_at" in meta and "ended_at" in meta:
                    out[str(path.parent.relative_to(root))] = (float(meta["started_at"]), float(meta["ended_at"]))
    return out


def _mlflow_runs(uri: str, experiment: str) -> tuple[Any, list[Any]]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment} missing in {uri}"
    return client, client.search_runs([exp.experiment_id], max_results=200)


def _quick(**over: Any) -> PipelineConfig:
    import yaml

    from tightfit.config import DEFAULT_CONFIG

    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    for key, value in over.items():
        raw[key] = value
    return config_from_dict(raw, profile="quick")


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_FRAME_END = re.compile(r"\r(?:\x1b\[2K\x1b\[1A)+\x1b\[2K")  # rich Live: back to the top of its table
PTY_COLUMNS = 140


def _run_in_pty(cmd: list[str], env: dict[str, str], timeout_s: float = 1500) -> tuple[int, list[tuple[float, str]]]:
    """Run ``cmd`` with a pseudo-terminal as its stdin/stdout/stderr; (exit status, [(time, frame)]): every
    frame of the live progress table (and the text after the last), with the time it was complete."""
    import fcntl
    import os
    import pty
    import select
    import struct
    import termios
    import time

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, PTY_COLUMNS, 0, 0))
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    frames: list[tuple[float, str]] = []
    pending, deadline = "", time.monotonic() + timeout_s
    decoder = __import__("codecs").getincrementaldecoder("utf-8")("replace")
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        *complete, pending = _FRAME_END.split(pending + decoder.decode(chunk))
        frames.extend((time.monotonic(), frame) for frame in complete)
    os.close(master)
    frames.append((time.monotonic(), pending))
    try:
        return proc.wait(timeout=30), frames
    finally:
        if proc.poll() is None:
            proc.kill()


def _save_progress_svg(frame: str, path: Path) -> None:
    """The README's picture of the progress view: one frame of the live table, as the terminal drew it."""
    from rich.console import Console
    from rich.text import Text

    console = Console(record=True, width=PTY_COLUMNS, force_terminal=True, file=io.StringIO())
    console.print(Text.from_ansi(frame.replace("\r", "")))
    path.parent.mkdir(parents=True, exist_ok=True)
    console.save_svg(str(path), title="tightfit run --quick")


def _next_steps(text: str) -> dict[str, list[str]]:
    """The commands after "Next" in the run's output: {what: argv}."""
    block = text.split("\nNext\n", 1)[1]
    steps = {}
    for line in block.splitlines():
        what, sep, command = line.strip().partition(":  ")
        if sep and command.strip():
            steps[what] = shlex.split(command.split("#")[0])
    return steps


@pytest.mark.slow
def test_fit_for_serving_quick_end_to_end(tmp_path: Path) -> None:
    """`tightfit run --quick` as a person runs it: under a terminal, a live table shows each task running
    before the run ends; the results are real (selection, report, MLflow, registry, RayService) and the
    last lines name commands whose paths exist. Run again in a pipe, it is served from the cache and writes
    one plain line per task. With deployment off, deploy is neither run nor cached."""
    import os
    import sys

    import yaml
    from tightfit.pipelines.local import build_pipeline, run_local
    from tightfit.pipelines.task_view import plan_tasks

    from tightfit.config import DEFAULT_CONFIG

    # Budgets that do not hinge on latency (this machine is shared; p95 latency swings with load).
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["target"] = ROBUST_TARGET
    config_file = tmp_path / "tightfit.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    config = config_from_dict(raw, profile="quick")
    runs_dir = tmp_path / "runs"
    cmd = [sys.executable, "-m", "tightfit.cli", "run", "--quick", "--config", str(config_file), "--run-dir",
           str(runs_dir)]
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(PTY_COLUMNS)}
    planned = plan_tasks(build_pipeline("fit_for_serving", config).pipeline_spec, config.loop_items())

    status, frames = _run_in_pty(cmd, env)
    text = _ANSI.sub("", frames[-1][1]).replace("\r", "")
    assert status == 0, text[-3000:]
    # Live progress: every task is shown running, before the run's summary is printed.
    summary_at = next(t for t, frame in frames if "chosen variant:" in _ANSI.sub("", frame))
    seen_running: dict[str, float] = {}
    for t, frame in frames:
        plain = _ANSI.sub("", frame)
        for row in planned:
            if row.key not in seen_running and re.search(rf"running\s+{re.escape(row.label)}\s", plain):
                seen_running[row.key] = t
    assert set(seen_running) == {row.key for row in planned}, set(r.key for r in planned) - set(seen_running)
    assert max(seen_running.values()) < summary_at
    table_frames = [f for _, f in frames if "running" in _ANSI.sub("", f)]
    _save_progress_svg(table_frames[int(len(table_frames) * 0.6)], DOCS_IMG / "progress.svg")

    # The selection: a variant was chosen, it fits the memory budget as measured, and it is on the front.
    chosen_name = re.search(r"chosen variant: (\S+)", text)
    assert chosen_name is not None, text[-3000:]
    back = {r.variant: r for r in track_read(runs_dir, config)}
    assert set(back) == {v.variant for v in config.variants}
    chosen = back[chosen_name[1]]
    assert chosen.ok and chosen.peak_rss_serve_bytes is not None
    assert chosen.peak_rss_serve_bytes <= config.target.memory_bytes
    from tightfit.select.choose import pareto_front

    assert chosen.variant in [r.variant for r in pareto_front(list(back.values()))]
    # The fine-tuned baseline learned something real: above chance on the held-out split.
    assert chosen.accuracy is not None and chosen.accuracy > 0.6
    # Loop iterations run two at once here, so each compress task took its share of the cores, not all of
    # them (two 2-thread distillations on 2 cores ran 3-9x slower than one at a time).
    from tightfit.device import cpu_threads

    loop_threads = {json.loads(f.read_text())["threads"] for f in runs_dir.rglob("for-loop-*/compress*/stats")}
    assert loop_threads == {max(1, cpu_threads() // 2)}, loop_threads

    # The last lines: the next commands, with paths that exist.
    steps = _next_steps(text)
    report = Path(steps["open the report"][1])
    assert report.exists() and "data:image/png;base64" in report.read_text() and chosen.variant in report.read_text()
    assert Path(steps["browse in MLflow"][0]).exists() and str(runs_dir / "mlflow.db") in steps["browse in MLflow"][3]
    serve = steps[f"serve {chosen.variant}"]
    assert Path(serve[0]).exists() and (Path(serve[3]) / "manifest.json").exists() and serve[5] == "1.0GiB"
    assert Path(steps["compare the variants"][0]).exists()
    pareto = re.search(r"pareto plot: (\S+)", text)
    assert pareto is not None and Path(pareto[1]).stat().st_size > 1000

    # The serving plan + RayService.
    manifests = list((runs_dir / "pipeline").rglob("rayservice.yaml"))
    assert len(manifests) == 1
    rayservice = yaml.safe_load(manifests[0].read_text())
    assert rayservice["kind"] == "RayService"
    serve_config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    memory = serve_config["applications"][0]["deployments"][0]["ray_actor_options"]["memory"]
    assert 0 < memory <= config.target.memory_bytes

    # MLflow: one parent, one nested run per variant with every footprint metric, a training run; each
    # variant a LoggedModel; the report on the parent; the champion registered from its LoggedModel.
    uri = f"sqlite:///{runs_dir / 'mlflow.db'}"
    client, runs = _mlflow_runs(uri, config.tracking.experiment)
    parents = [r for r in runs if r.data.tags.get(names.TAG_ROLE) == names.ROLE_PARENT]
    assert len(parents) == 1
    parent_id = parents[0].info.run_id
    nested = [r for r in runs if r.data.tags.get(names.MLFLOW_PARENT_RUN_ID_TAG) == parent_id]
    assert sorted(r.data.tags[names.TAG_VARIANT] for r in nested) == sorted(back)
    expected = set(names.FOOTPRINT_METRICS) - NOT_ON_CPU_CLASSIFIER
    for run in nested:
        missing = expected - set(run.data.metrics)
        assert not missing, (run.data.tags[names.TAG_VARIANT], missing)
        assert run.data.params[names.PARAM_CHAIN] == back[run.data.tags[names.TAG_VARIANT]].chain
    assert any(r.data.tags.get(names.TAG_ROLE) == names.ROLE_TRAINING for r in runs)
    assert parents[0].data.tags.get(names.TAG_SELECTED) == chosen.variant
    assert names.ARTIFACT_REPORT in {a.path for a in client.list_artifacts(parent_id)}
    from tightfit.track import search_variant_models

    models = {m.name: m for m in search_variant_models(config.tracking.experiment, tracking_uri=uri)}
    assert set(models) == set(back)
    assert all(m.metrics and {x.dataset_name for x in m.metrics} == {"rotten_tomatoes"} for m in models.values())
    version = client.get_model_version_by_alias(config.tracking.registered_model, config.tracking.alias)
    assert version.run_id in {r.info.run_id for r in nested}
    assert version.source == f"models:/{models[chosen.variant].model_id}"

    # Again in a pipe, with only the deploy namespace changed: deploy runs again, every other task comes
    # from the cache; one plain line per task end, one start line per task that ran, no terminal codes.
    raw.setdefault("deploy", {})["namespace"] = "tightfit-again"
    config_file.write_text(yaml.safe_dump(raw))
    again = subprocess.run(cmd, capture_output=True, text=True, env={**env, "TERM": "dumb"}, timeout=600, check=False)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    lines = again.stdout.splitlines()
    assert not any(_ANSI.search(line) for line in lines), "no terminal codes in a log"
    stamp = r"^\d\d:\d\d:\d\d "
    for row in planned:
        label = re.escape(row.label)
        starts = [line for line in lines if re.match(rf"{stamp}start   {label}(  |$)", line)]
        ends = [line for line in lines if re.match(rf"{stamp}(cached  {label} \(from cache\)|done    {label} \([\d.]+ s\))",
                                                   line)]
        assert len(ends) == 1 and len(starts) == (row.task == "deploy"), (row.label, lines)
    assert re.search(r"tasks: 1 ran, \d+ from the cache", again.stdout), again.stdout[-2000:]
    assert len(list((runs_dir / "pipeline").rglob("rayservice.yaml"))) == 2
    wall = [float(re.search(r"wall time: +([\d.]+) s", out)[1]) for out in (text, again.stdout)]  # type: ignore[index]
    assert wall[1] < 0.25 * wall[0], wall
    assert f"chosen variant: {chosen.variant}" in again.stdout

    # Deployment switched off: the outer dsl.If is false, deploy neither runs nor comes from the cache.
    config.deploy.enabled = False
    off = run_local(config, pipeline="fit_for_serving", run_dir=runs_dir)
    assert off.kfp_runs[0].succeeded and off.kfp_runs[0].started == []
    assert "deploy" not in off.kfp_runs[0].cache_hits and off.deploy_plan is None
    assert off.chosen == chosen.variant

    # Measured alone: every profile ran after the fine-tune and every compress had ended, one at a time
    # (from the windows each step and each measurement recorded).
    profiles = sorted((r.extra["profile_started_at"], r.extra["profile_ended_at"]) for r in off.records)
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(profiles)), profiles
    windows = _task_windows(runs_dir / "pipeline")
    heavy = {task: w for task, w in windows.items() if task.rsplit("/", 1)[-1].startswith(("compress", "finetune"))}
    # the loop, the baseline's compress, finetune (distinct windows: the cached reruns' tasks carry the first's)
    assert len(set(heavy.values())) == len(config.variants) + 2, sorted(windows)
    assert all(end <= profiles[0][0] for _, end in heavy.values()), (heavy, profiles)
    stage = min(w for task, w in windows.items() if task.endswith("profile-all"))
    assert stage[0] <= profiles[0][0] and profiles[-1][1] <= stage[1]

    # Labels with names (the fine-tune names its head after the dataset's labels): the chosen variant, loaded as a replica loads it, answers in the dataset's words.
    from tightfit.serve.replica import load_for_serving
    from tightfit.serve.schema import PlannedVariant

    served = load_for_serving(PlannedVariant(chosen.variant, "classifier", serve[3], chosen.chain, 0, 0, 1, 64, 0, 0,
                                             0, 0))
    assert served.labels == ["rotten", "fresh"]


def track_read(runs_dir: Path, config: PipelineConfig) -> list[Footprint]:
    """The variants' records as MLflow holds them (the newest pipeline run)."""
    from tightfit.track import read_footprints

    return read_footprints(config.tracking.experiment, tracking_uri=f"sqlite:///{runs_dir / 'mlflow.db'}")


@pytest.mark.slow
def test_a_failed_variant_fails_its_task_the_others_are_selected_and_a_rerun_redoes_only_it(tmp_path: Path) -> None:
    from tightfit.pipelines.local import run_local

    variants = [
        {"variant": "fp32", "chain": "fp32"},
        {"variant": "bf16", "chain": "bf16"},
        # Valid in a config (keep_every >= 2), but MiniLM has 6 layers: it fails when compress applies it.
        {"variant": "too-shallow", "chain": "drop_layers:keep_every=7"},
    ]
    config = _quick(
        target={"memory": "1GiB", "disk": "64MiB"},  # an untrained head: no accuracy floor
        profiles={"quick": {"data": {"limit": 200}, "variants": variants, "measure": {"quick": True}}},
    )
    runs_dir = tmp_path / "runs"
    # A fault on top: bf16's compress task is SIGKILLed mid-run (its kfp.local subprocess, as the OOM killer
    # would), so it fails without a cause of its own.
    with killed_when_seen("compress", "bf16") as killed:
        first = run_local(config, pipeline="compress_sweep", run_dir=runs_dir)
    assert killed, "bf16's compress task was never seen running"

    # KFP: both compress tasks failed (so kfp.local skipped select); a second run over the variants without a
    # failure of their own (fp32, and the killed bf16) redoes only the killed task and what follows it, takes
    # the rest from the cache, and selects.
    every, rest = first.kfp_runs
    assert not every.succeeded and every.failed_tasks == ["compress-2", "compress-2"]
    assert {"profile-all", "select"} <= set(every.skipped)  # the profile stage runs after the whole sweep
    assert rest.succeeded and rest.variants == ["fp32", "bf16"]
    assert rest.started == ["compress-2", "profile-all", "select"], rest.started  # only the killed variant's tasks
    cause = "ConfigError: keep_every=7 would drop all 6 layers; use at most 6"
    assert first.failed == {"too-shallow": cause} and first.failures["too-shallow"].step == "compress"
    by_name = {r.variant: r for r in first.records}
    assert list(by_name) == ["fp32", "bf16", "too-shallow"]
    assert by_name["fp32"].ok and by_name["bf16"].ok and by_name["too-shallow"].error == f"{cause} (at compress)"
    assert first.chosen in {"fp32", "bf16"}
    assert first.selection["failed"] == {"too-shallow": f"{cause} (at compress)"}  # select saw it as failed
    assert "too-shallow" in Path(first.report_path or "").read_text()  # and the report lists it
    # The others are measured and logged; the failed variant is a FAILED run carrying its cause.
    _, runs = _mlflow_runs(first.tracking_uri, config.tracking.experiment)
    status = {r.data.tags.get(names.TAG_VARIANT): r.info.status for r in runs if r.data.tags.get(names.TAG_VARIANT)}
    assert status == {"fp32": "FINISHED", "bf16": "FINISHED", "too-shallow": "FAILED"}

    # Rerun: only the failed variant's compress runs again (and fails again); the rest, select included, is
    # served from the cache.
    second = run_local(config, pipeline="compress_sweep", run_dir=runs_dir)
    every_again, rest_again = second.kfp_runs
    assert every_again.started == ["compress-2"] and every_again.failed_tasks == ["compress-2"]
    assert rest_again.succeeded and rest_again.started == []
    assert second.failed == first.failed and second.chosen == first.chosen


@contextlib.contextmanager
def killed_when_seen(function: str, marker: str) -> Iterator[list[int]]:
    """SIGKILL the first kfp.local task process running component ``function`` whose arguments mention
    ``marker`` (the Python worker, not its ``sh`` wrapper); yields the killed pids."""
    import signal
    import threading
    import time

    import psutil

    killed: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        me = psutil.Process()
        while not stop.is_set() and not killed:
            for proc in me.children(recursive=True):
                try:
                    argv = proc.cmdline()
                except psutil.Error:
                    continue
                worker = argv[1:3] == ["-m", "kfp.dsl.executor_main"]
                if worker and f"--function_to_execute {function}" in " ".join(argv) and marker in " ".join(argv):
                    proc.send_signal(signal.SIGKILL)
                    killed.append(proc.pid)
                    break
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield killed
    finally:
        stop.set()
        watcher.join()


def test_a_task_killed_without_a_cause_is_named_in_one_line(tmp_path: Path) -> None:
    from tightfit.pipelines.kfp_watch import KfpRun
    from tightfit.pipelines.local import _failure_message

    run = KfpRun(variants=["bf16"], error="Pipeline failed", failed_tasks=["compress-2"])
    message = _failure_message(run, tmp_path / "run.log")
    assert "\n" not in message and "compress-2 stopped without an error of its own" in message, message
    assert "rerun" in message and str(tmp_path / "run.log") in message


def test_footprint_records_round_trip_through_the_fan_in() -> None:
    from tightfit.components.steps import record_json, records_from_json

    record = Footprint(variant="v", chain="bf16", params_total=7, accuracy=0.5, extra={"k": 1})
    assert records_from_json([record_json(record)]) == [record]
