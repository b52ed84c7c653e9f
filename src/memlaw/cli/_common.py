"""What every CLI command shares: the Typer app, the consoles, logging set-up, the error boundary."""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext

import typer
from rich.console import Console

from memlaw.errors import MemlawError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Write records into a frozen LLM's adapter, certify them, recall them exactly.")
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def setup_logging(verbose: bool = False) -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def run(fn):
    """Call `fn`; a MemlawError becomes one line on stderr and exit code 2."""
    try:
        return fn()
    except MemlawError as e:
        err.print(f"memlaw: error: {e}", markup=False, soft_wrap=True)
        raise typer.Exit(2)



__all__ = ["app", "out", "err", "setup_logging", "run", "nullcontext"]
