"""The components' glue on real data, without KFP: data artifacts, failing a task, the report."""

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


def test_a_chain_that_fails_at_build_time_raises_and_fails_the_task(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tightfit.errors import ConfigError

    steps.prepare_data_step("rotten_tomatoes", 0, 32, 0.1, 0.2, str(tmp_path / "data"))
    # Valid in a config (keep_every >= 2) but MiniLM has 6 layers: it fails only when applied.
    with pytest.raises(ConfigError, match="keep_every=7 would drop all 6 layers"):
        steps.compress_step("minilm", str(tmp_path / "data"), "too-shallow", "drop_layers:keep_every=7",
                            str(tmp_path / "variant"))
    # The component body runs the step under fail_task: one line on stderr, exit status 1, no traceback.
    with pytest.raises(SystemExit) as exited, steps.fail_task("compress", "too-shallow"):
        steps.compress_step("minilm", str(tmp_path / "data"), "too-shallow", "drop_layers:keep_every=7",
                            str(tmp_path / "variant"))
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line == ("tightfit: variant 'too-shallow' failed at compress: ConfigError: keep_every=7 would drop all "
                    "6 layers; use at most 6")
    assert common.TaskFailure.parse(line) == common.TaskFailure(
        step="compress", variant="too-shallow", cause="ConfigError: keep_every=7 would drop all 6 layers; use at most 6"
    )


def test_a_bug_keeps_its_traceback_above_the_failure_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit), common.fail_task("select"):
        int("not a number")
    err = capsys.readouterr().err
    assert "Traceback" in err
    failure = common.TaskFailure.parse(err.strip().splitlines()[-1])
    assert failure is not None and failure.step == "select" and failure.variant == ""
    assert failure.cause.startswith("ValueError: invalid literal for int() with base 10: 'not a number' (at "
                                    "test_components.py:")
    assert common.TaskFailure.parse("    tightfit: finetune failed: BackendError: no Ray") == common.TaskFailure(
        step="finetune", cause="BackendError: no Ray"
    )
    assert common.TaskFailure.parse("tightfit: compiled fit_for_serving") is None


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


@pytest.mark.parametrize("module", ["prepare_data", "import_model", "finetune", "compress", "profile", "profile_all",
                                    "select", "register", "deploy", "start_tracking"])
def test_every_component_is_a_lightweight_component_on_the_tightfit_image(module: str) -> None:
    import importlib

    from tightfit.components.image import TIGHTFIT_IMAGE

    component = getattr(importlib.import_module(f"tightfit.components.{module}"), module)
    container = component.component_spec.implementation.container
    assert container.image == TIGHTFIT_IMAGE
    # Project code comes with the image: no pip install in the command.
    assert "pip install" not in " ".join(container.command or [])
