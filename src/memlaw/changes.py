"""Change sets of a living memory (DESIGN §7b): records to add or change, keys to delete. Tokenizer-free.

A change set is checked against the memory's current records before anything is trained or written:

- a change is a record: a key the memory does not hold is added, a key it holds takes the new value;
- a delete names a key: `--delete KEY` on the command line, or a file of keys (`--delete-file`): JSON
  Lines of `{"key": ...}` objects (a `.jsonl` or `.json` suffix; records' `{"key", "value"}` lines are
  accepted too, the value ignored), otherwise plain text with one key per line, kept verbatim but for
  the line ending (blank lines skipped).

Refused, each with one `RecordError` naming the file:line (or `--delete`) and the cause: a delete of a
key the memory does not hold, a change to a key's current value, a key both changed and deleted, a
malformed file, an update that changes nothing, and one that would delete every record. Values may be
secrets: no message names one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from memlaw.errors import RecordError
from memlaw.records import Record, _decoded_lines, _json_object, shorten

JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")


@dataclass(frozen=True, slots=True)
class Delete:
    key: str
    where: str = ""          # "path:line" or "--delete", for messages


@dataclass
class Diff:
    """What an update does to a memory, in record terms (values inside: never print one)."""

    added: list[Record]
    changed: list[tuple[Record, Record]]     # (old, new)
    deleted: list[Record]                    # the records removed, old values included
    final: list[Record]                      # the memory after the update: current order, additions last
    before: int = field(default=0)           # records before the update

    @property
    def gone(self) -> list[Record]:
        """The (key, old value) pairs that must no longer come back: changed keys' old values and deleted records."""
        return [old for old, _ in self.changed] + self.deleted

    def counts(self) -> dict[str, int]:
        return {"added": len(self.added), "changed": len(self.changed), "deleted": len(self.deleted),
                "n_records_before": self.before, "n_records": len(self.final)}


def load_deletes(path: str | os.PathLike) -> list[Delete]:
    """The keys of a delete file (see the module doc), in file order.

    Raises:
        RecordError: `{path}:{line}: {cause}` for a missing or unreadable file, bad JSON, a line without
            a string `key`, an empty key, or a file with no keys.
    """
    source = os.fspath(path)
    if os.path.isdir(source):
        raise RecordError(f"{source}:1: is a directory; give a file of keys to delete")
    as_json = Path(source).suffix.lower() in JSON_SUFFIXES
    try:
        with open(source, "rb") as f:
            deletes = list(_parse(_decoded_lines(f, source), source, as_json))
    except FileNotFoundError:
        raise RecordError(f"{source}:1: no such file; check the path") from None
    except OSError as e:
        raise RecordError(f"{source}:1: cannot read the file ({e.strerror or type(e).__name__})") from None
    if not deletes:
        raise RecordError(f"{source}:1: no keys to delete; write one key per line (or JSON Lines of "
                          f'{{"key": "..."}})')
    return deletes


def _parse(lines: Iterable[str], source: str, as_json: bool) -> Iterable[Delete]:
    for n, line in enumerate(lines, 1):
        where = f"{source}:{n}"
        if as_json:
            if not line.strip(" \t\r\n"):
                continue
            obj = _json_object(line, where)
            key = obj.get("key")
            unknown = [k for k in obj if k not in ("key", "value")]
            if not isinstance(key, str) or unknown:
                raise RecordError(f'{where}: expected {{"key": "..."}} (a string key and nothing else but a value)')
        else:
            key = line.removesuffix("\n").removesuffix("\r")
            if not key.strip():
                continue
        if not key.strip():
            raise RecordError(f"{where}: empty key; a key to delete is non-empty text")
        yield Delete(key, where)


def deletes_of(keys: Sequence[str], where: str = "--delete") -> list[Delete]:
    """Keys given on the command line (or in code) as deletes."""
    return [Delete(k, where) for k in keys]


def diff(current: Sequence[Record], changes: Sequence[Record] = (), deletes: Sequence[Delete] = ()) -> Diff:
    """Check a change set against the memory's `current` records and say what it does. Pure.

    Args:
        current: the memory's records (checked already: unique keys).
        changes: records to add or change (checked already, e.g. by `load_records`).
        deletes: keys to delete; a key repeated is deleted once.

    Raises:
        RecordError: see the module doc; the message names where the offending change was given.
    """
    held = {r.key: r for r in current}
    changing = {r.key: r for r in changes}
    gone: dict[str, Delete] = {}
    for d in deletes:
        if d.key not in held:
            raise RecordError(f"{d.where or '--delete'}: key {shorten(d.key)} is not in the memory, so it cannot be "
                              f"deleted (keys are matched exactly)")
        if d.key in changing:
            c = changing[d.key]
            raise RecordError(f"{c.where or '<changes>'}: key {shorten(d.key)} is both changed here and deleted "
                              f"({d.where}); change it or delete it, not both")
        gone.setdefault(d.key, d)
    for c in changes:
        if c.key in held and held[c.key].value == c.value:
            raise RecordError(f"{c.where or '<changes>'}: key {shorten(c.key)} already has this value, so there "
                              f"is nothing to change; drop the line")
    if not changes and not gone:
        raise RecordError("<changes>:1: nothing to update; give records to add or change, --delete KEY or "
                          "--delete-file FILE")
    final = [changing.get(r.key, r) for r in current if r.key not in gone]
    added = [c for c in changes if c.key not in held]
    final += added
    if not final:
        raise RecordError(f"{next(iter(gone.values())).where}: the update would delete every record; a memory "
                          f"needs at least one (write a new one instead)")
    changed = [(held[c.key], c) for c in changes if c.key in held]
    deleted = [held[k] for k in held if k in gone]
    return Diff(added, changed, deleted, final, before=len(current))


__all__ = ["Delete", "Diff", "load_deletes", "deletes_of", "diff"]
