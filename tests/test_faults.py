"""Faults survived, with real processes and real limits (the Serve replica kill is in test_serving_http.py,
the Ray Train worker kill in test_train.py, the MLflow server kill in test_tracking_server.py, the kfp.local
compress task kill in test_pipeline_local.py, inside the run that already sweeps failing variants).

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

