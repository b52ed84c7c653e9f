"""Files in: bounded reads of input files; values out: strict JSON and safe CSV cells.

Reads (`open_input`, `bounded_lines`, `load_yaml`): only regular files (a device such as /dev/zero,
a FIFO or a directory is refused before anything is read), at most a stated number of bytes, lines
of at most a stated length; YAML with the safe loader only, no duplicate keys, and bounded nesting
and alias expansion. Every refusal is one `{path}:{line}: {cause}` error of the caller's class.

Values written: `json_ready` makes one strict JSON (NaN and infinity as null), `csv_cell` a CSV cell
that no spreadsheet runs as a formula. Writing files, atomically, is `memlaw.atomic`'s.
"""

from __future__ import annotations

import csv
import io
import math
import os
import stat
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, BinaryIO

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from memlaw.errors import ConfigError
from memlaw.validation import shown

MAX_YAML_BYTES = 1 << 20      # a sweep grid is a few hundred bytes
MAX_YAML_DEPTH = 32           # nesting levels of a YAML document
MAX_YAML_NODES = 100_000      # nodes of a YAML document once its aliases are expanded



# --- reading ---------------------------------------------------------------------------------


def open_input(path: str | os.PathLike, *, limit: int, error: type[Exception], what: str) -> BinaryIO:
    """Open a regular file of at most `limit` bytes for reading (binary).

    The file is opened without blocking (a FIFO cannot hang the open) and checked on the open
    descriptor, so what is read is what was checked.

    Raises:
        error: `{path}:1: {cause}`: missing, a directory, not a regular file (a device, FIFO or
            socket), unreadable, or larger than `limit`; `what` names what was expected.
    """
    source = os.fspath(path)
    try:
        fd = os.open(source, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise error(f"{source}:1: no such file; check the path") from None
    except IsADirectoryError:
        raise error(f"{source}:1: is a directory; give {what}") from None
    except OSError as e:
        raise error(f"{source}:1: cannot read the file ({e.strerror or type(e).__name__})") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise error(f"{source}:1: is a directory; give {what}")
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{source}:1: is not a regular file (a device, FIFO or socket); give {what}")
        if st.st_size > limit:
            raise error(f"{source}:1: is {st.st_size:,} bytes, more than the {limit:,} memlaw reads as {what}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def bounded_lines(f: BinaryIO, source: str, *, max_line: int, limit: int,
                  error: type[Exception]) -> Iterator[bytes]:
    """The lines of `f` (split on b"\\n", kept), refusing a line longer than `max_line` bytes or
    more than `limit` bytes in all (a file that grows while it is read)."""
    total = 0
    for n in range(1, sys.maxsize):
        raw = f.readline(max_line + 1)
        if not raw:
            return
        total += len(raw)
        if len(raw) > max_line and not raw.endswith(b"\n"):
            raise error(f"{source}:{n}: line is longer than {max_line:,} bytes, the most memlaw reads as one record")
        if total > limit:
            raise error(f"{source}:{n}: the file is longer than the {limit:,} bytes memlaw reads")
        yield raw


def read_csv(path: str | os.PathLike, *, kind: str, required: Sequence[str], error: type[Exception],
             limit: int = 1 << 30) -> csv.DictReader:
    """A CSV file of `kind` (e.g. "`memlaw runs export`") as a DictReader over its checked UTF-8 text, header
    names stripped; `reader.line_num` gives each row's line for errors.

    Raises:
        error: `{path}:{line}: {cause}`: what `open_input` refuses, text that is not UTF-8, or a column of
            `required` missing from the header.
    """
    with open_input(path, limit=limit, error=error, what=f"a {kind} CSV") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise error(f"{path}:{line}: not UTF-8 text") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    reader.fieldnames = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in required if c not in reader.fieldnames]
    if missing:
        raise error(f"{path}:1: not a {kind} file: no column {', '.join(missing)}")
    return reader


def load_yaml(path: str | os.PathLike) -> Any:
    """Read one YAML document with the safe loader (no code runs), bounded and strict.

    Refused, each as `ConfigError("{path}:{line}: ...")`: a file that is missing, not regular, not
    UTF-8 or larger than `MAX_YAML_BYTES`; invalid YAML; a key repeated in one mapping (YAML would
    keep the last silently); nesting deeper than `MAX_YAML_DEPTH`; more than `MAX_YAML_NODES` nodes
    once aliases are expanded (an "alias bomb" of a few hundred bytes expands to billions).
    """
    source = os.fspath(path)
    with open_input(source, limit=MAX_YAML_BYTES, error=ConfigError, what="a YAML file") as f:
        data = f.read(MAX_YAML_BYTES + 1)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{source}:1: not valid UTF-8 (at byte {e.start + 1}); save the file as UTF-8") from None
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _count_nodes(node, {})
        return loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise ConfigError(f"{source}:{line}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    except RecursionError:
        raise ConfigError(f"{source}:1: not valid YAML (nested too deeply)") from None
    finally:
        loader.dispose()


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses deep nesting while composing and repeated keys while constructing."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent, index):
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_YAML_DEPTH} levels deep",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, MappingNode):
            seen = set()
            for key_node, _ in node.value:            # the mapping's own keys (merged `<<` keys may be overridden)
                if isinstance(key_node, ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    key = self.construct_object(key_node)
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"key {shown(key)} appears more than once in one mapping; keep one",
                            key_node.start_mark)
                    seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _count_nodes(node, memo: dict[int, int]) -> int:
    """Nodes of the document with every alias expanded (memoised, so linear in the composed graph)."""
    key = id(node)
    if key in memo:
        if memo[key] < 0:
            raise yaml.composer.ComposerError(None, None, "an alias refers to a node that contains it",
                                              node.start_mark)
        return memo[key]
    memo[key] = -1
    if isinstance(node, SequenceNode):
        n = 1 + sum(_count_nodes(child, memo) for child in node.value)
    elif isinstance(node, MappingNode):
        n = 1 + sum(_count_nodes(k, memo) + _count_nodes(v, memo) for k, v in node.value)
    else:
        n = 1
    if n > MAX_YAML_NODES:
        raise yaml.composer.ComposerError(None, None, f"more than {MAX_YAML_NODES:,} values once its aliases are "
                                          f"expanded; write the settings out", node.start_mark)
    memo[key] = n
    return n


# --- values written ---------------------------------------------------------------------------------

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""Characters that make a spreadsheet read a CSV text cell as a formula (OWASP, "CSV injection")."""


def csv_cell(value: Any) -> Any:
    """A value as a CSV cell that a spreadsheet shows and never runs: text starting with one of
    `FORMULA_START` gets a leading apostrophe (`=1+1` is written `'=1+1`); other values pass as they are
    (numbers stay numbers: -0.5 is a number, not a formula). docs/store.md states the convention."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_START) else value


def csv_text(cell: str) -> str:
    """A text cell as `csv_cell` wrote it, read back: the apostrophe before a would-be formula removed."""
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(FORMULA_START) else cell


def json_ready(x: Any) -> Any:
    """Strict-JSON-ready: mappings with str keys, tuples as lists, numpy scalars as Python numbers,
    NaN and infinity as None (JSON has no place for them; `json.dumps(allow_nan=False)` then holds)."""
    if isinstance(x, Mapping):
        return {str(k): json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    if hasattr(x, "item") and hasattr(x, "dtype") and getattr(x, "ndim", None) == 0:   # a numpy/torch scalar
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
