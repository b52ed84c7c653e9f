"""The `memlaw runs export` file: the row a store cell becomes, the file written, and a CSV read back as store rows.

An export is the results in a form that can be committed and shared (results/law-*.csv): `memlaw
fit --csv` and `memlaw report --csv` read it as they read the store it came from. `export_cells`
writes CSV or Parquet atomically (CSV text cells never start a spreadsheet formula: `fileio.csv_cell`).
`read_export` gives rows shaped as `Store.load_cells` gives them (typed flat columns, config,
metrics and versions parsed), so experiments group, and laws fit, exactly as on the store.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Mapping
from typing import Any

from memlaw.atomic import atomic_write_bytes, atomic_write_text, check_output_file
from memlaw.config import BenchmarkConfig
from memlaw.errors import ConfigError, StoreError
from memlaw.experiments import experiment_of
from memlaw.fileio import csv_cell, csv_text, open_input, read_csv
from memlaw.store import ALL_COLUMNS, JSON_COLUMNS, Store, json_text

FORMATS = ("csv", "parquet")

EXPORT_EXTRA = ("em", "experiment", "ratio", "held_out", "rule", "held_out_em_rate", "locality_kl_mean",
                "locality_identical", "locality_agreement")
"""Derived export columns: em (= em_rate, as `memlaw fit --csv` reads it), the experiment key (cells that
differ only in rank, length and seed share it; `fit --csv` groups by it), the benchmark options that
split experiments most often (the linear rule as `ax+by+c`), the held-out (generalization) EM of cells
that have held-out records, and what the adapter costs the base model (`metrics.locality`: mean KL,
greedy continuations unchanged, token agreement) where the cell measured it."""
EXTRA_TYPES = {"em": "REAL", "experiment": "TEXT", "ratio": "TEXT", "held_out": "TEXT", "rule": "TEXT",
               "held_out_em_rate": "REAL", "locality_kl_mean": "REAL", "locality_identical": "REAL",
               "locality_agreement": "REAL"}
REQUIRED = ("key", "status", "rank", "length", "config")
"""Columns that make a CSV an export (a bare law table, rank,length,delta_loss, has none of the others)."""
LIMIT = 1 << 30


def export_cells(store: Store, path: str | os.PathLike, format: str = "csv", *,
                 where: str | Mapping[str, Any] | None = None, status: str | None = "done") -> int:
    """Write the store's rows (`where`, `status` as `Store.load_cells` takes them) to CSV or Parquet.

    Returns:
        The number of rows written.

    Raises:
        StoreError: an unknown format, a bad filter, or Parquet without pyarrow.
        OutputError: `path` is a directory, a link or a device (checked before any work).
    """
    if format not in FORMATS:
        raise StoreError(f"export format must be csv or parquet, got {format!r}")
    path = check_output_file(path)
    rows = [export_row(r) for r in store.load_cells(where, status=status)]
    names = export_names()
    if format == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
        w.writeheader()
        w.writerows({k: csv_cell(v) for k, v in row.items()} for row in rows)   # text never a live formula
        atomic_write_text(path, buf.getvalue())
        return len(rows)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise StoreError("parquet export needs pyarrow: pip install pyarrow") from None
    types = {"TEXT": pa.string(), "INTEGER": pa.int64(), "REAL": pa.float64()}
    schema = pa.schema([(n, types[{**ALL_COLUMNS, **EXTRA_TYPES}.get(n, "TEXT")]) for n in names])
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf)
    atomic_write_bytes(path, buf.getvalue())
    return len(rows)


def export_names() -> list[str]:
    """The export's header: the store's flat columns, `EXPORT_EXTRA`, then the JSON columns."""
    flat = [c for c in ALL_COLUMNS if c not in JSON_COLUMNS]
    return [*flat, *EXPORT_EXTRA, *JSON_COLUMNS]


def rule_text(bench: Mapping[str, Any]) -> str | None:
    """A stored linear-rule benchmark's rule as `ax+by+c` (`3x+5y+7` where the config predates the
    option); None for other benchmarks."""
    if bench.get("name") != "linear-rule":
        return None
    return BenchmarkConfig(name="linear-rule", rule=bench.get("rule")).rule_text()


def export_row(row: dict) -> dict:
    """A `Store.load_cells` row as an export row. A failed cell's error text is left out (it may quote a
    record); `memlaw runs show KEY` on the store shows it."""
    out = {k: v for k, v in row.items() if k not in JSON_COLUMNS}
    if row.get("status") != "done":
        out["error"] = None
    out["em"] = row.get("em_rate")
    experiment = json.dumps(experiment_of(row), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    out["experiment"] = hashlib.sha256(experiment.encode("utf-8")).hexdigest()[:16]
    bench = (row.get("config") or {}).get("benchmark") or {}
    out["ratio"], out["held_out"] = bench.get("ratio"), bench.get("held_out")
    out["rule"] = rule_text(bench)
    out["held_out_em_rate"] = ((row.get("metrics") or {}).get("held_out") or {}).get("em_rate")
    local = (row.get("metrics") or {}).get("locality") or {}
    for name in ("kl_mean", "identical", "agreement"):
        out[f"locality_{name}"] = local.get(name)
    for c in JSON_COLUMNS:
        out[c] = json_text(row[c])
    return out


def is_export(path: str | os.PathLike) -> bool:
    """Whether the CSV's header has the columns of a `memlaw runs export` file (`REQUIRED`)."""
    with open_input(path, limit=LIMIT, error=ConfigError, what="a CSV file") as f:
        first = f.readline().decode("utf-8", errors="replace")
    header = {h.strip() for h in next(csv.reader([first]), [])}
    return all(c in header for c in REQUIRED)


def read_export(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The cells of a `memlaw runs export` CSV as store rows (`Store.load_cells` shape), in file order.

    Flat columns are typed as the store types them (empty cells None), text cells lose the apostrophe
    `memlaw runs export` puts before a would-be spreadsheet formula, and config, metrics and versions
    are parsed from JSON. Every status is kept (an export made with `--failed` holds failed cells).

    Raises:
        ConfigError: "path:line: cause": not a file, not UTF-8, a missing export column, a number
            column holding text, or a JSON column that is not a JSON object.
    """
    types = {**ALL_COLUMNS, **EXTRA_TYPES}
    reader = read_csv(path, kind="`memlaw runs export`", required=REQUIRED, error=ConfigError, limit=LIMIT)
    rows = []
    for raw in reader:
        where = f"{path}:{reader.line_num}"
        row: dict[str, Any] = {}
        for name in reader.fieldnames:
            row[name] = _cell(raw.get(name), name, types.get(name, "TEXT"), where)
        rows.append(row)
    return rows


def _cell(text: str | None, name: str, typ: str, where: str) -> Any:
    """One CSV cell typed as its store column, or parsed JSON for config, metrics and versions."""
    if name in JSON_COLUMNS:
        try:
            value = json.loads(text or "")
        except (ValueError, RecursionError):
            raise ConfigError(f"{where}: column {name} is not valid JSON") from None
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: column {name} is not a JSON object")
        return value
    if text is None or text == "":
        return None
    if typ == "TEXT":
        return csv_text(text)
    try:
        number = float(text)
    except ValueError:
        raise ConfigError(f"{where}: column {name} is not a number: {text[:40]!r}") from None
    if typ == "INTEGER":
        if not number.is_integer():
            raise ConfigError(f"{where}: column {name} is not an integer: {text[:40]!r}")
        return int(number)
    return number


__all__ = ["export_cells", "EXPORT_EXTRA", "EXTRA_TYPES", "FORMATS", "export_names", "export_row", "is_export",
           "read_export"]
