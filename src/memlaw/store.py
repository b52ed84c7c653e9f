"""The results store: one SQLite file (stdlib `sqlite3`), one row per cell. Schema: docs/store.md.

- WAL journal: readers query while a sweep writes, and never block it.
- One transaction per cell (its row and its p_t rows), `synchronous=FULL`: a process killed at any
  moment leaves each cell either fully stored or absent, so a resumed sweep loses and duplicates nothing.
- A stored `done` row is never replaced (insert-or-ignore on the cell key); a `failed` row is
  replaced when the cell is run again.
- Only memlaw stores are opened: a SQLite file without memlaw's tables is refused before anything
  is written to it. Read-only opens (`create=False`: runs, fit, plan, report) never write.
- A new store's file is made when it is first written (its first cell): a sweep refused before
  any cell leaves no file behind.
- A row that cannot be read (bad JSON, text in a number column) is skipped with a warning naming
  its key, or, asked for by key, refused; SQLite errors (a garbled page) are `StoreError`s.

`load_cells` filters with `parse_where` (the `--where` language); `memlaw.exports` writes rows to CSV or Parquet.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from memlaw.errors import StoreError
from memlaw.fileio import json_ready
from memlaw.validation import nearest

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 60_000   # a second writer waits this long for the write lock (cells take seconds)

COLUMNS: dict[str, str] = {  # flat columns of `cells`, after key/sweep/config/status; name -> SQLite type
    "model": "TEXT", "benchmark": "TEXT", "kind": "TEXT", "rank": "INTEGER", "length": "INTEGER",
    "objective": "TEXT", "seed": "INTEGER",
    "delta_loss": "REAL", "L_base": "REAL", "L_final": "REAL", "em_rate": "REAL", "certified_rate": "REAL",
    "tf_acc": "REAL", "free_acc": "REAL", "steps": "INTEGER", "wall_s": "REAL", "time_to_certified": "REAL",
    "n_params": "INTEGER",
}
ALL_COLUMNS: dict[str, str] = {"key": "TEXT", "sweep": "TEXT", "status": "TEXT", **COLUMNS, "error": "TEXT",
                               "created": "TEXT", "config": "TEXT", "metrics": "TEXT", "versions": "TEXT"}
JSON_COLUMNS = ("config", "metrics", "versions")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS cells (
    key TEXT PRIMARY KEY,
    sweep TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    {", ".join(f"{name} {typ}" for name, typ in COLUMNS.items())},
    error TEXT,
    created TEXT NOT NULL,
    config TEXT NOT NULL,
    metrics TEXT NOT NULL,
    versions TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS cells_model_kind ON cells (model, kind, objective);
CREATE TABLE IF NOT EXISTS token_probs (
    key TEXT NOT NULL REFERENCES cells (key) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    record INTEGER NOT NULL,
    p BLOB NOT NULL,
    PRIMARY KEY (key, step, record)
);
"""


class Store:
    """An open store. Use `open_store`; close it (or use `with`) when done."""

    def __init__(self, conn: sqlite3.Connection | None, path: Path):
        self._conn, self.path = conn, path     # None: a new store, whose file is made on first use

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection; a new store's file and schema are made here, when it is first needed."""
        if self._conn is None:
            self._conn = _connect(self.path, create=True)
        return self._conn

    # ---------------------------------------------------------------- writing

    def add_cell(self, result: Any, *, sweep: str) -> bool:
        """Store one cell result (a `memlaw.sweep.cell.CellResult`) in one transaction.

        Returns:
            True if stored; False if the store already holds this key as `done` (nothing changes).
        """
        cell, m = result.cell, result.metrics
        row = {
            "key": result.key, "sweep": sweep, "status": result.status,
            "model": cell.model, "benchmark": cell.benchmark.name, "kind": cell.adapter.kind,
            "rank": cell.adapter.rank, "length": m.get("length", cell.length), "objective": cell.objective.name,
            "seed": cell.seed, "error": result.error, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config": json_text(cell.to_dict()), "metrics": json_text(m), "versions": json_text(result.versions),
        }
        for name in ("delta_loss", "L_base", "L_final", "em_rate", "certified_rate", "tf_acc", "free_acc",
                     "steps", "wall_s", "time_to_certified", "n_params"):
            row[name] = json_ready(m.get(name))          # NaN and inf are stored as NULL
        cols = list(row)
        try:
            self.conn.execute("BEGIN IMMEDIATE")          # take the write lock before reading the status
            try:
                have = self.conn.execute("SELECT status FROM cells WHERE key = ?", (result.key,)).fetchone()
                if have is not None and have[0] == "done":
                    self.conn.execute("ROLLBACK")
                    return False
                self.conn.execute("DELETE FROM token_probs WHERE key = ?", (result.key,))
                self.conn.execute(f"INSERT OR REPLACE INTO cells ({', '.join(cols)}) "
                                  f"VALUES ({', '.join('?' * len(cols))})", [row[c] for c in cols])
                self.conn.executemany("INSERT INTO token_probs (key, step, record, p) VALUES (?, ?, ?, ?)",
                                      [(result.key, s, r, p) for s, r, p in result.token_probs])
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot store cell {result.key[:12]}: {e}") from e
        return True

    # ---------------------------------------------------------------- reading

    def finished_keys(self) -> set[str]:
        """Keys of the cells stored as `done` (a sweep skips these)."""
        return {k for (k,) in self._rows("SELECT key FROM cells WHERE status = 'done'")}

    def is_done(self, key: str) -> bool:
        return bool(self._rows("SELECT 1 FROM cells WHERE key = ? AND status = 'done'", (key,)))

    def load_cells(self, where: str | Mapping[str, Any] | None = None, *, status: str | None = "done",
                   strict: bool = False) -> list[dict]:
        """Rows as dicts (config, metrics, versions parsed from JSON), oldest first.

        Args:
            where: a filter on the flat columns: "model=smollm2-135m,kind=probe,rank>=4" (ops = != < <= > >=,
                clauses joined by AND) or a mapping of column -> value (equality).
            status: "done" (default), "failed", or None for every row.
            strict: raise on a row that cannot be read instead of skipping it with a warning.

        Raises:
            StoreError: a SQLite error, or (strict) a row that cannot be read, naming its key.
        """
        clauses, params = parse_where(where)
        if status is not None:
            clauses.append("status = ?")
            params.append(status)
        sql = "SELECT * FROM cells" + (f" WHERE {' AND '.join(clauses)}" if clauses else "") + " ORDER BY created, rowid"
        names, rows = self._rows(sql, params, names=True)
        out = []
        for values in rows:
            row = dict(zip(names, values))
            problem = _row_problem(row)
            if problem is not None:
                message = f"{self.path}: cell {str(row.get('key'))[:64]!r} cannot be read ({problem})"
                if strict:
                    raise StoreError(message)
                logger.warning("%s; skipped", message)
                continue
            out.append(row)
        return out

    def find_key(self, prefix: str) -> str:
        """The full key that starts with `prefix` (like a git hash). StoreError if none or several."""
        if not re.fullmatch(r"[0-9a-f]{1,64}", prefix or ""):
            raise StoreError(f"cell key must be hex digits, got {prefix[:80]!r}")
        keys = [k for (k,) in self._rows("SELECT key FROM cells WHERE key LIKE ?", (prefix + "%",))]
        if not keys:
            raise StoreError(f"{self.path}: no cell with key {prefix!r}; `memlaw runs list` shows the keys")
        if len(keys) > 1:
            raise StoreError(f"{self.path}: key prefix {prefix!r} matches {len(keys)} cells; give more digits")
        return keys[0]

    def token_probs(self, key: str) -> list[tuple[int, int, np.ndarray]]:
        """(step, record index, p_t as float32 array) of one cell, in step then record order.

        Rows that cannot be read (a blob of odd length, a step that is not an integer) are skipped
        with a warning."""
        out = []
        for s, r, p in self._rows("SELECT step, record, p FROM token_probs WHERE key = ? ORDER BY step, record", (key,)):
            if not (isinstance(s, int) and isinstance(r, int) and isinstance(p, bytes) and len(p) % 2 == 0):
                logger.warning("%s: a token_probs row of cell %r cannot be read; skipped", self.path, key[:64])
                continue
            out.append((s, r, np.frombuffer(p, dtype=np.float16).astype(np.float32)))
        return out

    def count(self) -> dict[str, int]:
        """Rows per status."""
        return dict(self._rows("SELECT status, COUNT(*) FROM cells GROUP BY status"))

    # ---------------------------------------------------------------- plumbing

    def _rows(self, sql: str, params: Iterable[Any] = (), *, names: bool = False):
        """Every row of a query, fetched inside the error boundary (a garbled page fails while fetching)."""
        if self._conn is None and not self.path.exists():
            return ([], []) if names else []       # a new store holds nothing until its first cell is stored
        try:
            cur = self.conn.execute(sql, tuple(params))
            rows = cur.fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot be read ({e}); the store is damaged") from e
        return ([d[0] for d in cur.description], rows) if names else rows

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_store(path: str | os.PathLike, *, create: bool = True) -> Store:
    """Open a store: with `create` for writing (WAL; a new store's file is made when it is first
    written), without it read only.

    A file that is not a memlaw store (another application's SQLite database, an empty file, not
    SQLite at all) is refused before anything is written to it; read-only opens never write.

    Raises:
        StoreError: the file is missing (create=False), a directory, not a memlaw store, or from a
            newer memlaw; a new store where no file can be made.
    """
    path = Path(path)
    if not create and not path.is_file():
        raise StoreError(f"{path}: no such store; run `memlaw sweep GRID.yaml --store {path}` first")
    if path.is_dir():
        raise StoreError(f"{path}: is a directory, not a store file")
    if create and not path.exists():
        _check_creatable(path)
        return Store(None, path)
    return Store(_connect(path, create=create), path)


def _check_creatable(path: Path) -> None:
    """Refuse now a new store that could not be made later: its nearest existing folder must be writable."""
    folder = path.absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise StoreError(f"{path}: cannot make a store there ({folder} is not a folder this user can write)")


def _connect(path: Path, *, create: bool) -> sqlite3.Connection:
    """A checked connection: `create` for writing (the schema made if the database has none), else read only."""
    try:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
        else:
            conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000,
                                   isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _check_memlaw(conn, path, empty_ok=create)
        if create:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            _ensure_schema(conn, path)
    except sqlite3.Error as e:
        raise StoreError(f"{path}: not a memlaw store, or a damaged one ({e})") from e
    return conn


def _check_memlaw(conn: sqlite3.Connection, path: Path, *, empty_ok: bool) -> None:
    """Refuse a database that is not a memlaw store (reading only); `empty_ok`: one with no tables may become one."""
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables and empty_ok:
        return
    if "schema_version" not in tables or "cells" not in tables:
        what = "an empty database" if not tables else f"a SQLite database with other tables ({', '.join(sorted(tables)[:3])})"
        raise StoreError(f"{path}: not a memlaw store ({what}); give the --store a sweep wrote, or a new path")
    columns = {row[1] for row in conn.execute("PRAGMA table_info(cells)")}
    missing = [c for c in ALL_COLUMNS if c not in columns]
    if missing:
        raise StoreError(f"{path}: not a memlaw store (its cells table has no column {missing[0]!r})")
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    version = row[0] if row else None
    if not isinstance(version, int):
        raise StoreError(f"{path}: not a memlaw store (schema version {str(version)[:40]!r})")
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path}: schema version {version} is newer than this memlaw's ({SCHEMA_VERSION}); "
                         "upgrade memlaw")


def _row_problem(row: dict) -> str | None:
    """Why a `cells` row cannot be used (its JSON columns parsed in place), or None."""
    for name, typ in ALL_COLUMNS.items():
        value = row.get(name)
        if name in JSON_COLUMNS:
            try:
                row[name] = json.loads(value)
            except (TypeError, ValueError, RecursionError):
                return f"column {name} is not valid JSON"
            if not isinstance(row[name], dict):
                return f"column {name} is not a JSON object"
        elif value is not None and not isinstance(value, _PY_TYPES[typ]):
            return f"column {name} holds {type(value).__name__}, not {typ}"
        elif value is None and name in ("key", "status", "model", "kind", "objective", "benchmark"):
            return f"column {name} is empty"
    return None


_PY_TYPES = {"TEXT": str, "INTEGER": int, "REAL": (int, float)}


def _ensure_schema(conn: sqlite3.Connection, path: Path) -> None:
    have = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'").fetchone()
    if have and conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for stmt in filter(str.strip, _SCHEMA.split(";")):  # not executescript: it would COMMIT our transaction
            conn.execute(stmt)
        if conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 0:
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


_WHERE_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z_0-9.]*)\s*(!=|<=|>=|=|<|>)\s*(.*?)\s*$")
_CONFIG_KEY = re.compile(r"^[a-z_]+(\.[a-z_]+)+$")


def parse_where(where: str | Mapping[str, Any] | None) -> tuple[list[str], list[Any]]:
    """'model=smollm2-135m,rank>=4' -> (["model = ?", "rank >= ?"], ["smollm2-135m", 4]).

    A column is a flat column or a dotted key of the cell's config, e.g. `benchmark.ratio=r100` or
    `train.lr<0.01` (compared as a number when the value is one).

    Raises:
        StoreError: a clause without an operator, an unknown column (with the nearest name), or a
            non-number for a numeric column.
    """
    if where is None or where == "":
        return [], []
    items: list[tuple[str, str, Any]]
    if isinstance(where, Mapping):
        items = [(k, "=", v) for k, v in where.items()]
    else:
        items = []
        for part in filter(str.strip, str(where).split(",")):
            m = _WHERE_RE.match(part)
            if not m:
                raise StoreError(f"filter clause {part.strip()!r} is not COLUMN OP VALUE (ops: = != < <= > >=)")
            items.append((m.group(1), m.group(2), m.group(3)))
    filterable = {k: v for k, v in ALL_COLUMNS.items() if k not in JSON_COLUMNS}
    clauses, params = [], []
    for col, op, value in items:
        if "." in col and _CONFIG_KEY.match(col):          # a key inside the config JSON
            clauses.append(f"json_extract(config, ?) {op} ?")
            params += [f"$.{col}", _number_or_text(value)]
            continue
        if col not in filterable:
            raise StoreError(f"unknown column {col!r} in filter{nearest(col, filterable)}; columns: "
                             f"{', '.join(filterable)}, or a config "
                             f"key such as benchmark.ratio or train.lr")
        if filterable[col] in ("INTEGER", "REAL"):
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise StoreError(f"filter {col}{op}{value}: {col} is a number column") from None
        else:
            value = str(value)
        clauses.append(f'"{col}" {op} ?')
        params.append(value)
    return clauses, params


def _number_or_text(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def json_text(x: Any) -> str:
    """A JSON column's text: strict JSON (NaN and infinity as null), keys sorted."""
    return json.dumps(json_ready(x), sort_keys=True, ensure_ascii=False, allow_nan=False)


__all__ = ["Store", "open_store", "parse_where", "json_text", "SCHEMA_VERSION", "COLUMNS", "ALL_COLUMNS", "JSON_COLUMNS"]
