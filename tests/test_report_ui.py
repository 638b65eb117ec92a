"""The selection report in headless Chromium at a laptop's 1280 px: no horizontal scrolling, every variant
in the table, the verdict on top, the plot inside the page. Refreshes docs/img/report.png for the README.

The first page is the real measured sweep (fp32, bf16, int8 dynamic of the fine-tuned MiniLM), selected
under a real target. The second page checks layout only: the default variant set's real names and chains
(the longest there are), a failed variant with a long error and a name with no break opportunity, carrying
the sweep's measured figures in turn (so its numbers mean nothing; only the page's width is asserted).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import pytest
from browser_support import ARTIFACTS, DOCS_IMG, chrome, full_page_screenshot, skip_without_chromium
from test_tracking_support import real_sweep

from tightfit.footprint import Footprint
from tightfit.select import pareto_plot, select_variant, write_report
from tightfit.spec import HardwareTarget

pytestmark = pytest.mark.slow
skip_without_chromium()

WIDTH = 1280
TARGET = HardwareTarget.parse(memory="1GiB", disk="64MiB", min_accuracy=0.55)

_LAYOUT = """
const doc = document.documentElement;
const wide = Array.from(document.querySelectorAll('body *'))
  .filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5)
  .map(e => e.tagName + '.' + e.className + ': ' + (e.textContent || '').slice(0, 60));
const img = document.querySelector('figure img');
return {inner: window.innerWidth, scroll: doc.scrollWidth, height: doc.scrollHeight, wide: wide,
        img: img ? [img.naturalWidth, img.getBoundingClientRect().right] : null,
        rows: Array.from(document.querySelectorAll('tbody tr td.variant')).map(td => td.firstChild.textContent)};
"""


def _page(tmp: Path, records: list[Footprint]) -> tuple[Path, Any]:
    selection = select_variant(records, TARGET)
    chosen = selection.chosen.variant if selection.chosen else None
    plot = pareto_plot(records, tmp / "pareto.png", chosen=chosen)
    return write_report(tmp / "report.html", selection, records, plot), selection


def _check_layout(driver: Any, page: Path, records: list[Footprint]) -> dict[str, Any]:
    driver.get(page.resolve().as_uri())
    layout = driver.execute_script(_LAYOUT)
    assert layout["inner"] == WIDTH, layout["inner"]
    assert layout["scroll"] <= WIDTH and not layout["wide"], f"wider than {WIDTH} px: {layout['wide'][:5]}"
    assert layout["img"] is not None and layout["img"][0] > 0 and layout["img"][1] <= WIDTH
    assert layout["rows"] == [r.variant for r in records], "every variant has its row, in order"
    body = driver.find_element("tag name", "body").text
    for record in records:
        assert record.variant in body
    return layout


def _layout_stress(measured: list[Footprint]) -> list[Footprint]:
    from tightfit.compress.build import default_variant_set

    out = []
    for i, spec in enumerate(default_variant_set("classifier", device="cpu")):
        figures = measured[i % len(measured)]
        out.append(dataclasses.replace(figures, variant=spec.name, chain=spec.chain, extra={}))
    out.append(Footprint(variant="a-variant-name-with-no-space-" + "x" * 40, chain="int4_weight_only",
                         status="failed", error="UnsupportedError: " + "int4 weight-only needs a CUDA GPU " * 8))
    return out


def test_report_fits_a_laptop_screen_and_shows_every_variant(
    tmp_path: Path, finetuned_minilm_dir: Path
) -> None:
    measured = [r for r, _ in real_sweep(Path(finetuned_minilm_dir))]
    real_dir, stress_dir = tmp_path / "real", tmp_path / "stress"
    real_page, selection = _page(real_dir, measured)
    stress = _layout_stress(measured)
    stress_page, _ = _page(stress_dir, stress)
    with chrome(WIDTH, 900) as driver:
        _check_layout(driver, stress_page, stress)
        _check_layout(driver, real_page, measured)
        body = driver.find_element("tag name", "body").text
        # the verdict leads: the chosen variant, or that nothing fits; each rejected one names its limit
        if selection.chosen is not None:
            assert f"Chosen: {selection.chosen.variant}" in body
        for name, reasons in selection.reasons.items():
            limit = reasons[0].split(":")[0]
            assert f"misses {limit}" in body or "failed" in body, (name, reasons)
        full_page_screenshot(driver, ARTIFACTS / "report.png")
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    shutil.copy(ARTIFACTS / "report.png", DOCS_IMG / "report.png")
