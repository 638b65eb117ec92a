"""The compression CLI: `tightfit methods`, `tightfit compress`, `tightfit profile` (run through cli.main)."""

from __future__ import annotations

import json
import subprocess
import sys

from tightfit.compress.variant import read_manifest


def _tightfit(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tightfit.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**__import__("os").environ, "COLUMNS": "200"}, check=False)


def test_methods_lists_every_method_with_parameters_and_devices():
    proc = _tightfit("methods")
    assert proc.returncode == 0, proc.stderr
    for needle in ("int8_dynamic", "int4_weight_only", "prune_structured", "heads=0.5", "sparsity=0.5",
                   "drop_layers", "distill", "temperature=2.0", "compile"):
        assert needle in proc.stdout
    fp16_row = next(line for line in proc.stdout.splitlines() if " fp16 " in line)
    assert "cuda" in fp16_row and "cpu" not in fp16_row


def test_compress_rejects_a_bad_spec_with_one_clear_line(tmp_path):
    proc = _tightfit("compress", "--spec", "int8_dynamic|prune_structured", "--out", str(tmp_path / "v"))
    assert proc.returncode == 2
    assert "cannot come after 'int8_dynamic'" in proc.stderr and "Traceback" not in proc.stderr
    proc = _tightfit("compress", "--spec", "fp16", "--out", str(tmp_path / "v"), "--device", "cpu")
    assert proc.returncode == 2 and "needs a GPU" in proc.stderr


def test_compress_then_profile_a_variant(finetuned_minilm_dir, tmp_path):
    out = tmp_path / "int8"
    proc = _tightfit("compress", "--model", str(finetuned_minilm_dir), "--spec", "int8_weight_only",
                     "--name", "int8-wo", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    manifest = read_manifest(out)
    assert manifest["name"] == "int8-wo" and manifest["parent"] == str(finetuned_minilm_dir)
    footprint = tmp_path / "fp.json"
    proc = _tightfit("profile", str(out), "--quick", "--no-memory", "--json", str(footprint))
    assert proc.returncode == 0, proc.stderr
    assert "latency_ms_b32_p50" in proc.stdout and "accuracy" in proc.stdout
    record = json.loads(footprint.read_text())
    assert record["variant"] == "int8-wo" and 0.6 < record["accuracy"] <= 1.0
    proc = _tightfit("profile", str(tmp_path / "missing"), "--quick")
    assert proc.returncode == 2 and "does not exist" in proc.stderr
