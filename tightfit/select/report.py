"""The selection report the ``select`` component writes: an HTML page with the Pareto plot and the table."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from tightfit.footprint import Footprint
from tightfit.select.choose import Selection
from tightfit.units import format_bytes

COLUMNS: tuple[tuple[str, str], ...] = (
    ("variant", "variant"),
    ("chain", "chain"),
    ("status", "status"),
    ("accuracy", "accuracy"),
    ("params_total", "params"),
    ("disk_bytes", "disk"),
    ("peak_rss_serve_bytes", "peak RSS (serve)"),
    ("latency_ms_b1_p95", "p95 ms b1"),
    ("latency_ms_b32_p95", "p95 ms b32"),
    ("compression_ratio", "size ratio"),
    ("speedup_b32", "speedup b32"),
)


def cell(record: Footprint, key: str) -> str:
    """One table cell as people read it (sizes in MiB/GiB, ratios with an x, accuracy with 3 digits)."""
    value: Any = getattr(record, key, None)
    if value is None:
        return "-"
    if key.endswith("_bytes"):
        return format_bytes(value)
    if key == "params_total":
        return f"{value / 1e6:.2f}M"
    if key in ("compression_ratio", "speedup_b32"):
        return f"{value:.2f}x"
    if key == "accuracy":
        return f"{value:.3f}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def write_report(path: str | Path, selection: Selection, records: list[Footprint], plot: Path | None) -> Path:
    """Write the report: the target, the chosen variant, the Pareto plot (inline PNG), every record and why."""
    front = {r.variant for r in selection.front}
    chosen = selection.chosen.variant if selection.chosen else None
    rows = []
    for record in records:
        marks = []
        if record.variant == chosen:
            marks.append("chosen")
        if record.variant in front:
            marks.append("pareto")
        why = "; ".join(selection.reasons.get(record.variant, [])) or (record.error or "")
        cells = "".join(f"<td>{html.escape(cell(record, key))}</td>" for key, _ in COLUMNS)
        rows.append(f"<tr class='{' '.join(marks)}'>{cells}<td>{html.escape(', '.join(marks))}</td>"
                    f"<td>{html.escape(why)}</td></tr>")
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in COLUMNS) + "<th>marks</th><th>why not</th>"
    image = ""
    if plot is not None and plot.exists():
        encoded = base64.b64encode(plot.read_bytes()).decode()
        image = f"<img alt='Pareto front' src='data:image/png;base64,{encoded}'/>"
    verdict = (f"<p><b>chosen:</b> {html.escape(selection.chosen.variant)} ({html.escape(selection.chosen.chain)})</p>"
               if selection.chosen is not None else "<p><b>no variant fits the target</b></p>")
    failed = "".join(f"<li>{html.escape(r.variant)}: {html.escape(r.error or 'failed')}</li>" for r in selection.failed)
    page = f"""<!doctype html><html><head><meta charset='utf-8'><title>tightfit selection</title>
<style>body{{font-family:sans-serif}} td,th{{padding:2px 8px;border-bottom:1px solid #ddd}}
tr.chosen{{background:#e6ffe6}} tr.pareto td:first-child{{font-weight:bold}}</style></head><body>
<h1>tightfit: variant selection</h1><p><b>target:</b> {html.escape(selection.target.describe())}</p>
{verdict}{image}<table><tr>{head}</tr>{''.join(rows)}</table>
{'<h2>failed variants</h2><ul>' + failed + '</ul>' if failed else ''}</body></html>"""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    return out
