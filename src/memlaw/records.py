"""The records of a memory (key -> value): load, check, write and hash them. Tokenizer-free.

Formats `load_records` reads (the path's suffix decides; anything but `.csv` is JSON Lines):

- JSON Lines: each non-blank line is one JSON object in one of three forms, tried in this order:
  `{"key", "value"}` (ours: no other field is allowed, so a typo such as `vaule` cannot pass
  silently); `{"query", "target"}` (the paper's PhoneBook form; extra fields such as `id` and
  `target_len` are ignored); `{"question", "matching"}` (the paper's long-context form;
  `not_matching` and the noise statistics are ignored). Lines are split on "\\n" only, so a raw
  U+2028 or U+0085 inside a JSON string stays inside its value.
- CSV (RFC 4180, the `csv` module's excel dialect): a header row naming `key` and `value` (no other
  column allowed) or `query` and `target` (other columns ignored); header names are matched after
  strip() and lower(). Each later row is one record; blank rows are skipped.

Files are read as bytes, line by line, and decoded as strict UTF-8 (a leading BOM is dropped).
Only regular files are read (a device such as /dev/zero, a FIFO or a directory is refused), of at
most `MAX_RECORDS_BYTES`, with lines (CSV cells) of at most `MAX_RECORD_BYTES`.
Keys and values are kept verbatim: nothing is stripped, because exact recall means exact. Both must
be strings (a phone number given as a JSON number would lose its leading zeros), non-empty, not
only whitespace, free of NUL and of lone surrogates. Keys are unique: a key repeated with the same
value is kept once (with a warning), with another value it is an error.

Every error is a `RecordError` with one line, `{path}:{line}: {cause and fix}`; problems with the
whole file (missing, a directory, no records) point at line 1, and records built in code are
`<records>:{index}` (1-based). Values may be secrets: no message or log line here contains one
(keys may appear). `redact` is how callers show a value.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from memlaw.atomic import atomic_write_text
from memlaw.errors import RecordError
from memlaw.fileio import bounded_lines, open_input

logger = logging.getLogger(__name__)

FORMS: tuple[tuple[str, str], ...] = (("key", "value"), ("query", "target"), ("question", "matching"))
"""Accepted (key field, value field) pairs, in order of precedence."""
STRICT_FORM = FORMS[0]  # the only form whose unknown fields are rejected
CSV_FORMS = FORMS[:2]
_JSON_SPACE = " \t\r\n"
MAX_RECORDS_BYTES = 256 << 20   # a records file; 200k PhoneBook records take about 16 MB
MAX_RECORD_BYTES = 4 << 20      # one line or CSV cell; the paper's longest long-context line is 0.33 MB


@dataclass(frozen=True, slots=True)
class Record:
    key: str
    value: str
    where: str = field(default="", compare=False, repr=False)
    """Where the record was read, as "path:line", for error messages ("" when built in code)."""

    def __repr__(self) -> str:  # the value may be a secret: a stray print or log shows its size only
        return f"Record(key={self.key!r}, value={redact(self.value)})"


def redact(value: str) -> str:
    """What to show instead of a value: its size only, e.g. '<10 chars>'."""
    return f"<{len(value)} char{'' if len(value) == 1 else 's'}>"


def load_records(path: str | os.PathLike) -> list[Record]:
    """Read, check and de-duplicate the records of a JSON Lines or CSV file (see the module doc).

    Returns:
        The records in file order; a repeated (key, value) pair is kept once, at its first line.

    Raises:
        RecordError: the file is missing, unreadable, malformed, holds no records, or breaks a rule
            of `check_records`; the message is `{path}:{line}: {cause}`.
    """
    source = os.fspath(path)
    parse = _parse_csv if Path(source).suffix.lower() == ".csv" else parse_records
    try:
        with open_input(source, limit=MAX_RECORDS_BYTES, error=RecordError, what="a .jsonl or .csv file of records") as f:
            records = parse(_decoded_lines(f, source), source)
    except OSError as e:
        raise RecordError(f"{source}:1: cannot read the file ({e.strerror or type(e).__name__})") from None
    if not records:
        raise RecordError(f"{source}:1: no records; expected one JSON object per line, "
                          f'e.g. {{"key": "...", "value": "..."}} (or a CSV with a key,value header)')
    check_records(records)
    records = _drop_repeats(records, source)
    logger.debug("%s: %d records", source, len(records))
    return records


def parse_records(lines: Iterable[str], source: str) -> list[Record]:
    """Turn JSON Lines text into records, checking each line's shape (not the rules across records).

    Args:
        lines: the file's lines, split on "\\n" only (as iterating a file does; `str.splitlines`
            would also split at U+2028 inside a JSON string).
        source: the path to name in `Record.where` and in errors.

    Raises:
        RecordError: a line is not a JSON object in one of the accepted forms, or a key or value
            is not a JSON string.
    """
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip(_JSON_SPACE):
            continue
        where = f"{source}:{n}"
        key, value = _fields(_json_object(line, where), where)
        records.append(Record(key, value, where))
    return records


def check_records(records: Sequence[Record]) -> None:
    """Check the rules of a memory: keys and values are non-empty text, and each key has one value.

    A key repeated with the same value passes (`load_records` keeps one copy).

    Raises:
        RecordError: at the first offending record, `{where}: {cause}`; for a repeated key with
            two values it names both places and neither value.
    """
    first: dict[str, Record] = {}
    for i, record in enumerate(records, 1):
        where = record.where or f"<records>:{i}"
        for name in ("key", "value"):
            problem = _text_problem(getattr(record, name))
            if problem:
                raise RecordError(f"{where}: {name} {problem}")
        seen = first.setdefault(record.key, record)
        if seen is not record and seen.value != record.value:
            seen_where = seen.where or f"<records>:{records.index(seen) + 1}"
            raise RecordError(f"{where}: key {shorten(record.key)} already has a different value at "
                              f"{seen_where}; a key maps to one value: remove or rename one of them")


def write_records(path: str | os.PathLike, records: Sequence[Record]) -> None:
    """Write records as JSON Lines `{"key", "value"}`, atomically, after `check_records`.

    The file's bytes are exactly the canonical JSONL that `records_sha256` hashes, so
    `sha256(file) == records_sha256(records)` and `load_records` gives the records back.

    Raises:
        RecordError: the records break a rule of `check_records`, there are none, or `path` ends
            in .csv (this writes JSON Lines only). Nothing is written then.
    """
    target = os.fspath(path)
    if Path(target).suffix.lower() == ".csv":
        raise RecordError(f"{target}:1: write_records writes JSON Lines; use a .jsonl path")
    if not records:
        raise RecordError(f"{target}:1: no records to write; a memory needs at least one record")
    check_records(records)
    atomic_write_text(target, "".join(_canonical_line(r) for r in records))


def records_sha256(records: Sequence[Record]) -> str:
    """Hex sha256 of the canonical JSONL of `records`, in order (it changes with the order).

    One line per record: `json.dumps({"key", "value"}, ensure_ascii=False, sort_keys=True) + "\\n"`,
    UTF-8. `where` is not part of it.
    """
    h = hashlib.sha256()
    for r in records:
        h.update(_canonical_line(r).encode("utf-8"))
    return h.hexdigest()


def keys_sha256(records: Sequence[Record]) -> list[str]:
    """Sorted hex sha256 of each key (UTF-8): which keys a memory holds, without the keys or values."""
    return sorted(hashlib.sha256(r.key.encode("utf-8")).hexdigest() for r in records)


def as_records(items: Iterable[Record | Mapping[str, Any]]) -> list[Record]:
    """Records built in code: `Record`s or mappings in one of the JSON Lines forms, checked and de-duplicated
    as `load_records` does with a file.

    Raises:
        RecordError: an item is neither, a mapping breaks its form (`<records>:{index}: ...`), or
            the records break a rule of `check_records`.
    """
    records = []
    for i, item in enumerate(items, 1):
        if isinstance(item, Record):
            records.append(item)
        elif isinstance(item, Mapping):
            records.append(Record(*_fields(dict(item), f"<records>:{i}")))
        else:
            raise RecordError(f"<records>:{i}: expected a Record or a mapping such as "
                              f'{{"key": "...", "value": "..."}}, got {type(item).__name__}')
    if not records:
        raise RecordError("<records>:1: no records; a memory needs at least one record")
    check_records(records)
    return _drop_repeats(records, "<records>")


# --- reading ---------------------------------------------------------------------------------


def _decoded_lines(f: BinaryIO, source: str) -> Iterator[str]:
    """Yield the lines of a binary file (split on b"\\n", kept, bounded in size) decoded as strict UTF-8."""
    lines = bounded_lines(f, source, max_line=MAX_RECORD_BYTES, limit=MAX_RECORDS_BYTES, error=RecordError)
    for n, raw in enumerate(lines, 1):
        if n == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as e:  # the offending byte is not shown: it is part of a value
            raise RecordError(f"{source}:{n}: not valid UTF-8 (at byte {e.start + 1} of the line); "
                              f"save the file as UTF-8") from None


class _JsonObject(dict):
    """A JSON object that remembers the names it repeated (json.loads silently keeps the last)."""

    repeated: tuple[str, ...] = ()


def _object_pairs(pairs: list[tuple[str, Any]]) -> _JsonObject:
    obj = _JsonObject(pairs)
    if len(obj) < len(pairs):
        names = [name for name, _ in pairs]
        obj.repeated = tuple(sorted({name for name in names if names.count(name) > 1}))
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_object_pairs)  # json.loads(hook=) would build one per line


def _json_object(line: str, where: str) -> _JsonObject:
    try:
        obj = _DECODER.decode(line)
    except json.JSONDecodeError as e:  # e.msg never quotes the document; str(e) does not either
        cause = e.msg.removesuffix(" at")  # "Unterminated string starting at" + " at column N"
        raise RecordError(f"{where}: not valid JSON ({cause} at column {e.colno}); "
                          f"each line must be one complete JSON object") from None
    except RecursionError:
        raise RecordError(f"{where}: not valid JSON (nested too deeply)") from None
    if not isinstance(obj, dict):
        raise RecordError(f'{where}: expected a JSON object such as {{"key": "...", "value": "..."}}, '
                          f"got {_json_type(obj)}")
    if obj.repeated:
        raise RecordError(f"{where}: field {shorten(obj.repeated[0])} appears more than once in the "
                          f"object; keep one")
    return obj


def _fields(obj: dict, where: str) -> tuple[str, str]:
    """(key, value) of one JSON object, in the first form whose field names it uses."""
    form = next((f for f in FORMS if f[0] in obj or f[1] in obj), None)
    if form is None:
        names = ", ".join(shorten(name) for name in list(obj)[:5]) or "none"
        raise RecordError(f"{where}: no 'key' and 'value' fields (found {names}); write "
                          f'{{"key": "...", "value": "..."}} (or the paper\'s query/target form)'
                          f"{_did_you_mean(obj, [n for f in FORMS for n in f])}")
    for name in form:
        if name not in obj:
            other = form[0] if name == form[1] else form[1]
            raise RecordError(f"{where}: missing field {shorten(name)} (this line has {shorten(other)})"
                              f"{_did_you_mean(obj, [name])}")
    if form == STRICT_FORM:
        unknown = [name for name in obj if name not in form]
        if unknown:
            raise RecordError(f"{where}: unknown field {shorten(unknown[0])}; a key/value record has "
                              f"only the fields 'key' and 'value' (the paper's query/target form may "
                              f"carry more)")
    for name in form:
        if not isinstance(obj[name], str):
            kind = _json_type(obj[name])
            hint = "; quote it: as a number it would lose leading zeros" if kind == "a number" else ""
            raise RecordError(f"{where}: field {shorten(name)} must be a JSON string, got {kind}{hint}")
    return obj[form[0]], obj[form[1]]


def _parse_csv(lines: Iterable[str], source: str) -> list[Record]:
    """Records of CSV text; `where` is the physical line where each row starts."""
    old_limit = csv.field_size_limit(MAX_RECORD_BYTES)  # process-wide setting: restored below
    try:
        reader = csv.reader(lines, strict=True)
        header: list[str] | None = None
        records = []
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return records
            except csv.Error as e:  # csv messages describe the syntax, never the cell text
                raise RecordError(f"{source}:{start}: not valid CSV ({e}); quote cells that "
                                  f"contain commas, quotes or newlines") from None
            if not row:
                continue
            where = f"{source}:{start}"
            if header is None:
                header, (ki, vi) = row, _csv_columns(row, where)
                continue
            if len(row) != len(header):
                raise RecordError(f"{where}: row has {len(row)} cells but the header has "
                                  f"{len(header)}; quote cells that contain commas")
            records.append(Record(row[ki], row[vi], where))
    finally:
        csv.field_size_limit(old_limit)


def _csv_columns(header: list[str], where: str) -> tuple[int, int]:
    """Indices of the key and value columns of a CSV header row."""
    names = [cell.strip().lower() for cell in header]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise RecordError(f"{where}: column {shorten(repeated[0])} appears more than once in the header")
    form = next((f for f in CSV_FORMS if f[0] in names and f[1] in names), None)
    if form is None:
        half = next(((a, b) for f in CSV_FORMS for a, b in (f, f[::-1]) if a in names), None)
        if half:  # one wanted name is there, so this row is a header: its cells may be quoted
            raise RecordError(f"{where}: the header row has a {shorten(half[0])} column but no "
                              f"{shorten(half[1])} column{_did_you_mean(dict.fromkeys(names), [half[1]])}")
        # no wanted name: the row may be data (no header), so its cells, maybe values, are not shown
        raise RecordError(f"{where}: the header row must name the columns 'key' and 'value' (or "
                          f"'query' and 'target'); none of its {len(names)} cells does. If the file "
                          f"has no header row, add the line key,value first")
    if form == STRICT_FORM:
        unknown = [name for name in names if name not in form]
        if unknown:
            raise RecordError(f"{where}: unknown column {shorten(unknown[0])}; a key,value CSV has only "
                              f"those two columns (a query,target CSV may carry more)")
    return names.index(form[0]), names.index(form[1])


# --- rules and helpers -------------------------------------------------------------------------


def _text_problem(text: object) -> str | None:
    """Why `text` cannot be a key or value (phrased to follow "key " or "value "), or None."""
    if not isinstance(text, str):
        return f"must be a string, got {type(text).__name__}"
    if not text:
        return "is empty; every record needs a non-empty key and value"
    if text.isspace():
        return "is only whitespace; every record needs a key and value with visible text"
    if "\x00" in text:
        return "contains a NUL character (\\u0000); remove it"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (an unpaired \\ud800-\\udfff escape); fix the escape"
    return None


def _drop_repeats(records: list[Record], source: str) -> list[Record]:
    """Keep the first of records that repeat a key (`check_records` made sure the values match)."""
    kept: dict[str, Record] = {}
    repeats = [r for r in records if kept.setdefault(r.key, r) is not r]
    if not repeats:
        return records
    first = repeats[0]
    logger.warning("%s: %d record(s) repeat an earlier key with the same value and were dropped "
                   "(first: key %s at %s, kept from %s)", source, len(repeats), shorten(first.key),
                   first.where, kept[first.key].where)
    return list(kept.values())


def _canonical_line(r: Record) -> str:
    return json.dumps({"key": r.key, "value": r.value}, ensure_ascii=False, sort_keys=True) + "\n"


def _json_type(x: object) -> str:
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "a boolean"
    if isinstance(x, (int, float)):
        return "a number"
    if isinstance(x, str):
        return "a string"
    return "an array" if isinstance(x, list) else "an object"


def shorten(text: str, limit: int = 60) -> str:
    """A key or field name for a message: quoted, escaped onto one line, shortened."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _did_you_mean(obj: dict, expected: Sequence[str]) -> str:
    """' (is "vaule" a typo of "value"?)' for the first present name close to a missing one."""
    for name in expected:
        if name in obj:
            continue
        close = difflib.get_close_matches(name, [n for n in obj if n not in expected], n=1, cutoff=0.7)
        if close:
            return f" (is {shorten(close[0])} a typo of {shorten(name)}?)"
    return ""
