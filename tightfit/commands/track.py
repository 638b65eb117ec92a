"""CLI command ``compare``: the variant table from MLflow, the Pareto front and the best fit under limits."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from tightfit.footprint import Footprint
    from tightfit.select.choose import Selection


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.1f}"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def variant_table(records: list[Footprint], selection: Selection) -> Any:
    """A rich table: one row per variant, the front marked, the chosen one highlighted, why others do not fit."""
    from rich.table import Table

    table = Table(title=f"tightfit variants — {selection.target.describe()}", show_lines=False)
    for header, justify in (
        ("", "left"), ("variant", "left"), ("chain", "left"), ("accuracy", "right"), ("params", "right"),
        ("disk MiB", "right"), ("serve RSS MiB", "right"), ("p95 b1 ms", "right"), ("p95 b32 ms", "right"),
        ("size x", "right"), ("speed x", "right"), ("fits", "left"),
    ):  # fmt: skip
        table.add_column(header, justify=justify)  # type: ignore[arg-type]
    chosen = selection.chosen
    for record in records:
        mark = "★" if chosen is record else ("●" if selection.on_front(record) else "")
        reasons = selection.reasons.get(record.variant)
        fits = "yes" if not reasons else "; ".join(reasons)
        quality = record.accuracy if record.accuracy is not None else record.perplexity
        table.add_row(
            mark,
            record.variant,
            record.chain,
            _num(quality, ".4f"),
            _num(record.params_total, ","),
            _mib(record.disk_bytes),
            _mib(record.peak_rss_serve_bytes),
            _num(record.latency_ms_b1_p95, ".2f"),
            _num(record.latency_ms_b32_p95, ".1f"),
            _num(record.compression_ratio, ".2f"),
            _num(record.speedup_b32, ".2f"),
            fits,
            style="bold green" if chosen is record else ("dim" if not record.ok else None),
        )
    table.caption = "★ chosen   ● Pareto front (accuracy vs serving memory, disk, latency)"
    return table


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""

    @app.command("compare", help="Print the variant table from MLflow with the Pareto front and the best fit.")
    def compare_command(
        experiment: str = typer.Option(None, "--experiment", "-e", help="MLflow experiment (default: tightfit)."),
        tracking_uri: str = typer.Option(
            None, "--tracking-uri", help="MLflow URI (default: $MLFLOW_TRACKING_URI, else ./tightfit-runs/mlflow.db)."
        ),
        parent: str = typer.Option(None, "--parent", help="Parent run id or record id (default: the newest run)."),
        budget: str = typer.Option(None, "--budget", "--memory-budget", help="Serving memory budget, e.g. 500MiB."),
        disk: str = typer.Option(None, "--disk", help="Disk budget, e.g. 100MB."),
        latency: str = typer.Option(None, "--latency", help="p95 latency SLO, e.g. 20ms."),
        latency_batch: int = typer.Option(1, "--latency-batch", help="Batch size the latency SLO applies to."),
        bandwidth: str = typer.Option(None, "--bandwidth", help="Memory bandwidth, e.g. 10GB/s (with --latency)."),
        min_accuracy: float = typer.Option(None, "--min-accuracy", help="Minimum test accuracy, e.g. 0.8."),
        sync: bool = typer.Option(False, "--sync", help="First push records buffered while MLflow was down."),
        as_json: bool = typer.Option(False, "--json", help="Print the selection report as JSON instead."),
    ) -> None:
        import json

        from rich.console import Console

        from tightfit.errors import BudgetError
        from tightfit.select.choose import select_variant
        from tightfit.spec import HardwareTarget
        from tightfit.track import Tracker, read_footprints

        console = Console()
        tracker = Tracker(tracking_uri, experiment)
        if sync:
            report = tracker.sync()
            if report.error:
                console.print(f"[yellow]sync stopped:[/] {report.error} ({report.pending} record(s) still buffered)")
            else:
                console.print(f"synced {report.applied} buffered record(s)")
        for line in tracker.outbox.dead_letter_report():  # refused by MLflow: kept, never dropped silently
            console.print(f"[yellow]{line}[/]", soft_wrap=True)
        target = HardwareTarget.parse(
            memory=budget, disk=disk, latency=latency, latency_batch=latency_batch, bandwidth=bandwidth,
            min_accuracy=min_accuracy,
        )
        records = read_footprints(experiment, parent, tracking_uri=tracking_uri)
        if not records:
            raise BudgetError("no variant runs found in MLflow; run a sweep first (`tightfit run`)")
        selection = select_variant(records, target)
        if as_json:
            typer.echo(json.dumps(selection.to_dict(), indent=2, default=str))
        else:
            console.print(variant_table(records, selection))
            for note in selection.notes:
                console.print(f"[dim]note: {note}[/]")
        if selection.chosen is None:
            raise BudgetError(f"no variant fits {target.describe()}; the table says why for each one")
        if not as_json:
            chosen = selection.chosen
            console.print(
                f"best under the limits: [bold]{chosen.variant}[/] ({chosen.chain}), "
                f"run {chosen.extra.get('mlflow_run_id', '?')}"
            )
