"""The Pareto plot: a real PNG with both panels, the frontier drawn in its colour, the chosen star, numbered
markers whose numbers never overlap, a log axis for values spanning more than 10x, latency whiskers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tightfit.footprint import Footprint
from tightfit.select.display import latency_interval, runtime_of, variant_numbers
from tightfit.select.plot import LABEL_GID, draw_pareto, pareto_plot

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


def _crowded() -> list[Footprint]:
    """The default sweep's shape as reported in issue 15: two int8 variants at the same size and
    accuracy, a distilled student next to its int8 child, and one slow outlier (50x the rest)."""
    def rec(name: str, chain: str, acc: float, disk_mib: float, p50: float, p95: float, p99: float) -> Footprint:
        return Footprint(variant=name, chain=chain, accuracy=acc, disk_bytes=int(disk_mib * MiB),
                         latency_ms_b1_p50=p50, latency_ms_b1_p95=p95, latency_ms_b1_p99=p99)

    return [
        rec("fp32", "fp32", 0.8177, 86.7, 25.3, 30.4, 38.0),
        rec("bf16", "bf16", 0.8181, 43.3, 15.6, 18.8, 23.5),
        rec("int8-dynamic", "int8_dynamic|compile", 0.8209, 56.0, 12.1, 14.5, 18.1),
        rec("int8-weight-only", "int8_weight_only", 0.8185, 56.0, 27.8, 700.0, 900.0),
        rec("int8-all", "int8_dynamic|int8_embeddings|compile", 0.8197, 22.1, 12.3, 14.7, 18.4),
        rec("structured-50-distilled", "prune_structured|prune_vocab|distill", 0.8157, 41.1, 13.6, 16.3, 20.3),
        rec("structured-50-distilled-int8", "prune_structured|prune_vocab|distill|int8_dynamic|compile",
            0.8146, 10.6, 7.4, 8.8, 11.1),
        Footprint(variant="int4-weight-only", chain="int4_weight_only", status="failed", error="needs a GPU"),
    ]


def _pixels_near(img: np.ndarray, rgb: np.ndarray) -> int:
    return int((np.abs(img[..., :3] - rgb).max(axis=-1) < 0.05).sum())


def test_pareto_plot_writes_two_panels_with_frontier(tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    out = pareto_plot(_records(), tmp_path / "plots" / "pareto.png", chosen="bf16")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(out)
    assert img.shape[1] <= 1280, "the plot fits a laptop-wide page"
    width = img.shape[1]
    left, right = img[:, : int(width * 0.38)], img[:, int(width * 0.38) : int(width * 0.76)]
    for half in (left, right):
        assert _pixels_near(half, FRONT_RGB) > 50, "each panel draws its frontier"
        assert _pixels_near(half, CHOSEN_RGB) > 10, "each panel marks the chosen variant"


def test_pareto_plot_without_a_choice_or_data(tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    out = pareto_plot([Footprint(variant="x", status="failed", error="boom")], tmp_path / "empty.png")
    img = mpimg.imread(out)
    assert _pixels_near(img, FRONT_RGB) == 0 and _pixels_near(img, CHOSEN_RGB) == 0


def test_crowded_variants_get_numbers_that_never_overlap() -> None:
    import matplotlib.pyplot as plt

    records = _crowded()
    fig = draw_pareto(records, chosen="int8-all")
    try:
        renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
        numbers = variant_numbers(records)
        disk_ax, latency_ax, legend_ax = fig.axes
        for ax in (disk_ax, latency_ax):
            labels = [t for t in ax.texts if t.get_gid() == LABEL_GID]
            # one number per measured variant, the numbers of the table
            assert sorted(t.get_text() for t in labels) == sorted(str(numbers[r.variant]) for r in records if r.ok)
            boxes = [t.get_window_extent(renderer) for t in labels]
            frame = ax.get_window_extent(renderer)
            for i, a in enumerate(boxes):
                assert frame.x0 <= a.x0 and a.x1 <= frame.x1 and frame.y0 <= a.y0 and a.y1 <= frame.y1
                for b in boxes[i + 1 :]:
                    assert not a.overlaps(b), (labels[i].get_text(), a, b)
            # no number sits on a marker
            markers = [ax.transData.transform(off) for c in ax.collections for off in c.get_offsets()]
            for box in boxes:
                for px, py in markers:
                    assert not (box.x0 < px < box.x1 and box.y0 < py < box.y1)
        # the legend column names every variant, failed ones too
        legend_text = "\n".join(t.get_text() for t in legend_ax.texts)
        for record in records:
            assert f"{numbers[record.variant]}  {record.variant}" in legend_text
        # the 700 ms outlier spans more than 10x: log scale; disk (10-87 MiB) stays linear
        assert latency_ax.get_xscale() == "log" and disk_ax.get_xscale() == "linear"
        # whiskers: one error bar per measured latency, from p50 to p99
        assert len([c for c in latency_ax.collections if c.__class__.__name__ == "LineCollection"]) >= 7
    finally:
        plt.close(fig)


def test_latency_spread_reads_rounds_before_the_request_spread() -> None:
    record = Footprint(variant="v", latency_ms_b1_p50=10.0, latency_ms_b1_p95=12.0, latency_ms_b1_p99=20.0)
    spread = latency_interval(record, "latency_ms_b1_p95")
    assert spread is not None and (spread.low, spread.high, spread.source) == (10.0, 20.0, "p50-p99")
    record.extra["latency_ms_b1_p95_spread"] = [11.5, 12.6]
    spread = latency_interval(record, "latency_ms_b1_p95")
    assert spread is not None and (spread.low, spread.high, spread.source) == (11.5, 12.6, "rounds")
    assert latency_interval(Footprint(variant="none"), "latency_ms_b1_p95") is None


@pytest.mark.parametrize(
    ("record", "runtime"),
    [
        (Footprint(variant="a", chain="fp32"), "torch"),
        (Footprint(variant="b", chain="int8_dynamic|compile", compiled=True), "torch.compile"),
        (Footprint(variant="c", chain="distill|onnx_int8_dynamic"), "onnxruntime"),
        (Footprint(variant="d", chain="fp32", extra={"runtime": "onnxruntime"}), "onnxruntime"),
    ],
)
def test_runtime_is_read_from_the_record_or_its_chain(record: Footprint, runtime: str) -> None:
    assert runtime_of(record) == runtime
