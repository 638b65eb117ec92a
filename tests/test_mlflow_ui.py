"""The MLflow UI in headless Chromium shows the variants and their footprint metrics side by side.

Logs the real measured sweep to a real ``mlflow server`` on 127.0.0.1, opens the experiment's runs page
(expands the pipeline's parent run to its variant runs) and the run comparison page, and finds each
variant with its footprint metrics. Screenshots go to .build/ as test artifacts.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import urllib.parse
from pathlib import Path

import pytest
from browser_support import ARTIFACTS, DOCS_IMG, chrome, skip_without_chromium
from test_tracking_support import log_summary, real_sweep

from tightfit import names, track
from tightfit.track.server import LocalMlflowServer

pytestmark = pytest.mark.slow

SHOWN_METRICS = (names.ACCURACY, names.DISK_BYTES, names.PEAK_RSS_SERVE_BYTES, names.LATENCY_MS_B1_P95)
EXPERIMENT = "ui-sweep"

skip_without_chromium()


@pytest.fixture(scope="module")
def logged_ui(module_tmp: Path, finetuned_minilm_dir: Path):
    from tightfit.data import load_dataset

    records = [r for r, _ in real_sweep(Path(finetuned_minilm_dir))]
    digest = track.frame_digest(load_dataset("rotten_tomatoes", seed=0, limit=600).test)  # what the sweep measured on
    server = LocalMlflowServer(module_tmp / "mlflow-server")
    server.start()
    try:
        t = track.Tracker(server.uri, EXPERIMENT, outbox_dir=module_tmp / "outbox")
        parent = track.start_parent("minilm-sweep", base_model="minilm", dataset="rotten_tomatoes", tracker=t)
        for record in records:  # no model files: the pages show records (registration: test_tracking_server)
            track.log_variant(record, parent=parent, base_model="minilm", dataset="rotten_tomatoes",
                              dataset_digest=digest, tracker=t)
        log_summary(parent, records, t)
        assert t.outbox.pending() == []
        yield server, t, parent, records
    finally:
        server.stop()


@pytest.fixture
def browser():
    with chrome() as driver:
        yield driver


def _wait_for_texts(driver, texts: list[str], timeout: float = 60.0) -> str:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    seen = {"body": ""}

    def all_shown(d) -> str | bool:
        seen["body"] = d.find_element(By.TAG_NAME, "body").text
        return seen["body"] if all(t in seen["body"] for t in texts) else False

    try:
        return str(WebDriverWait(driver, timeout, poll_frequency=0.5).until(all_shown))
    except TimeoutException:
        missing = [t for t in texts if t not in seen["body"]]
        raise AssertionError(f"page never showed {missing}; it showed:\n{seen['body'][:4000]}") from None


def test_runs_page_shows_the_variants(logged_ui, browser) -> None:
    from selenium.webdriver.common.by import By

    server, _, _, records = logged_ui
    from mlflow import MlflowClient

    exp_id = MlflowClient(server.uri).get_experiment_by_name(EXPERIMENT).experiment_id  # type: ignore[union-attr]
    browser.get(f"{server.uri}/#/experiments/{exp_id}/runs")
    _wait_for_texts(browser, ["minilm-sweep"])
    row = browser.find_element(By.XPATH, "//*[@role='row'][.//*[normalize-space(text())='minilm-sweep']]")
    row.find_element(By.XPATH, ".//button[contains(@data-component-id, 'runnamecellrenderer')]").click()
    body = _wait_for_texts(browser, [r.variant for r in records])
    assert f"{len(records) + 1} matching runs" in body
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "mlflow-ui-runs.png"))


def test_compare_page_shows_footprint_metrics(logged_ui, browser) -> None:
    server, _, parent, records = logged_ui
    from mlflow import MlflowClient

    exp_id = MlflowClient(server.uri).get_experiment_by_name(EXPERIMENT).experiment_id  # type: ignore[union-attr]
    back = track.read_footprints(EXPERIMENT, parent, tracking_uri=server.uri)
    run_ids = [r.extra["mlflow_run_id"] for r in back]
    url = (
        f"{server.uri}/#/compare-runs?runs={urllib.parse.quote(json.dumps(run_ids))}"
        f"&experiments={urllib.parse.quote(json.dumps([exp_id]))}"
    )
    browser.get(url)
    _wait_for_texts(browser, [f"Comparing {len(records)} Runs", "Show diff only", names.ACCURACY])
    # Every footprint metric the profiler measured is listed by its name.
    measured = set().union(*(r.metrics() for r in records))
    body = _scroll_metrics_table(browser, measured)
    for record in records:
        assert record.variant in body
    unlisted = sorted(m for m in measured if not _listed(body, m))
    assert not unlisted, (unlisted, sorted(set(re.findall(r"^[a-z][a-z0-9_]+$", body, re.MULTILINE))))
    # The values shown are the measured ones (the page prints each run's number in the metrics table).
    shown = _page_numbers(body)
    for record in records:
        assert _shown(shown, float(record.disk_bytes or 0)), (record.variant, record.disk_bytes)
        assert _shown(shown, float(record.accuracy or 0)), (record.variant, record.accuracy)
    _tidy_for_screenshot(browser, url)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "mlflow-ui-compare.png"))
    shutil.copy(ARTIFACTS / "mlflow-ui-compare.png", ARTIFACTS / "mlflow-ui.png")


_MODEL_ROWS = """
// One entry per rendered ag-grid row of the Models table: its cells' column ids and texts (the pinned name
// column and the scrolling centre are separate row elements with the same row-index).
const rows = {};
for (const row of document.querySelectorAll('.ag-row[row-index]')) {
  const cells = rows[row.getAttribute('row-index')] = rows[row.getAttribute('row-index')] || {};
  for (const cell of row.querySelectorAll('.ag-cell[col-id]')) { cells[cell.getAttribute('col-id')] = cell.innerText; }
}
return Object.values(rows);
"""


def test_models_tab_compares_the_variants_by_footprint(logged_ui, browser) -> None:
    """MLflow 3's Models tab lists every variant as a LoggedModel, with the footprint metrics as columns
    (measured on the dataset the run logged), headline figures first."""
    from mlflow import MlflowClient

    server, _, _, records = logged_ui
    exp_id = MlflowClient(server.uri).get_experiment_by_name(EXPERIMENT).experiment_id  # type: ignore[union-attr]
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 2200, "height": 700, "deviceScaleFactor": 1, "mobile": False})
    browser.get(f"{server.uri}/#/experiments/{exp_id}/models?workflowType=machine_learning")
    _wait_for_texts(browser, ["Models", *(r.variant for r in records)])
    _close_assistant(browser)  # the side panel narrows the table: metric columns would render off-screen
    # the headline footprint figures lead the metric columns
    headline = [names.ACCURACY, names.PEAK_RSS_SERVE_BYTES, names.DISK_BYTES, names.LATENCY_MS_B1_P95]
    _wait_for(browser, _HEADERS, lambda found: [h for h in found if h in headline] == headline)
    variants = {r.variant for r in records}
    rows = _wait_for(browser, _MODEL_ROWS, lambda found: {_model_name(c) for c in found} >= variants)
    by_name = {_model_name(cells): cells for cells in rows if _model_name(cells)}
    assert set(by_name) == variants, rows
    for record in records:
        cells = by_name[record.variant]
        # metric columns are keyed by a JSON of metric and dataset (HTML-escaped in the col-id attribute)
        shown = {html.unescape(col): text for col, text in cells.items() if "metricKey" in html.unescape(col)}
        disk = next(text for col, text in shown.items() if f'"metricKey":"{names.DISK_BYTES}"' in col)
        acc = next(text for col, text in shown.items() if f'"metricKey":"{names.ACCURACY}"' in col)
        assert float(disk) == pytest.approx(record.disk_bytes) and float(acc) == pytest.approx(record.accuracy)
        assert all('"datasetName":"rotten_tomatoes"' in col for col in shown), shown
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "mlflow-models.png"))
    _crop(ARTIFACTS / "mlflow-models.png", DOCS_IMG / "mlflow-models.png", height=330)


def _model_name(cells: dict) -> str:
    """The model name cell's text without its colour swatch label (``#277c43\\nint8-dynamic``)."""
    return str(cells.get("name", "")).strip().splitlines()[-1] if cells.get("name") else ""


_HEADERS = "return Array.from(document.querySelectorAll('.ag-header-cell-text')).map(e => e.textContent.trim())"


def _wait_for(driver, script: str, done, timeout: float = 60.0):
    """Poll ``script`` until ``done(result)``; fail with the last result."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        result = driver.execute_script(script)
        if done(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"page never got there; last ({len(result)}): {result}")
        time.sleep(0.5)


def _close_assistant(driver) -> None:
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.CSS_SELECTOR, "button[data-component-id='mlflow.assistant.chat_panel.close']"):
        button.click()


def _crop(src: Path, dst: Path, height: int) -> None:
    """The top ``height`` pixels of a screenshot (the table; the page below it is empty)."""
    from PIL import Image

    dst.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as image:
        image.crop((0, 0, image.width, min(height, image.height))).save(dst)


_METRIC_GRIDS = """
let el = arguments[0];
while (el && el.querySelectorAll('.ReactVirtualized__Grid').length < 2) { el = el.parentElement; }
// Only the value grids scroll by themselves; the name column follows them (its overflow is hidden).
return el ? Array.from(el.querySelectorAll('.ReactVirtualized__Grid'))
  .filter(g => getComputedStyle(g).overflowY !== 'hidden') : [];
"""
_SCROLL_TOP = """
for (const g of arguments[0]) { g.scrollTop = 0; g.dispatchEvent(new Event('scroll')); }
"""
_SCROLL_GRIDS = """
let atEnd = true;
for (const g of arguments[0]) {
  g.scrollTop += g.clientHeight / 2;
  g.dispatchEvent(new Event('scroll'));
  if (g.scrollTop + g.clientHeight < g.scrollHeight - 2) { atEnd = false; }
}
return atEnd;
"""


def _scroll_metrics_table(driver, expected: set[str]) -> str:
    """The page text with every row of the metrics table rendered at least once.

    The comparison page draws metrics in virtualized grids (names and values scroll separately and only
    the visible rows exist in the DOM), so scroll them together and collect the text at each step. A loaded
    machine renders rows late, so passes repeat (from the top, settling longer each time) until every
    ``expected`` metric name has been seen, at most 4 passes.
    """
    import time

    from selenium.webdriver.common.by import By

    cell = driver.find_element(By.XPATH, f"//a[normalize-space(text())='{names.ACCURACY}']")
    grids = driver.execute_script(_METRIC_GRIDS, cell)
    # innerText, not selenium's visible text: a rendered row clipped by the grid's edge is still listed
    read = "return document.body.innerText;"
    texts = [driver.execute_script(read)]

    def settled_text(pause: float) -> str:
        # A loaded machine re-renders the name column late: read until two reads agree (at most 5 s).
        last, deadline = driver.execute_script(read), time.monotonic() + 5
        while time.monotonic() < deadline:
            time.sleep(pause)
            now = driver.execute_script(read)
            if now == last:
                break
            last = now
        return last

    def missing() -> set[str]:
        return {m for m in expected if not _listed("\n".join(texts), m)}

    for attempt in range(4):
        if attempt:
            driver.execute_script(_SCROLL_TOP, grids)
            texts.append(settled_text(0.3 * (attempt + 1)))
        for _ in range(60):
            at_end = driver.execute_script(_SCROLL_GRIDS, grids)
            texts.append(settled_text(0.3 * (attempt + 1)))
            if at_end:
                break
        if not missing():
            break
    return "\n".join(texts)


def _listed(body: str, metric: str) -> bool:
    return re.search(rf"^{re.escape(metric)}$", body, re.MULTILINE) is not None


def _tidy_for_screenshot(driver, url: str) -> None:
    """Reload the page (grids back at their first rows) and close the assistant side panel."""

    driver.get("about:blank")
    driver.get(url)
    _wait_for_texts(driver, ["Show diff only", names.ACCURACY])
    _close_assistant(driver)


def _page_numbers(body: str) -> list[float]:
    return [float(tok) for tok in re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.])", body)]


def _shown(numbers: list[float], value: float) -> bool:
    return any(abs(n - value) <= max(1e-3 * abs(value), 1e-4) for n in numbers)

