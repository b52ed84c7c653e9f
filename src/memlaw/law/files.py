"""Law tables from CSV files: `memlaw fit --csv` (and `memlaw runs export` output, read as it is)."""

from __future__ import annotations

import csv
import math
import os
from typing import Any

from memlaw.errors import ConfigError

REQUIRED = ("rank", "length", "delta_loss")
OPTIONAL = ("em", "L_final", "L_base", "seed")
L_BASE_NAMES = ("l_base", "L_base")
"""The base loss column: `l_base` as a user writes it, `L_base` as `memlaw runs export` does."""


def read_law_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a CSV with header rank,length,delta_loss[,em][,l_base] into rows of floats.

    Of the other columns, `L_final` and `seed` (numbers), `l_base` or `L_base` (a number > 0, read as
    `L_base`: the bounded law's ceiling), and `experiment` and `config` (text, as `memlaw runs
    export` writes them) are kept, so the rows group into experiments as the store's do; the rest
    are ignored.

    Raises:
        ConfigError: "path:line: cause" for a missing column, a non-number, a non-positive rank,
            length or l_base, an em outside [0, 1], or both l_base and L_base columns.
    """
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        if not header:
            raise ConfigError(f"{path}:1: empty file; expected a header rank,length,delta_loss[,em][,l_base]")
        reader.fieldnames = header
        missing = [k for k in REQUIRED if k not in header]
        if missing:
            raise ConfigError(f"{path}:1: missing column(s) {', '.join(missing)} (header: {','.join(header)})")
        bases = [k for k in L_BASE_NAMES if k in header]
        if len(bases) > 1:
            raise ConfigError(f"{path}:1: both l_base and L_base columns; keep one")
        columns = {k: k for k in REQUIRED + OPTIONAL if k in header} | {b: "L_base" for b in bases}
        for raw in reader:
            where = f"{path}:{reader.line_num}"
            row = {}
            for column, name in columns.items():
                value = _number(raw.get(column), column, where, required=name in REQUIRED)
                if value is not None:
                    row[name] = value
            row.update({k: raw[k] for k in ("experiment", "config", "key") if raw.get(k)})
            rows.append(row)
    return rows


def _number(text: str | None, column: str, where: str, *, required: bool) -> float | None:
    """One CSV cell as a checked float; None for an empty optional cell (an unmeasured em still counts)."""
    cell = (text or "").strip()
    if not cell:
        if required:
            raise ConfigError(f"{where}: missing value for {column}")
        return None
    try:
        value = float(cell)
    except ValueError:
        raise ConfigError(f"{where}: {column} is not a number: {cell!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{where}: {column} must be finite, got {cell!r}")
    if column in ("rank", "length", *L_BASE_NAMES) and value <= 0:
        raise ConfigError(f"{where}: {column} must be > 0, got {cell}")
    if column == "em" and not 0.0 <= value <= 1.0:
        raise ConfigError(f"{where}: em must be a fraction in [0, 1], got {cell}")
    return value


__all__ = ["read_law_csv"]
