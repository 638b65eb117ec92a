"""CLI commands: run, compile, submit (placeholders until their issue lands)."""

from __future__ import annotations

import typer

from tightfit.errors import TightfitError


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""

    @app.command("run", help="Run the default pipeline (fit_for_serving) locally with kfp.local, Ray and MLflow.")
    def run_command() -> None:
        raise TightfitError("`tightfit run` is not implemented yet (issue #8)")

    @app.command("compile", help="Compile a pipeline to KFP IR YAML.")
    def compile_command() -> None:
        raise TightfitError("`tightfit compile` is not implemented yet (issue #8)")

    @app.command("submit", help="Submit a compiled pipeline to a KFP API server.")
    def submit_command() -> None:
        raise TightfitError("`tightfit submit` is not implemented yet (issue #8)")
