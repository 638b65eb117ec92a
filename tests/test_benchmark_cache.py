"""The benchmarks' build cache (``benchmarks/_common.py::is_current``): a cached variant is reused only while
it has the asked chain and is newer than its source, so a rebuilt baseline never feeds stale students."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tightfit.compress import build_variant
from tightfit.compress.variant import read_manifest
from tightfit.spec import VariantSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from _common import is_current


def test_a_rebuilt_source_makes_its_children_stale(tiny_bert_dir, tmp_path):
    parent, child = tmp_path / "parent", tmp_path / "child"
    build_variant(tiny_bert_dir, VariantSpec.parse("bf16", name="parent"), parent, progress=False)
    time.sleep(1.1)  # manifests record their creation to the second
    build_variant(parent, VariantSpec.parse("fp32", name="child"), child, progress=False)
    chain = read_manifest(child)["chain"]

    assert is_current(child, chain, parent)
    assert not is_current(child, chain + "|bf16", parent)  # another chain is not this build
    assert not is_current(tmp_path / "missing", chain, parent)
    time.sleep(1.1)
    build_variant(tiny_bert_dir, VariantSpec.parse("bf16", name="parent"), parent, progress=False)
    assert not is_current(child, chain, parent)  # the parent was rebuilt after the child
