"""CLI commands: finetune (placeholders until their issue lands)."""

from __future__ import annotations

import typer

from tightfit.errors import TightfitError


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""

    @app.command("finetune", help="Fine-tune a model on Ray Train (local Ray, a Ray cluster, or a KubeRay RayJob).")
    def finetune_command() -> None:
        raise TightfitError("`tightfit finetune` is not implemented yet (issue #5)")
