"""Headless Chromium for the UI tests (Debian's chromium + chromium-driver, installed by scripts/setup.sh):
one place for the binary paths, the flags, and the skip when they are missing."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
)
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / ".build" / "test-artifacts"
DOCS_IMG = ROOT / "docs" / "img"


def skip_without_chromium() -> None:
    """Skip the calling test module (with the fix) where Chromium or its driver is missing."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(
            "headless UI test needs Debian chromium + chromium-driver at /usr/bin "
            "(apt-get install -y chromium chromium-driver; scripts/setup.sh does it)",
            allow_module_level=True,
        )


@contextmanager
def chrome(width: int = 1600, height: int = 2400) -> Iterator[Any]:
    """A headless Chromium driven by selenium, with a ``width`` x ``height`` window; quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROME_FLAGS, f"--window-size={width},{height}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def full_page_screenshot(driver: Any, path: Path) -> Path:
    """A PNG of the whole page at the current viewport width (the viewport grows to the page's height)."""
    width, height = driver.execute_script(
        "return [window.innerWidth, document.documentElement.scrollHeight]"
    )
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": int(width), "height": int(height), "deviceScaleFactor": 1, "mobile": False},
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return path
