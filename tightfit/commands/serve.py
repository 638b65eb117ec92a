"""CLI commands: serve (placeholders until their issue lands)."""

from __future__ import annotations

import typer

from tightfit.errors import TightfitError


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""

    @app.command("serve", help="Serve the best variant that fits a memory budget on Ray Serve.")
    def serve_command() -> None:
        raise TightfitError("`tightfit serve` is not implemented yet (issue #6)")
