"""What every CLI command shares: the Typer app, the consoles, logging set-up, the error boundary."""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from contextlib import nullcontext

import typer
from rich.console import Console

from memlaw.errors import MemlawError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Write records into a frozen LLM's adapter, certify them, recall them exactly.")
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def setup_logging(verbose: bool = False) -> None:
    """Log memlaw's INFO lines with -v; quiet transformers and its progress bars.

    transformers reads the two variables when it is imported; it is not imported here, so that a
    command refusing bad input does so before the seconds that importing torch takes.
    """
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")   # what disable_progress_bar() sets
    os.environ.setdefault("TQDM_DISABLE", "1")        # transformers' GGUF conversion bar (tqdm, not the hub's)
    quiet_third_party_warnings(verbose)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if "transformers" in sys.modules:                             # imported already: tell it directly
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()


THIRD_PARTY = r"(transformers|peft|torch|accelerate|huggingface_hub|safetensors|tokenizers|gguf)(\.|$)"
"""Modules whose deprecation warnings are not the user's business (they are about code memlaw calls)."""


def quiet_third_party_warnings(verbose: bool = False) -> None:
    """Keep other libraries' deprecation warnings (transformers' `is_gradient_checkpointing`
    FutureWarning, say) out of normal output; with -v they are logged as warnings instead."""
    if verbose:
        logging.captureWarnings(True)
        return
    for category in (FutureWarning, DeprecationWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=THIRD_PARTY)


def run(fn):
    """Call `fn`; a MemlawError becomes one line on stderr and exit code 2, Ctrl-C one line and 130.

    Nothing is half-written either way: adapter directories and files are written atomically.
    Other exceptions are bugs and keep their traceback.
    """
    try:
        return fn()
    except MemlawError as e:
        typer.echo(f"memlaw: error: {one_line(str(e))}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("memlaw: interrupted", err=True)
        raise typer.Exit(130) from None


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def one_line(message: str) -> str:
    """`message` on one line: line breaks become spaces, other control characters (a file name's
    terminal escapes, say) are shown escaped."""
    text = " ".join(part.strip() for part in message.splitlines() if part.strip())
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)



__all__ = ["app", "out", "err", "setup_logging", "run", "one_line", "nullcontext"]
