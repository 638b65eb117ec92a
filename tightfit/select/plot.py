"""The Pareto plot: quality vs size on disk and vs latency, two panels, frontier highlighted.

Drawn with matplotlib's Agg backend (no display needed); the parent MLflow run and the pipeline report
both carry the PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tightfit import names
from tightfit.footprint import Footprint
from tightfit.select.choose import Objective, pareto_front

MiB = 2**20


def _panel_front(records: Sequence[Footprint], quality: Objective, x_metric: str) -> list[Footprint]:
    front = pareto_front(records, [quality, (x_metric, "min")])
    return sorted(front, key=lambda r: float(getattr(r, x_metric)))


def pareto_plot(
    records: Sequence[Footprint],
    out_path: str | Path,
    *,
    chosen: str | None = None,
    latency_metric: str = names.LATENCY_MS_B1_P95,
    title: str | None = None,
) -> Path:
    """Write a two-panel PNG (quality vs disk MiB, quality vs latency ms); return its path.

    Each panel highlights its own 2-D frontier (best quality for the size or latency) and labels every
    measured variant; ``chosen`` (a variant name) is drawn as a star. Failed or unmeasured variants are
    left out of the panels they lack a figure for.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    ok = [r for r in records if r.ok]
    use_ppl = bool(ok) and all(r.accuracy is None and r.perplexity is not None for r in ok)
    quality: Objective = (names.PERPLEXITY, "min") if use_ppl else (names.ACCURACY, "max")
    q_label = "perplexity (lower is better)" if use_ppl else "accuracy (test split)"
    panels = [
        (names.DISK_BYTES, "size on disk (MiB)", 1.0 / MiB),
        (latency_metric, f"{latency_metric.replace('_', ' ')} (ms)", 1.0),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), dpi=110)
    for ax, (x_metric, x_label, scale) in zip(axes, panels, strict=True):
        points = [r for r in ok if getattr(r, x_metric) is not None and getattr(r, quality[0]) is not None]
        front = _panel_front(points, quality, x_metric)
        front_ids = {id(r) for r in front}
        others = [r for r in points if id(r) not in front_ids]
        ax.scatter(
            [getattr(r, x_metric) * scale for r in others],
            [getattr(r, quality[0]) for r in others],
            color="#9aa5b1",
            label="dominated",
            zorder=2,
        )
        ax.scatter(
            [getattr(r, x_metric) * scale for r in front],
            [getattr(r, quality[0]) for r in front],
            color="#d1495b",
            label="Pareto front",
            zorder=3,
        )
        if front:
            ax.step(
                [getattr(r, x_metric) * scale for r in front],
                [getattr(r, quality[0]) for r in front],
                where="post",
                color="#d1495b",
                alpha=0.6,
                zorder=1,
            )
        lean = [r for r in points if r.runtime == names.RUNTIME_ONNXRUNTIME]  # the runtime, marked (issue 17)
        if lean:
            ax.scatter([getattr(r, x_metric) * scale for r in lean], [getattr(r, quality[0]) for r in lean],
                       marker="s", s=110, facecolors="none", edgecolors="#30638e", linewidths=1.4,
                       label="runs on ONNX Runtime", zorder=4)
        for r in points:
            ax.annotate(
                r.variant,
                (getattr(r, x_metric) * scale, getattr(r, quality[0])),
                textcoords="offset points",
                xytext=(5, 4),
                fontsize=8,
            )
            if chosen is not None and r.variant == chosen:
                ax.scatter(
                    [getattr(r, x_metric) * scale],
                    [getattr(r, quality[0])],
                    marker="*",
                    s=260,
                    facecolors="none",
                    edgecolors="#00798c",
                    linewidths=1.8,
                    label=f"chosen: {chosen}",
                    zorder=4,
                )
        ax.set_xlabel(x_label)
        ax.set_ylabel(q_label)
        ax.grid(alpha=0.3)
        if points:
            ax.legend(loc="lower right" if not use_ppl else "upper right", fontsize=8)
        else:
            ax.text(0.5, 0.5, "nothing measured", ha="center", va="center", transform=ax.transAxes)
    failed = [r.variant for r in records if not r.ok]
    suptitle = title or "tightfit variants"
    if failed:
        suptitle += f"  (failed: {', '.join(failed)})"
    fig.suptitle(suptitle)
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    plt.close(fig)
    return out
