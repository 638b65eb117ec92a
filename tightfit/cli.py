"""The ``tightfit`` command line: one Typer app; each area registers its commands from ``tightfit.commands``.

Errors a user can fix (``TightfitError``) print their message and exit with status 2, no traceback.
Heavy libraries (torch, ray, mlflow, kfp) are imported inside commands, so ``tightfit --help`` is fast.
"""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console

from tightfit.errors import TightfitError

COMMAND_MODULES = ("pipeline", "compress", "train", "serve", "track")

app = typer.Typer(
    name="tightfit",
    help="Fit models to the hardware you have: compress, fine-tune on Ray, serve within a memory budget, "
    "track every variant in MLflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True)

for _name in COMMAND_MODULES:
    importlib.import_module(f"tightfit.commands.{_name}").register(app)


def main() -> None:
    """Entry point: run the app, turning project errors into one clear line."""
    try:
        app(standalone_mode=False)
    except TightfitError as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        sys.exit(2)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except Exception as exc:  # click usage errors carry their own exit code
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
