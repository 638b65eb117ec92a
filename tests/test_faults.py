"""Faults survived, with real processes and real limits (the Serve replica kill is in test_serving_http.py,
the Ray Train worker kill in test_train.py, the MLflow server kill in test_tracking_server.py).

- The disk fills while a variant is written: the write goes to a ``.partial`` sibling that is renamed into
  place only when complete, so the target never looks like a variant; the command says so in one line, and
  a rerun with room writes a complete, verified variant. The disk is a real size-limited tmpfs where this
  test may mount one (root), else the child process runs under RLIMIT_FSIZE (the kernel refuses the write
  past the limit, as it refuses one past a full disk).
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

LIMIT_BYTES = 2 * 2**20  # the tiny BERT's weights alone are about 4 MB


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory that holds at most LIMIT_BYTES: a tmpfs mount, or (mode ``rlimit``) a plain directory whose
    writer runs with RLIMIT_FSIZE."""
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={LIMIT_BYTES}", "tmpfs", str(mount)],
                             capture_output=True, check=False).returncode == 0 if os.geteuid() == 0 else False
    try:
        yield mount, ("tmpfs" if mounted else "rlimit")
    finally:
        if mounted:
            subprocess.run(["umount", str(mount)], check=False)


def _limit_file_size() -> None:  # in the child, before exec: writes past the limit fail with EFBIG
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT_BYTES, LIMIT_BYTES))


def test_a_full_disk_while_writing_leaves_no_variant_and_a_rerun_completes(small_disk, tiny_bert_dir) -> None:
    from tightfit.compress.variant import MANIFEST, verify_variant

    disk, mode = small_disk
    out = disk / "variant"
    command = [sys.executable, "-m", "tightfit.cli", "compress", "--model", str(tiny_bert_dir), "--spec", "fp32",
               "--out", str(out)]
    child = subprocess.run(command, capture_output=True, text=True, timeout=300,
                           preexec_fn=_limit_file_size if mode == "rlimit" else None)
    assert child.returncode == 2, child.stderr
    assert "Traceback" not in child.stderr
    lines = [line for line in child.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"writing variant {out} failed" in lines[0], child.stderr
    assert ("No space left" in lines[0]) if mode == "tmpfs" else ("too large" in lines[0].lower()), lines[0]
    assert not (out / MANIFEST).exists() and not out.exists(), "a half-written variant must never look complete"
    assert not out.with_name(out.name + ".partial").exists(), "the partial write is cleaned up"
    if mode == "tmpfs":  # room again: the same target, the same command
        subprocess.run(["mount", "-o", f"remount,size={16 * 2**20}", str(disk)], check=True)
    from tightfit.compress import build_variant
    from tightfit.spec import VariantSpec

    build_variant(tiny_bert_dir, VariantSpec.parse("fp32"), out, progress=False)  # the rerun, with room
    assert verify_variant(out)["name"] == "fp32"


@pytest.mark.slow
def test_a_killed_compress_task_fails_the_run_in_one_line_and_the_rerun_redoes_only_it(tmp_path: Path) -> None:
    """SIGKILL the kfp.local subprocess of a variant's compress task mid-run: the run fails with one line
    naming the task; the rerun takes every finished task (data, baseline, its profile) from the cache and
    runs only that compress task and what follows it."""
    import threading
    import time

    import psutil
    import yaml
    from tightfit.pipelines.local import run_local

    from tightfit.config import DEFAULT_CONFIG, config_from_dict
    from tightfit.errors import BackendError

    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["target"] = {"disk": "64MiB"}  # an untrained head: no accuracy floor
    raw["profiles"] = {"quick": {"data": {"limit": 200}, "measure": {"quick": True, "memory_subprocess": False},
                                 "variants": [{"variant": "bf16", "chain": "bf16"}]}}
    config = config_from_dict(raw, profile="quick")
    killed: list[int] = []
    stop = threading.Event()

    def kill_the_compress_task() -> None:
        me = psutil.Process()
        while not stop.is_set() and not killed:
            for proc in me.children(recursive=True):
                try:
                    command = " ".join(proc.cmdline())
                except psutil.Error:
                    continue
                # the variant's compress (loop task compress-2), not the baseline's (task compress, chain fp32)
                if "--function_to_execute compress" in command and "bf16" in command:
                    proc.send_signal(signal.SIGKILL)
                    killed.append(proc.pid)
                    break
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_the_compress_task, daemon=True)
    watcher.start()
    runs = tmp_path / "runs"
    try:
        with pytest.raises(BackendError) as failed:
            run_local(config, pipeline="compress_sweep", run_dir=runs)
    finally:
        stop.set()
        watcher.join()
    assert killed, "the compress task was never seen running"
    message = str(failed.value)
    assert "\n" not in message and "compress-2 stopped without an error of its own" in message, message

    again = run_local(config, pipeline="compress_sweep", run_dir=runs)
    (run,) = again.kfp_runs
    assert run.succeeded, run.error
    assert run.started.count("compress-2") == 1 and set(run.started) <= {"compress-2", "profile-2", "select"}, run
    assert {"prepare-data", "import-model", "profile"} <= set(run.cache_hits), run.cache_hits
    assert [r.variant for r in again.records if r.ok] == ["bf16"]
