"""The Pareto plot: quality vs size on disk and vs latency, two panels, frontier highlighted.

Every variant is a numbered marker (the same number as its row in the HTML report) with the names in a
legend column, so labels never overlap however close two variants measure; the numbers are placed
greedily where they cover neither another number nor a marker. The marker shape is the runtime; the
latency panel draws the measurement's spread as whiskers; an axis whose values span more than 10x is
logarithmic. Drawn with matplotlib's Agg backend (no display needed); the parent MLflow run and the
pipeline report both carry the PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tightfit import names
from tightfit.footprint import Footprint
from tightfit.select.choose import Objective, pareto_front
from tightfit.select.display import latency_interval, needs_log_scale, runtime_of, variant_numbers

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MiB = 2**20
FRONT_COLOR = "#d1495b"
DOMINATED_COLOR = "#9aa5b1"
CHOSEN_COLOR = "#00798c"
LABEL_GID = "tightfit-variant-label"
RUNTIME_MARKERS = {"torch": "o", "torch.compile": "s", "onnxruntime": "D"}
OTHER_MARKER = "^"
MARKER_SIZE = 46  # points^2
# Candidate label offsets (points): 8 directions at growing distances, nearest first.
_DIRECTIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (0, 1), (-1, 0), (0, -1))
_RADII = (6, 11, 17, 24, 33, 44)
_LABEL_STYLE: dict[str, Any] = {
    "fontsize": 8.5, "fontweight": "bold", "zorder": 6, "gid": LABEL_GID,
    "bbox": {"boxstyle": "square,pad=0.05", "fc": "white", "ec": "none", "alpha": 0.8},
}


def _panel_front(records: Sequence[Footprint], quality: Objective, x_metric: str) -> list[Footprint]:
    front = pareto_front(records, [quality, (x_metric, "min")])
    return sorted(front, key=lambda r: float(getattr(r, x_metric)))


def _overlap(a: Any, b: Any) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def _obstacles(ax: Axes, marker_px: float) -> list[tuple[Any, float]]:
    """What a label should not cover, in pixels, with a weight: markers (the chosen ring is larger) fully,
    whiskers and the frontier line half."""
    from matplotlib.collections import LineCollection, PathCollection
    from matplotlib.transforms import Bbox

    out: list[tuple[Any, float]] = []
    for artist in ax.get_children():
        if isinstance(artist, PathCollection):
            import numpy as np

            offsets = np.asarray(artist.get_offsets())
            sizes = np.broadcast_to(np.asarray(artist.get_sizes(), dtype=float), (len(offsets),))
            for (px, py), size in zip(artist.get_offset_transform().transform(offsets), sizes, strict=True):
                half = max(marker_px, (float(size) ** 0.5) * ax.figure.dpi / 72) / 2 + 1.5
                out.append((Bbox.from_extents(px - half, py - half, px + half, py + half), 1.0))
        elif isinstance(artist, LineCollection):  # errorbar whiskers
            for segment in artist.get_segments():
                (x0, y0), (x1, y1) = ax.transData.transform(segment[0]), ax.transData.transform(segment[-1])
                out.append((Bbox.from_extents(min(x0, x1), min(y0, y1) - 1.5, max(x0, x1), max(y0, y1) + 1.5), 0.5))
    return out


def place_labels(ax: Axes, points: Sequence[tuple[float, float, str]], marker_px: float) -> list[Any]:
    """Annotate each (x, y, text) next to its point where the text overlaps no placed label, no marker
    and stays inside the axes; the least-overlapping spot when none is free. Far labels get a leader line.

    Call after the axes' limits, scales and the figure layout are final (positions are in pixels).
    """
    fig = ax.figure
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    obstacles = _obstacles(ax, marker_px)
    frame = ax.get_window_extent(renderer)
    placed: list[Any] = []
    texts = []
    for x, y, text in points:
        best: tuple[float, Any, Any] | None = None
        for radius in _RADII:
            for dx, dy in _DIRECTIONS:
                norm = (dx * dx + dy * dy) ** 0.5
                offset = (radius * dx / norm, radius * dy / norm)
                label = ax.annotate(
                    text, (x, y), xytext=offset, textcoords="offset points", **_LABEL_STYLE,
                    ha="left" if dx > 0 else ("right" if dx < 0 else "center"),
                    va="bottom" if dy > 0 else ("top" if dy < 0 else "center"),
                )
                box = label.get_window_extent(renderer).expanded(1.0, 1.0).padded(1.5)
                outside = box.width * box.height - _overlap(box, frame)
                cost = (sum(_overlap(box, o) for o in placed) + outside
                        + sum(weight * _overlap(box, o) for o, weight in obstacles))
                if best is None or cost < best[0]:
                    if best is not None:
                        best[1].remove()
                    best = (cost, label, box)
                else:
                    label.remove()
                if cost == 0:
                    break
            if best is not None and best[0] == 0:
                break
        assert best is not None
        _, label, box = best
        if max(abs(v) for v in label.xyann) > _RADII[2]:
            label.remove()
            label = ax.annotate(
                text, (x, y), xytext=label.xyann, textcoords="offset points", **_LABEL_STYLE,
                ha=label.get_ha(), va=label.get_va(),
                arrowprops={"arrowstyle": "-", "lw": 0.6, "color": "#666666", "shrinkA": 0, "shrinkB": 4},
            )
        placed.append(box)
        texts.append(label)
    return texts


def _quality(ok: Sequence[Footprint]) -> tuple[Objective, str]:
    if ok and all(r.accuracy is None and r.perplexity is not None for r in ok):
        return (names.PERPLEXITY, "min"), "perplexity (lower is better)"
    return (names.ACCURACY, "max"), "accuracy (test split)"


def _draw_panel(ax: Axes, points: list[Footprint], quality: Objective, x_metric: str, scale: float,
                chosen: str | None) -> list[tuple[float, float]]:
    """Markers (shape = runtime, colour = on the front or not), the frontier, the chosen ring and the
    latency whiskers; returns the marker positions in data units."""
    q = quality[0]
    front = _panel_front(points, quality, x_metric)
    front_ids = {id(r) for r in front}
    xy = []
    for record in points:
        x, y = float(getattr(record, x_metric)) * scale, float(getattr(record, q))
        xy.append((x, y))
        if x_metric.startswith("latency_ms_"):
            spread = latency_interval(record, x_metric)
            if spread is not None and spread.high > spread.low:
                ax.errorbar([x], [y], xerr=[[x - spread.low * scale], [spread.high * scale - x]], fmt="none",
                            ecolor="#555555", elinewidth=1.0, capsize=3, alpha=0.7, zorder=2)
        color = FRONT_COLOR if id(record) in front_ids else DOMINATED_COLOR
        marker = RUNTIME_MARKERS.get(runtime_of(record), OTHER_MARKER)
        ax.scatter([x], [y], s=MARKER_SIZE, marker=marker, color=color, edgecolors="white", linewidths=0.6, zorder=3)
        if chosen is not None and record.variant == chosen:
            ax.scatter([x], [y], marker="*", s=340, facecolors="none", edgecolors=CHOSEN_COLOR, linewidths=1.6,
                       zorder=4)
    if front:
        ax.step([float(getattr(r, x_metric)) * scale for r in front], [float(getattr(r, q)) for r in front],
                where="post", color=FRONT_COLOR, alpha=0.5, zorder=1)
    return xy


def _legend(ax: Axes, records: Sequence[Footprint], numbers: dict[str, int], chosen: str | None,
            whiskers: set[str]) -> None:
    """The legend column: number -> variant, then what shapes, colours, the star and whiskers mean."""
    from matplotlib.lines import Line2D

    ax.axis("off")
    lines = []
    for record in records:
        mark = " (failed)" if not record.ok else (" (chosen)" if record.variant == chosen else "")
        lines.append(f"{numbers[record.variant]:>2}  {record.variant}{mark}")
    ax.text(0.0, 1.0, "\n".join(lines), transform=ax.transAxes, va="top", ha="left", fontsize=8,
            family="monospace", linespacing=1.45)
    runtimes = sorted({runtime_of(r) for r in records if r.ok})
    handles = [Line2D([], [], ls="", marker=RUNTIME_MARKERS.get(rt, OTHER_MARKER), color="#444444", label=rt)
               for rt in runtimes]
    if runtimes:
        handles += [
            Line2D([], [], ls="", marker="o", color=FRONT_COLOR, label="Pareto front"),
            Line2D([], [], ls="", marker="o", color=DOMINATED_COLOR, label="dominated"),
        ]
    if chosen is not None:
        handles.append(Line2D([], [], ls="", marker="*", markersize=12, markerfacecolor="none",
                              markeredgecolor=CHOSEN_COLOR, label=f"chosen: {chosen}"))
    if whiskers:
        what = "spread between rounds" if whiskers == {"rounds"} else "latency p50-p99 / rounds"
        if whiskers == {"p50-p99"}:
            what = "latency p50 to p99"
        handles.append(Line2D([], [], color="#555555", marker="|", markersize=8, label=f"whiskers: {what}"))
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 0.0), fontsize=8, frameon=False,
              handletextpad=0.4, borderaxespad=0.0)


def draw_pareto(
    records: Sequence[Footprint],
    *,
    chosen: str | None = None,
    latency_metric: str = names.LATENCY_MS_B1_P95,
    title: str | None = None,
) -> Figure:
    """The two-panel figure (quality vs disk MiB, quality vs latency ms) plus the legend column.

    Each panel highlights its own 2-D frontier; ``chosen`` (a variant name) is ringed with a star.
    Failed or unmeasured variants are left out of the panels they lack a figure for (the legend lists them).
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    ok = [r for r in records if r.ok]
    quality, q_label = _quality(ok)
    numbers = variant_numbers(records)
    panels = [
        (names.DISK_BYTES, "size on disk (MiB)", 1.0 / MiB),
        (latency_metric, f"{latency_metric.replace('_', ' ')} (ms)", 1.0),
    ]
    fig = plt.figure(figsize=(12.8, 4.9), dpi=100)
    grid = fig.add_gridspec(1, 3, width_ratios=(1.0, 1.0, 0.55), left=0.055, right=0.995, bottom=0.12,
                            top=0.88, wspace=0.2)
    axes = [fig.add_subplot(grid[0, i]) for i in range(3)]
    whiskers: set[str] = set()
    labelled: list[tuple[Any, list[tuple[float, float, str]]]] = []
    for ax, (x_metric, x_label, scale) in zip(axes[:2], panels, strict=True):
        points = [r for r in ok if getattr(r, x_metric) is not None and getattr(r, quality[0]) is not None]
        xy = _draw_panel(ax, points, quality, x_metric, scale, chosen)
        if x_metric.startswith("latency_ms_"):
            whiskers |= {s.source for r in points if (s := latency_interval(r, x_metric)) and s.high > s.low}
        if needs_log_scale([x for x, _ in xy]):
            ax.set_xscale("log")
            x_label += ", log scale"
        if needs_log_scale([y for _, y in xy]):
            ax.set_yscale("log")
        ax.set_xlabel(x_label)
        ax.set_ylabel(q_label)
        ax.grid(alpha=0.3)
        if not points:
            ax.text(0.5, 0.5, "nothing measured", ha="center", va="center", transform=ax.transAxes)
        ax.margins(0.12, 0.15)
        ax.autoscale_view()
        ax.set_xlim(ax.get_xlim())
        ax.set_ylim(ax.get_ylim())
        labelled.append((ax, [(x, y, str(numbers[r.variant])) for (x, y), r in zip(xy, points, strict=True)]))
    _legend(axes[2], records, numbers, chosen, whiskers)
    failed = [r.variant for r in records if not r.ok]
    suptitle = title or "tightfit variants"
    if failed:
        suptitle += f"  (failed: {', '.join(failed)})"
    fig.suptitle(suptitle)
    fig.canvas.draw()
    marker_px = (MARKER_SIZE**0.5) * fig.dpi / 72
    for ax, spots in labelled:
        place_labels(ax, spots, marker_px)
    return fig


def pareto_plot(
    records: Sequence[Footprint],
    out_path: str | Path,
    *,
    chosen: str | None = None,
    latency_metric: str = names.LATENCY_MS_B1_P95,
    title: str | None = None,
) -> Path:
    """Write ``draw_pareto``'s figure as a PNG; return its path."""
    import matplotlib.pyplot as plt

    fig = draw_pareto(records, chosen=chosen, latency_metric=latency_metric, title=title)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    plt.close(fig)
    return out
