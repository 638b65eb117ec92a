"""The Pareto plot: a real PNG with both panels, the frontier drawn in its colour, the chosen star."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tightfit.footprint import Footprint
from tightfit.select.plot import pareto_plot

MiB = 2**20
FRONT_RGB = np.array([0xD1, 0x49, 0x5B]) / 255
CHOSEN_RGB = np.array([0x00, 0x79, 0x8C]) / 255


def _records() -> list[Footprint]:
    return [
        Footprint(variant="fp32", accuracy=0.81, disk_bytes=87 * MiB, latency_ms_b1_p95=10.0),
        Footprint(variant="bf16", accuracy=0.80, disk_bytes=44 * MiB, latency_ms_b1_p95=4.0),
        Footprint(variant="pruned", accuracy=0.70, disk_bytes=60 * MiB, latency_ms_b1_p95=8.0),
        Footprint(variant="int4", status="failed", error="needs a GPU"),
    ]


def _pixels_near(img: np.ndarray, rgb: np.ndarray) -> int:
    return int((np.abs(img[..., :3] - rgb).max(axis=-1) < 0.05).sum())


def test_pareto_plot_writes_two_panels_with_frontier(tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    out = pareto_plot(_records(), tmp_path / "plots" / "pareto.png", chosen="bf16")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(out)
    assert img.shape[0] == 550 and img.shape[1] == 1320
    left, right = img[:, :660], img[:, 660:]
    for half in (left, right):
        assert _pixels_near(half, FRONT_RGB) > 50, "each panel draws its frontier"
        assert _pixels_near(half, CHOSEN_RGB) > 10, "each panel marks the chosen variant"


def test_pareto_plot_without_a_choice_or_data(tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    out = pareto_plot([Footprint(variant="x", status="failed", error="boom")], tmp_path / "empty.png")
    img = mpimg.imread(out)
    assert _pixels_near(img, FRONT_RGB) == 0 and _pixels_near(img, CHOSEN_RGB) == 0
