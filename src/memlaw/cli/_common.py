"""What every CLI command shares: the Typer app, the consoles, logging set-up, the error boundary.

Text that comes from data (keys, values, file and model names, sweep names, store rows, messages
that quote them) reaches the terminal only through `visible`: shown literally, never as rich
markup, with every non-printable character (ESC and other controls, bidi overrides, zero-width
characters, lone surrogates) written as an escape, and bounded in length. The two consoles
apply it to every string they render, table cells and titles included; log lines and error lines
go through it too.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from contextlib import nullcontext
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from memlaw import __version__
from memlaw.errors import MemlawError, NotCertifiedError

EXIT_CODES = ("Exit codes: 0 every record certified and recalled exactly by greedy decoding (write, update, demo), "
              "recalled exactly (verify), in memory and certified (recall), or the command succeeded; 1 it ran, but "
              "not every record certified or was recalled exactly (a certified record greedy decoding gets wrong "
              "is a certificate not confirmed), or a recalled key is not in the memory; 2 bad input (one line on stderr "
              "names the file:line or option and the cause; nothing is written); 130 interrupted. Network: "
              "none unless asked; embedded models, local directories and the Hugging Face cache work offline, "
              "and --online (or MEMLAW_ONLINE=1) lets write, demo, plan and sweep download a hub id.")

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Write records into a frozen LLM's adapter, certify them, recall them exactly.",
                  epilog=EXIT_CODES)

SHOWN_LIMIT = 2000  # characters of one string shown in a table cell, line or message


def visible(text: object, limit: int | None = SHOWN_LIMIT) -> str:
    """`text` as it may be shown in a terminal: literally, every non-printable character escaped.

    Characters that `str.isprintable` refuses (C0/C1 controls such as ESC, bidi overrides,
    zero-width and other format characters, line and paragraph separators, non-breaking and other
    odd spaces, lone surrogates, unassigned code points) become `\\n`, `\\x1b`, `\\u202e`, ...;
    the plain space stays. Past `limit` characters the rest is cut and counted (None: no limit).
    """
    text = str(text)
    cut = limit is not None and len(text) > limit
    shown = text[:limit] if cut else text
    if not shown.isprintable():
        shown = "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in shown)
    return shown + (f"... ({len(text) - limit} more characters)" if cut else "")


class LiteralConsole(Console):
    """A rich Console that renders every string literally through `visible`: no markup, no emoji codes.

    rich turns `[link=...]`, `[/]` and `:smile:` in a string into markup; here a key such as
    `user[admin]` prints as itself. Styled output is built from `Text` objects, which pass as they are.
    """

    def render_str(self, text: str, *, style="", justify=None, overflow=None, **_ignored) -> Text:
        return Text(visible(text), style=style, justify=justify, overflow=overflow)

    def print_json(self, json: str | None = None, **kwargs) -> None:
        """Pretty JSON with every non-ASCII character escaped, so no control character reaches the terminal."""
        super().print_json(json, **{**kwargs, "ensure_ascii": True})


out = LiteralConsole(highlight=False)
err = LiteralConsole(stderr=True, highlight=False)


def argv_problem(args: list[str]) -> str | None:
    """Why the command line cannot be used, or None: an argument that is not valid UTF-8.

    Python hands such bytes over as lone surrogates (`\\udcff`); a key, path or filter holding one
    could not be tokenized, stored or matched, so it is refused up front with its position.
    """
    for i, arg in enumerate(args, 1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError as e:
            return (f"argument {i} ({visible(arg, limit=60)}) is not valid UTF-8 (at character {e.start + 1}); "
                    f"give keys, paths and options as UTF-8 text")
    return None


def print_table(table) -> None:
    """On a terminal at its width; piped, wide enough that no column is cut (keys stay copyable)."""
    (out if out.is_terminal else LiteralConsole(width=200, highlight=False)).print(table)


class _VisibleFormatter(logging.Formatter):
    """Log lines on one line, shown through `visible` (a logged key or path cannot drive the terminal)."""

    def format(self, record: logging.LogRecord) -> str:
        return one_line(super().format(record))


def flag(*names: str, help: str):
    """A boolean option that is off unless given, shown as such in --help."""
    return typer.Option(*names, help=help, show_default="off")


JsonOpt = Annotated[bool, flag("--json", help="Print the result as JSON on stdout (strict: no NaN or Infinity).")]
VerboseOpt = Annotated[bool, flag("--verbose", "-v", help="Log what memlaw does (INFO lines on stderr).")]
OnlineOpt = Annotated[bool, flag("--online", help=(
    "Allow downloading a hub id's model. Without it memlaw uses no network: embedded models, local "
    "directories and hub ids already in the Hugging Face cache load; an unknown name fails at once with "
    "the nearest names. MEMLAW_ONLINE=1 does the same."))]
DEVICE_HELP = "auto (cuda where torch sees a GPU, else cpu), cpu, cuda or cuda:N."
DeviceOpt = Annotated[str, typer.Option(help=DEVICE_HELP)]


def go_online(online: bool) -> None:
    """--online: allow hub downloads in this process and the ones it starts."""
    if online:
        from memlaw.model_names import allow_network

        allow_network()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"memlaw {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                       help="Print memlaw's version and exit.")) -> None:
    """Write records into a frozen LLM's adapter, certify them, recall them exactly."""


def setup_logging(verbose: bool = False) -> None:
    """Log memlaw's INFO lines with -v; quiet transformers and its progress bars.

    transformers reads the two variables when it is imported; it is not imported here, so that a
    command refusing bad input does so before the seconds that importing torch takes.
    """
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")   # what disable_progress_bar() sets
    os.environ.setdefault("TQDM_DISABLE", "1")        # transformers' GGUF conversion bar (tqdm, not the hub's)
    quiet_third_party_warnings(verbose)
    handler = logging.StreamHandler()
    handler.setFormatter(_VisibleFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
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

    A `NotCertifiedError` (the memory was written but does not hold) is one line and exit code 1.

    Nothing is half-written either way: adapter directories and files are written atomically.
    Other exceptions are bugs and keep their traceback.
    """
    try:
        return fn()
    except NotCertifiedError as e:
        typer.echo(f"memlaw: {one_line(str(e))}", err=True)
        raise typer.Exit(1) from None
    except MemlawError as e:
        typer.echo(f"memlaw: error: {one_line(str(e))}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("memlaw: interrupted", err=True)
        raise typer.Exit(130) from None


def one_line(message: str) -> str:
    """`message` on one line: line breaks become spaces, the rest shown through `visible`."""
    return visible(" ".join(part.strip() for part in message.splitlines() if part.strip()))


__all__ = ["app", "out", "err", "setup_logging", "run", "one_line", "visible", "LiteralConsole", "print_table",
           "argv_problem", "nullcontext", "EXIT_CODES", "flag", "JsonOpt", "VerboseOpt", "OnlineOpt", "DeviceOpt",
           "DEVICE_HELP", "go_online"]
