"""The ``tightfit`` command line: one Typer app; each area of ``tightfit.commands`` registers its commands.

Errors a user can fix (``TightfitError``) print their message and exit with status 2, no traceback.
Heavy libraries (torch, ray, mlflow, kfp) are imported inside commands, so ``tightfit --help`` is fast.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from tightfit.commands import compress, pipeline, serve, track, train
from tightfit.commands.start import welcome_text
from tightfit.errors import TightfitError

app = typer.Typer(
    name="tightfit",
    help="Fit models to the hardware you have: compress, fine-tune on Ray, serve within a memory budget, "
    "track every variant in MLflow.",
    no_args_is_help=False,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True)


@app.callback(invoke_without_command=True)
def first_screen(ctx: typer.Context) -> None:
    """With no command: the three commands a newcomer needs and where results land."""
    if ctx.invoked_subcommand is None:
        Console().print(welcome_text(), highlight=False, soft_wrap=True)

for _area in (pipeline, compress, train, serve, track):
    _area.register(app)


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
