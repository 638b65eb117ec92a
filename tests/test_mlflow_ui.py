"""The MLflow UI in headless Chromium shows the variants and their footprint metrics side by side.

Logs the real measured sweep to a real ``mlflow server`` on 127.0.0.1, opens the experiment's runs page
(expands the pipeline's parent run to its variant runs) and the run comparison page, and finds each
variant with its footprint metrics. Screenshots go to .build/ as test artifacts.
"""

from __future__ import annotations

import json
import re
import shutil
import urllib.parse
from pathlib import Path

import pytest
from browser_support import ARTIFACTS, chrome, skip_without_chromium
from test_tracking_support import log_summary, real_sweep

from tightfit import names, track
from tightfit.track.server import LocalMlflowServer

pytestmark = pytest.mark.slow

SHOWN_METRICS = (names.ACCURACY, names.DISK_BYTES, names.PEAK_RSS_SERVE_BYTES, names.LATENCY_MS_B1_P95)
EXPERIMENT = "ui-sweep"

skip_without_chromium()


@pytest.fixture(scope="module")
def logged_ui(tmp_path_factory: pytest.TempPathFactory, finetuned_minilm_dir: Path):
    records = [r for r, _ in real_sweep(Path(finetuned_minilm_dir))]
    server = LocalMlflowServer(tmp_path_factory.mktemp("mlflow-ui-server"))
    server.start()
    try:
        t = track.Tracker(server.uri, EXPERIMENT, outbox_dir=tmp_path_factory.mktemp("outbox"))
        parent = track.start_parent("minilm-sweep", base_model="minilm", dataset="rotten_tomatoes", tracker=t)
        for record in records:
            track.log_variant(record, parent=parent, base_model="minilm", dataset="rotten_tomatoes", tracker=t)
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
    body = _scroll_metrics_table(browser)
    for record in records:
        assert record.variant in body
    # Every footprint metric the profiler measured is listed by its name.
    measured = set().union(*(r.metrics() for r in records))
    for metric in measured:
        assert re.search(rf"^{re.escape(metric)}$", body, re.MULTILINE), metric
    # The values shown are the measured ones (the page prints each run's number in the metrics table).
    shown = _page_numbers(body)
    for record in records:
        assert _shown(shown, float(record.disk_bytes or 0)), (record.variant, record.disk_bytes)
        assert _shown(shown, float(record.accuracy or 0)), (record.variant, record.accuracy)
    _tidy_for_screenshot(browser, url)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "mlflow-ui-compare.png"))
    shutil.copy(ARTIFACTS / "mlflow-ui-compare.png", ARTIFACTS / "mlflow-ui.png")


_METRIC_GRIDS = """
let el = arguments[0];
while (el && el.querySelectorAll('.ReactVirtualized__Grid').length < 2) { el = el.parentElement; }
// Only the value grids scroll by themselves; the name column follows them (its overflow is hidden).
return el ? Array.from(el.querySelectorAll('.ReactVirtualized__Grid'))
  .filter(g => getComputedStyle(g).overflowY !== 'hidden') : [];
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


def _scroll_metrics_table(driver) -> str:
    """The page text with every row of the metrics table rendered at least once.

    The comparison page draws metrics in virtualized grids (names and values scroll separately and only
    the visible rows exist in the DOM), so scroll them together and collect the text at each step.
    """
    import time

    from selenium.webdriver.common.by import By

    cell = driver.find_element(By.XPATH, f"//a[normalize-space(text())='{names.ACCURACY}']")
    grids = driver.execute_script(_METRIC_GRIDS, cell)
    texts = [driver.find_element(By.TAG_NAME, "body").text]
    for _ in range(60):
        at_end = driver.execute_script(_SCROLL_GRIDS, grids)
        time.sleep(0.2)
        texts.append(driver.find_element(By.TAG_NAME, "body").text)
        if at_end:
            break
    return "\n".join(texts)


def _tidy_for_screenshot(driver, url: str) -> None:
    """Reload the page (grids back at their first rows) and close the assistant side panel."""
    from selenium.webdriver.common.by import By

    driver.get("about:blank")
    driver.get(url)
    _wait_for_texts(driver, ["Show diff only", names.ACCURACY])
    for button in driver.find_elements(By.CSS_SELECTOR, "button[data-component-id='mlflow.assistant.chat_panel.close']"):
        button.click()


def _page_numbers(body: str) -> list[float]:
    return [float(tok) for tok in re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.])", body)]


def _shown(numbers: list[float], value: float) -> bool:
    return any(abs(n - value) <= max(1e-3 * abs(value), 1e-4) for n in numbers)

