"""CLI command `recall`: the values greedy decoding gives for keys, one line each, or JSON with whether
each key is in the memory and whether its recall is certified."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from memlaw.cli._common import DeviceOpt, app, err, flag, out, run, setup_logging


def show_value(value: str) -> str:
    """A recalled value on one line, shown literally: as is when every character is printable, else (or
    when it begins with a double quote) as a JSON string whose non-printable characters are escaped, so
    a line that begins with " is always JSON and `json.loads` gives the value back."""
    if value.isprintable() and not value.startswith('"'):
        return value
    text = json.dumps(value, ensure_ascii=False)       # escapes ", \ and the C0 controls
    return "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in text)


def read_keys(path: Path) -> list[str]:
    """Keys from a file or stdin ('-'), one a line, written as `show_value` writes values (a line that
    begins with " is a JSON string, so keys with line breaks fit); blank lines are skipped.

    Raises:
        RecordError: the file cannot be read, a JSON line is not a string, or there are no keys.
    """
    from memlaw.records import RecordError

    name = "<stdin>" if str(path) == "-" else str(path)
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RecordError(f"{name}:1: cannot read keys ({getattr(e, 'strerror', None) or type(e).__name__})") from None
    keys = []
    for n, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        if line.startswith('"'):
            try:
                line = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"{name}:{n}: a line that begins with \" must be one JSON string ({e.msg})") from None
            if not isinstance(line, str):
                raise RecordError(f"{name}:{n}: expected a JSON string")
        keys.append(line)
    if not keys:
        raise RecordError(f"{name}:1: no keys; write one key a line")
    return keys


@app.command()
def recall(
    directory: Annotated[Path, typer.Argument(help="Adapter directory.")],
    keys: Annotated[Optional[list[str]], typer.Argument(help="Keys to recall (or --keys-file).", show_default=False)] = None,
    keys_file: Annotated[Optional[Path], typer.Option(
        "--keys-file", help="Also recall the keys of this file, one a line ('-': stdin; a line that begins "
                            "with \" is a JSON string).", show_default="none")] = None,
    allow_unknown: Annotated[bool, flag("--allow-unknown", help=(
        "Do not warn or exit 1 for keys the adapter was not written with (their recall is a guess)."))] = False,
    max_new_tokens: Annotated[Optional[int], typer.Option(
        help="Decode at most this many tokens.", show_default="the longest stored answer, else 64")] = None,
    device: DeviceOpt = "auto",
    as_json: Annotated[bool, flag("--json", help=(
        "Print a JSON list, one object per key: key, value, in_memory, certified, min_p (lowest p_t of the "
        "recalled answer tokens, terminator included)."))] = False,
) -> None:
    """Print the value greedy decoding recalls for each KEY, one line per key, in order.

    Values are shown literally (mind where stdout goes): as they are when every character is
    printable, else (or when a value begins with ") as a JSON string with the rest escaped. Exit
    code 0 when every key is in the memory and its recall is certified; 1 when a key is not in the
    memory (warned on stderr; --allow-unknown accepts them) or a recall is not certified; 2 for bad
    input. All keys are recalled in one model load.
    """
    setup_logging()

    def go():
        from memlaw.adapters import read_meta
        from memlaw.records import RecordError, shorten

        wanted = list(keys or []) + (read_keys(keys_file) if keys_file is not None else [])
        if not wanted:
            raise RecordError("give keys to recall: KEY... or --keys-file FILE ('-': stdin)")
        read_meta(directory)  # a missing or damaged adapter is refused before torch loads
        from memlaw.memory import Memory

        with Memory.open(directory, device=device) as mem:
            got = mem.recall_checked(wanted, max_new_tokens=max_new_tokens)
        if as_json:
            out.print_json(json.dumps([{"key": r.key, "value": r.value, "in_memory": r.in_memory,
                                        "certified": r.certified, "min_p": r.min_p} for r in got]))
        else:
            for r in got:
                typer.echo(show_value(r.value))
        failed = False
        for r in got:
            if r.in_memory is False:
                if not allow_unknown:
                    failed = True
                    err.print(f"memlaw: warning: key {shorten(r.key)} is not in this memory (the adapter was not "
                              "written with it): its recall is a guess", markup=False, highlight=False, soft_wrap=True)
            elif not r.certified:
                failed = True
                why = "decoding hit its limit" if r.min_p is None else f"min p_t {r.min_p:.3f}"
                err.print(f"memlaw: warning: the recall of key {shorten(r.key)} is not certified ({why})",
                          markup=False, highlight=False, soft_wrap=True)
        if any(r.in_memory is None for r in got):
            err.print("memlaw: note: this adapter keeps neither its records nor its keys' sha256 (an older memlaw "
                      "wrote it): which keys it holds is unknown", markup=False, highlight=False, soft_wrap=True)
        if failed:
            raise typer.Exit(1)

    run(go)


__all__ = ["recall", "show_value", "read_keys"]
