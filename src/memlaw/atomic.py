"""Atomic writes: a reader sees the previous complete file or directory, or the new one, never a torn one.

A directory is built in a temp directory beside its target, named `.{name}.{pid}.{random}.tmp`, and
put in place by one rename. If the target exists the two are swapped in one atomic
`renameat2(RENAME_EXCHANGE)` (Linux), so the target is never missing, not even for an instant;
where the kernel or file system cannot swap, the old directory is moved aside first
(`.{name}.{pid}.{random}.old/{name}`) and the target is missing for the time of two renames.

A process killed at any moment (kill -9, power loss after the fsyncs) leaves at most such temp
directories beside the target. `is_temp_dir` recognises them, so they are never read as the real
thing, and the next `atomic_dir` for the same target deletes those whose writer is dead.

`check_output_file` refuses a target that a rename must not replace (a directory, a link, a device).
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from memlaw.errors import OutputError

_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.(tmp|old)$")  # mkdtemp's 8 random characters
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2
_renameat2 = None  # resolved on first use; False where the C library has none


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


__all__ = ["check_output_file", "atomic_write_bytes", "atomic_write_text", "atomic_dir", "exchange", "is_temp_dir",
           "remove_stale_temps"]
