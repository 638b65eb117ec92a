"""The ``tightfit`` command line: one Typer app; each area of ``tightfit.commands`` registers its commands.

Errors a user can fix (``TightfitError``) print their message and exit with status 2, no traceback.
Heavy libraries (torch, ray, mlflow, kfp) are imported inside commands, so ``tightfit --help`` is fast.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

import typer
from rich.console import Console
from rich.markup import escape

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

VERBOSE_ENV = "TIGHTFIT_VERBOSE"
QUIET_LOGGERS = ("torchao", "torch.utils._pytree")
"""Import-time library notices a user cannot act on: torchao's optional CUDA/cutlass extensions that a CPU
build lacks, torch's pytree deprecations of Enum registrations made inside torchao."""
QUIET_WARNING_CATEGORIES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def quiet_libraries() -> None:
    """Hide library notices a user cannot act on (``--verbose`` or ``TIGHTFIT_VERBOSE=1`` shows them)."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for category in QUIET_WARNING_CATEGORIES:
        warnings.filterwarnings("ignore", category=category)


class _WarningLines(logging.Handler):
    """One ``warning: ...`` line on the current stderr per record."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(f"warning: {record.getMessage()}\n")


def show_tightfit_warnings() -> None:
    """tightfit's own warnings (e.g. the rows a dataset check dropped) as one ``warning:`` line each."""
    logger = logging.getLogger("tightfit")
    if not any(isinstance(h, _WarningLines) for h in logger.handlers):
        logger.addHandler(_WarningLines(logging.WARNING))
        logger.setLevel(logging.WARNING)
        logger.propagate = False


@app.callback(invoke_without_command=True)
def root(
    ctx: typer.Context,
    verbose: bool = typer.Option(False, "--verbose", help="Show library warnings (torch, torchao, ...) too."),
) -> None:
    """Fit models to the hardware you have. With no command: the three commands a newcomer needs and where
    results land."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    elif os.environ.get(VERBOSE_ENV) != "1":
        quiet_libraries()
    show_tightfit_warnings()
    if ctx.invoked_subcommand is None:
        Console().print(welcome_text(), highlight=False, soft_wrap=True)


for _area in (pipeline, compress, train, serve, track):
    _area.register(app)


def main() -> None:
    """Entry point: run the app, turning project errors into one clear line."""
    try:
        app(standalone_mode=False)
    except TightfitError as exc:  # one line, never wrapped or read as markup
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True, highlight=False)
        sys.exit(2)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except Exception as exc:  # usage errors (typer's own click, or click) carry their own exit code
        import click

        if isinstance(exc, typer.TyperException | click.ClickException):
            show = getattr(exc, "show", None)
            if callable(show):
                show()
            else:
                err_console.print(f"error: {escape(str(exc))}", soft_wrap=True, highlight=False)
            sys.exit(int(getattr(exc, "exit_code", 2)))
        raise


if __name__ == "__main__":
    main()
