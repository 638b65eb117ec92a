"""CLI commands: compress, methods, profile (placeholders until their issue lands)."""

from __future__ import annotations

import typer

from tightfit.errors import TightfitError


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""

    @app.command("compress", help="Apply a variant spec (a chain of compression steps) to a model and save the variant.")
    def compress_command() -> None:
        raise TightfitError("`tightfit compress` is not implemented yet (issue #4)")

    @app.command("methods", help="List every compression method, its parameters and the devices it runs on.")
    def methods_command() -> None:
        raise TightfitError("`tightfit methods` is not implemented yet (issue #4)")

    @app.command("profile", help="Measure a variant's footprint: params, bytes, peak memory, latency, accuracy.")
    def profile_command() -> None:
        raise TightfitError("`tightfit profile` is not implemented yet (issue #4)")
