"""The selection report: one self-contained HTML page (Pareto plot inline) that fits a laptop screen.

The page leads with the verdict (the chosen variant and its headline figures, or that nothing fits), then
the plot, then one compact row per variant: its number in the plot, name with the chain on a second line,
runtime, quality, size, serving memory, latency with its measured spread, ratios against the baseline,
and the verdict (chosen, fits, or the limits it misses, each with the measured figure against the limit;
the full sentence is the cell's tooltip and sits in the "why" list below). The ``select`` component writes
it beside the plot, and the parent MLflow run carries the same file.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tightfit import names
from tightfit.footprint import Footprint
from tightfit.select.choose import Selection, fit_misses, latency_objective
from tightfit.select.display import latency_interval, runtime_of, variant_numbers
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
"""The figures of the terminal summary (``tightfit run``), in order."""

_CSS = """
*{box-sizing:border-box}
body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2933;background:#fff}
main{max-width:1240px;margin:0 auto;padding:16px 20px 32px}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:17px;margin:0 0 6px}
.muted{color:#616e7c}
.target{margin:0 0 12px}
.verdict{border-left:5px solid #2f9e44;background:#ebfbee;padding:10px 14px;margin:0 0 14px;border-radius:4px}
.verdict.none{border-color:#c92a2a;background:#fff5f5}
.facts{display:flex;flex-wrap:wrap;gap:4px 18px;margin:4px 0;padding:0;list-style:none}
figure{margin:0 0 12px}
figure img{display:block;max-width:100%;height:auto}
figcaption{font-size:12px;color:#616e7c}
table{width:100%;border-collapse:collapse;font-size:13px}
th{text-align:left;font-weight:600;border-bottom:2px solid #cbd2d9;padding:4px 6px;white-space:nowrap}
td{border-bottom:1px solid #e4e7eb;padding:4px 6px;vertical-align:top;overflow-wrap:anywhere}
td.num,th.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
td.n{color:#616e7c;text-align:right}
.sub{display:block;font-size:11px;color:#7b8794;font-weight:400}
.chain{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;overflow-wrap:anywhere}
tr.chosen{background:#ebfbee}
tr.chosen td.variant{font-weight:700}
tr.failed td{color:#a61e4d}
.badge{display:inline-block;font-size:11px;padding:0 5px;border-radius:8px;background:#e4e7eb;color:#323f4b;margin-right:3px}
.badge.ok{background:#d3f9d8;color:#2b8a3e}.badge.no{background:#ffe3e3;color:#c92a2a}.badge.front{background:#fff3bf;color:#8f6c00}
td.why{min-width:170px}
details{margin-top:14px}
dl{margin:6px 0}dt{font-weight:600;margin-top:6px}dd{margin:0 0 0 16px;overflow-wrap:anywhere}
"""


_POLICY = ("among the fitting variants within 0.5 accuracy points of the best, the smallest serving memory wins, "
           "then disk, then latency")


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


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _chain_html(chain: str) -> str:
    """The chain with a break opportunity after each step, so a long chain wraps instead of widening the page."""
    return "|<wbr>".join(_e(step) for step in chain.split("|"))


def _latency_html(record: Footprint, metric: str) -> str:
    spread = latency_interval(record, metric)
    if spread is None:
        return "-"
    sub = ""
    if spread.source == "p50-p99":
        sub = f"<span class='sub'>p50-p99 {spread.low:.1f}-{spread.high:.1f}</span>"
    elif spread.source == "rounds":
        sub = f"<span class='sub'>rounds {spread.low:.1f}-{spread.high:.1f}</span>"
    return f"{spread.value:.1f}{sub}"


def _quality_key(records: Sequence[Footprint]) -> tuple[str, str]:
    ok = [r for r in records if r.ok]
    if ok and all(r.accuracy is None and r.perplexity is not None for r in ok):
        return names.PERPLEXITY, "perplexity"
    return names.ACCURACY, "accuracy"


def _quality_html(record: Footprint, key: str) -> str:
    value = getattr(record, key)
    if value is None:
        return "-"
    if key == names.PERPLEXITY:
        return f"{value:.2f}"
    drop = f"<span class='sub'>{-record.accuracy_drop:+.2f} pts</span>" if record.accuracy_drop else ""
    return f"{value:.3f}{drop}"


def _ratio(value: float | None, word: str) -> str:
    return "-" if value is None else f"{value:.2f}x<span class='sub'>{word}</span>"


def _verdict_html(record: Footprint, selection: Selection, chosen: str | None, front: set[str]) -> str:
    badges = ""
    if record.variant in front:
        badges += "<span class='badge front' title='on the Pareto front: nothing is better on every figure'>front</span>"
    if record.variant == chosen:
        return f"<span class='badge ok'>chosen</span>{badges}"
    misses = fit_misses(record, selection.target)
    if not misses:
        return (f"<span class='badge ok' title='{_e(_POLICY)}'>fits</span>{badges}"
                f"<span class='sub'>ranked below the chosen one</span>")
    if not record.ok:
        return f"<span class='badge no'>failed</span><span class='sub'>{_e((record.error or 'failed')[:140])}</span>"
    limits = ", ".join(dict.fromkeys(m.limit for m in misses))
    tooltip = _e("; ".join(m.text for m in misses))
    shorts = "".join(f"<span class='sub'>{_e(m.short)}</span>" for m in misses)
    return f"<span title='{tooltip}'><span class='badge no'>misses {_e(limits)}</span>{badges}{shorts}</span>"


def _other_latency(latency: str) -> str:
    """The second latency column: batch 32 beside the target's batch-1 figure, else batch 1."""
    return names.LATENCY_MS_B1_P95 if latency == names.LATENCY_MS_B32_P95 else names.LATENCY_MS_B32_P95


def _rows(records: Sequence[Footprint], selection: Selection, latency: str) -> str:
    numbers = variant_numbers(records)
    front = {r.variant for r in selection.front}
    chosen = selection.chosen.variant if selection.chosen else None
    q_key, _ = _quality_key(records)
    rows = []
    for record in records:
        classes = ["chosen"] if record.variant == chosen else (["failed"] if not record.ok else [])
        cells = [
            f"<td class='n'>{numbers[record.variant]}</td>",
            f"<td class='variant' title='{_e(record.chain)}'>{_e(record.variant)}"
            f"<span class='sub chain'>{_chain_html(record.chain)}</span></td>",
            f"<td>{_e(runtime_of(record)) if record.ok else '-'}</td>",
            f"<td class='num'>{_quality_html(record, q_key)}</td>",
            f"<td class='num'>{_e(cell(record, names.DISK_BYTES))}</td>",
            f"<td class='num'>{_e(cell(record, names.PEAK_RSS_SERVE_BYTES))}</td>",
            f"<td class='num'>{_latency_html(record, latency)}</td>",
            f"<td class='num'>{_latency_html(record, _other_latency(latency))}</td>",
            f"<td class='num'>{_ratio(record.compression_ratio, 'smaller')}</td>",
            f"<td class='num'>{_ratio(record.speedup_b32, 'faster b32')}</td>",
            f"<td class='why'>{_verdict_html(record, selection, chosen, front)}</td>",
        ]
        rows.append(f"<tr class='{' '.join(classes)}' id='v-{numbers[record.variant]}'>{''.join(cells)}</tr>")
    return "".join(rows)


def _head(records: Sequence[Footprint], latency: str) -> str:
    _, q_label = _quality_key(records)
    lat, other = (m.removeprefix("latency_ms_").replace("_", " ") for m in (latency, _other_latency(latency)))
    labels = [("#", "n"), ("variant / chain", ""), ("runtime", ""), (q_label, "num"), ("disk", "num"),
              ("RSS serving", "num"), (f"{lat} ms", "num"), (f"{other} ms", "num"), ("size", "num"),
              ("speed", "num"), ("verdict", "")]
    return "".join(f"<th class='{cls}'>{_e(label)}</th>" for label, cls in labels)


def _verdict_section(selection: Selection, records: Sequence[Footprint], latency: str) -> str:
    counts = (f"{len(records)} variants measured · {len(selection.fitting)} fit · {len(selection.front)} on the "
              f"Pareto front · {len(selection.failed)} failed")
    chosen = selection.chosen
    if chosen is None:
        return (f"<section class='verdict none'><h2>No variant fits the target</h2>"
                f"<p>Each row below names the limit it misses; loosen that limit or add a smaller variant.</p>"
                f"<p class='muted'>{_e(counts)}</p></section>")
    q_key, q_label = _quality_key(records)
    spread = latency_interval(chosen, latency)
    facts = [
        f"{q_label} {_quality_html(chosen, q_key).split('<')[0]}",
        f"RSS serving {cell(chosen, names.PEAK_RSS_SERVE_BYTES)}",
        f"disk {cell(chosen, names.DISK_BYTES)}",
        f"{latency.removeprefix('latency_ms_').replace('_', ' ')} {spread.value:.1f} ms" if spread else "",
        f"runtime {runtime_of(chosen)}",
    ]
    items = "".join(f"<li>{_e(f)}</li>" for f in facts if f)
    return (f"<section class='verdict'><h2>Chosen: {_e(chosen.variant)}</h2>"
            f"<div class='chain muted'>{_chain_html(chosen.chain)}</div><ul class='facts'>{items}</ul>"
            f"<p class='muted'>{_e(counts)}</p></section>")


def _why_section(records: Sequence[Footprint], selection: Selection) -> str:
    numbers = variant_numbers(records)
    entries = []
    for record in records:
        misses = fit_misses(record, selection.target)
        if misses:
            items = "".join(f"<dd>{_e(m.text)}</dd>" for m in misses)
            entries.append(f"<dt>{numbers[record.variant]} {_e(record.variant)}</dt>{items}")
    notes = "".join(f"<dd>{_e(n)}</dd>" for n in selection.notes)
    if notes:
        entries.append(f"<dt>notes</dt>{notes}")
    if not entries:
        return ""
    return f"<details><summary>Why each rejected variant misses (full reasons)</summary><dl>{''.join(entries)}</dl></details>"


def render_report(selection: Selection, records: Sequence[Footprint], plot: Path | None) -> str:
    """The report page as one HTML string (the plot inlined as a PNG data URI)."""
    latency, _ = latency_objective(selection.target)
    image = ""
    if plot is not None and plot.exists():
        encoded = base64.b64encode(plot.read_bytes()).decode()
        image = (f"<figure><img alt='Pareto plots: quality against size on disk and against latency' "
                 f"src='data:image/png;base64,{encoded}'/><figcaption>Each number is the row's # below. Shape: "
                 f"runtime; red: on the Pareto front; whiskers: the spread of the measured latency.</figcaption>"
                 f"</figure>")
    title = f"tightfit: {selection.chosen.variant if selection.chosen else 'no variant fits'}"
    return f"""<!doctype html><html lang='en'><head><meta charset='utf-8'>
<meta name='viewport' content='width=device-width, initial-scale=1'><title>{_e(title)}</title>
<style>{_CSS}</style></head><body><main>
<h1>Variant selection</h1><p class='target muted'>Target: {_e(selection.target.describe())}</p>
{_verdict_section(selection, records, latency)}{image}
<table><thead><tr>{_head(records, latency)}</tr></thead><tbody>{_rows(records, selection, latency)}</tbody></table>
{_why_section(records, selection)}
</main></body></html>"""


def write_report(path: str | Path, selection: Selection, records: list[Footprint], plot: Path | None) -> Path:
    """Write ``render_report``'s page to ``path`` (parents created); return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(selection, records, plot), encoding="utf-8")
    return out
