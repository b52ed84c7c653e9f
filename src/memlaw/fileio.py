"""Files in and out: bounded reads of input files, and atomic writes.

Reads (`open_input`, `bounded_lines`, `load_yaml`): only regular files (a device such as /dev/zero,
a FIFO or a directory is refused before anything is read), at most a stated number of bytes, lines
of at most a stated length; YAML with the safe loader only, no duplicate keys, and bounded nesting
and alias expansion. Every refusal is one `{path}:{line}: {cause}` error of the caller's class.

Values written: `json_ready` makes one strict JSON (NaN and infinity as null), `csv_cell` a CSV cell
that no spreadsheet runs as a formula.

Atomic writes: a reader sees the previous complete file or directory, or the new one, never a torn one.

A directory is built in a temp directory beside its target, named `.{name}.{pid}.{random}.tmp`, and
put in place by one rename. If the target exists the two are swapped in one atomic
`renameat2(RENAME_EXCHANGE)` (Linux), so the target is never missing, not even for an instant;
where the kernel or file system cannot swap, the old directory is moved aside first
(`.{name}.{pid}.{random}.old/{name}`) and the target is missing for the time of two renames.

A process killed at any moment (kill -9, power loss after the fsyncs) leaves at most such temp
directories beside the target. `is_temp_dir` recognises them, so they are never read as the real
thing, and the next `atomic_dir` for the same target deletes those whose writer is dead.
"""

from __future__ import annotations

import csv
import ctypes
import errno
import io
import math
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from memlaw.errors import ConfigError, OutputError
from memlaw.validation import shown

MAX_YAML_BYTES = 1 << 20      # a sweep grid is a few hundred bytes
MAX_YAML_DEPTH = 32           # nesting levels of a YAML document
MAX_YAML_NODES = 100_000      # nodes of a YAML document once its aliases are expanded

_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.(tmp|old)$")  # mkdtemp's 8 random characters
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2
_renameat2 = None  # resolved on first use; False where the C library has none


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


# --- writing ---------------------------------------------------------------------------------

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


def check_output_file(path: str | os.PathLike) -> Path:
    """Check that a file may be written at `path` by renaming a new one over it.

    A rename replaces whatever name it lands on, so `path` must be absent or a regular file: a
    directory, a symbolic link (the link, not its target, would be swapped) or a device, FIFO or
    socket is refused.

    Raises:
        OutputError: naming `path` and what is there.
    """
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    except OSError as e:
        raise OutputError(f"{path}: cannot be written ({e.strerror or type(e).__name__})") from None
    if not stat.S_ISREG(st.st_mode):
        what = ("a symbolic link" if stat.S_ISLNK(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode)
                else "a device, FIFO or socket")
        raise OutputError(f"{path}: is {what}, which memlaw does not replace; give the path of a new or "
                          f"regular file")
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temp file in the same directory, fsync, then rename.

    Raises:
        OutputError: `path` is there and is not a regular file (`check_output_file`).
    """
    path = check_output_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temp directory beside `path`; on success it replaces `path` atomically.

    Files written into the temp directory are fsynced before it is renamed, and the parent after,
    so a crash at any moment leaves the previous complete `path` (or none, if there was none) or
    the new one, plus perhaps a stray temp directory (see the module doc).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _fsync_tree(tmp)
        if os.path.lexists(path) and exchange(tmp, path):
            shutil.rmtree(tmp, ignore_errors=True)   # after the swap `tmp` holds the previous directory
        elif os.path.lexists(path):
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)        # `path` is missing until the next rename
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def exchange(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2); False where that is not supported."""
    global _renameat2
    if _renameat2 is None:
        fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None) if sys.platform == "linux" else None
        if fn is not None:
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
        _renameat2 = fn or False
    if not _renameat2:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False                                  # this file system cannot swap: fall back
    raise OSError(code, os.strerror(code), os.fspath(b))


def is_temp_dir(path: str | os.PathLike) -> bool:
    """True for a directory `atomic_dir` works in (or the previous directory moved aside inside one)."""
    path = Path(path).absolute()
    return any(_TEMP_NAME.match(p.name) for p in (path, path.parent))


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete the temp directories of `path` whose writing process is gone (killed mid-write).

    Only names `atomic_dir` makes for this target and whose pid no longer runs on this machine;
    a live writer's temp directory is left alone. Returns what was removed.
    """
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)\.[a-z0-9_]{{8}}\.(tmp|old)$")
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if m and entry.is_dir(follow_symlinks=False) and not _alive(int(m.group(1))):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:        # EPERM: it runs, as another user
        return True
    return True


def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    for d in [*(p for p in root.rglob("*") if p.is_dir()), root]:
        _fsync_dir(d)


def _fsync_dir(d: Path) -> None:
    """fsync a directory so that renames and new entries in it survive a power loss (POSIX only)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass               # some file systems refuse fsync on directories; the rename is still atomic
    finally:
        os.close(fd)
