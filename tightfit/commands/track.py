"""CLI commands: compare (placeholders until their issue lands)."""

from __future__ import annotations

import typer

from tightfit.errors import TightfitError


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""

    @app.command("compare", help="Print the variant table from MLflow with the Pareto front and the best fit.")
    def compare_command() -> None:
        raise TightfitError("`tightfit compare` is not implemented yet (issue #7)")
