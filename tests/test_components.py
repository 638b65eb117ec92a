"""The components' glue on real data, without KFP: data artifacts, failed records, the report, the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tightfit.components import common, steps

from tightfit.footprint import Footprint


def test_prepare_data_writes_splits_that_read_back(tmp_path: Path) -> None:
    stats = steps.prepare_data_step("rotten_tomatoes", 3, 120, 0.1, 0.2, str(tmp_path / "data"))
    assert stats["rows_train"] == 120 and stats["rows_test"] == 120 and stats[common.ELAPSED] > 0
    splits = steps.load_splits(tmp_path / "data")
    from tightfit.data import load_dataset

    direct = load_dataset("rotten_tomatoes", seed=3, limit=120)
    assert splits.train["text"].tolist() == direct.train["text"].tolist()
    assert splits.test["label"].tolist() == direct.test["label"].tolist()
    assert splits.label_names == ["rotten", "fresh"]
    meta = json.loads((tmp_path / "data" / steps.SPLITS_META).read_text())
    assert meta["seed"] == 3 and meta["limit"] == 120


def test_compress_failure_becomes_a_failed_record(tmp_path: Path) -> None:
    steps.prepare_data_step("rotten_tomatoes", 0, 32, 0.1, 0.2, str(tmp_path / "data"))
    failure, stats = steps.compress_step(
        "minilm", str(tmp_path / "data"), "broken", "no_such_method", "classifier", str(tmp_path / "variant")
    )
    assert failure is not None and failure.status == "failed"
    assert "unknown compression method 'no_such_method'" in (failure.error or "")
    assert common.ELAPSED in stats
    again = steps.failed_record(tmp_path / "variant")
    assert again == failure
    # The profiler passes a failed record through without measuring anything.
    record, _ = steps.profile_step(
        str(tmp_path / "variant"), str(tmp_path / "data"), "broken", "no_such_method", "classifier", "", 64, True, False
    )
    assert not record.ok and record.error == failure.error and record.disk_bytes is None


def test_report_marks_chosen_front_and_failures(tmp_path: Path) -> None:
    from tightfit.select.choose import select_variant
    from tightfit.select.report import write_report
    from tightfit.spec import HardwareTarget

    records = [
        Footprint(variant="big", chain="fp32", accuracy=0.80, disk_bytes=90 << 20, peak_rss_serve_bytes=700 << 20,
                  peak_rss_load_bytes=650 << 20, latency_ms_b1_p95=9.0),
        Footprint(variant="small", chain="int8_dynamic", accuracy=0.79, disk_bytes=30 << 20,
                  peak_rss_serve_bytes=400 << 20, peak_rss_load_bytes=350 << 20, latency_ms_b1_p95=4.0),
        Footprint(variant="bad", chain="int4_weight_only", status="failed", error="UnsupportedError: needs a GPU"),
    ]
    selection = select_variant(records, HardwareTarget.parse(memory="600MiB"))
    assert selection.chosen is not None and selection.chosen.variant == "small"
    page = write_report(tmp_path / "report.html", selection, records, None).read_text()
    assert "Chosen: small" in page and "needs a GPU" in page and "big" in page
    # the rejected variant names the limit it missed, with the measured figure against the limit
    assert "misses memory" in page and "RSS 700.0 MiB &gt; 600.0 MiB" in page


def test_evict_failed_removes_only_the_failed_variants_entries(tmp_path: Path) -> None:
    from tightfit.pipelines.local import evict_failed

    cache = tmp_path / ".kfp_cache"
    cache.mkdir()
    (cache / "a.json").write_text(json.dumps({"variant": {"uri": "/runs/x/for-loop-1-iteration-2/compress/variant"}}))
    (cache / "b.json").write_text(json.dumps({"variant": {"uri": "/runs/x/for-loop-1-iteration-0/compress/variant"}}))
    selection = {
        "failed": {"bad": "boom"},
        "variant_dirs": {"bad": "/runs/x/for-loop-1-iteration-2/compress/variant",
                         "good": "/runs/x/for-loop-1-iteration-0/compress/variant"},
    }
    assert evict_failed(cache, selection) == 1
    assert not (cache / "a.json").exists() and (cache / "b.json").exists()
    assert evict_failed(cache, {"failed": {}}) == 0


@pytest.mark.parametrize("module", ["prepare_data", "import_model", "finetune", "compress", "profile", "select",
                                    "register", "deploy", "start_tracking", "should_deploy"])
def test_every_component_is_a_lightweight_component_on_the_tightfit_image(module: str) -> None:
    import importlib

    from tightfit.components.image import TIGHTFIT_IMAGE

    component = getattr(importlib.import_module(f"tightfit.components.{module}"), module)
    container = component.component_spec.implementation.container
    assert container.image == TIGHTFIT_IMAGE
    # Project code comes with the image: no pip install in the command.
    assert "pip install" not in " ".join(container.command or [])
