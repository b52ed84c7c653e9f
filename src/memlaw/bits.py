"""Bits stored and bits per parameter (DESIGN §2), counted under the generator that made the values.

A value holds as much information as its generator put into it, not log2(10) per digit:

- **exact**, where the generator is known (each benchmark counts its own, `benchmarks.value_bits`):
  PhoneBook: 2 + 9·log2(10) ≈ 31.9 bits a number (first digit 6-9, nine uniform digits);
  long-context: for each random token the value holds, the entropy of the text one uniform draw
  from the pool writes (`long_context.draw_bits`, at most log2 |pool|), 0 for the unreplaced text
  (the generator's own source document); the linear rule: 0 (the value is 3x + 5y + 7 of the key:
  nothing beyond the rule).
- **upper**, for user records (no known generator): the entropy the value would have if drawn
  uniformly from the strings of its length over its own character class (`upper_bound`). An upper
  bound, reported under its own names (`bits_stored_upper`, `bits_per_param_upper`), never as bits.

At the capacity frontier (per rank, the largest ℓ every record of which came back exactly) bits
per parameter compare with published figures (`PUBLISHED`); `frontier_bits` reads them off stored cells.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from memlaw.records import Record

Kind = Literal["exact", "upper"]

CLASSES: tuple[tuple[str, str], ...] = (
    ("digits", "0123456789"),
    ("hex", "0123456789abcdef"),
    ("hex", "0123456789ABCDEF"),
    ("lowercase alphanumeric", "0123456789abcdefghijklmnopqrstuvwxyz"),
    ("alphanumeric", "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"),
    ("printable ASCII", "".join(chr(c) for c in range(32, 127))),
)
"""Character classes `upper_bound` tries, smallest first; a value outside them all counts 8 bits a UTF-8 byte."""


@dataclass(frozen=True)
class ValueBits:
    """The information in each value of a memory, in bits, and whether it is exact or an upper bound."""

    per_record: tuple[float, ...]
    kind: Kind
    basis: str
    """How it was counted, in one line (shown with the numbers)."""

    @property
    def total(self) -> float:
        return math.fsum(self.per_record)

    def first(self, n: int) -> ValueBits:
        """The bits of the first `n` records only."""
        return ValueBits(self.per_record[:n], self.kind, self.basis)

    def stored(self, recalled: Sequence[bool]) -> float:
        """Bits of the values recalled exactly (`recalled[i]`: record i came back by greedy decoding)."""
        if len(recalled) != len(self.per_record):
            raise ValueError(f"{len(recalled)} recall verdicts for {len(self.per_record)} records")
        return math.fsum(b for b, ok in zip(self.per_record, recalled) if ok)

    def metrics(self, recalled: Sequence[bool], n_params: int) -> dict[str, Any]:
        """{bits_kind, bits_basis, bits_total, bits_stored, bits_per_param}, each number named
        `..._upper` when the kind is an upper bound, so the two are never read as one."""
        s = suffix(self.kind)
        stored = self.stored(recalled)
        return {"bits_kind": self.kind, "bits_basis": self.basis, f"bits_total{s}": self.total,
                f"bits_stored{s}": stored, f"bits_per_param{s}": stored / n_params if n_params else None}


def suffix(kind: str) -> str:
    """"" for exact bits, "_upper" for an upper bound: the metric names' ending."""
    if kind not in ("exact", "upper"):
        raise ValueError(f"bits kind must be 'exact' or 'upper', got {kind!r}")
    return "" if kind == "exact" else "_upper"


def exact(per_record: Iterable[float], basis: str) -> ValueBits:
    return ValueBits(tuple(float(b) for b in per_record), "exact", basis)


def character_class(value: str) -> tuple[str, int] | None:
    """(name, size) of the smallest class in `CLASSES` holding every character of `value`, or None."""
    chars = set(value)
    for name, alphabet in CLASSES:
        if chars <= set(alphabet):
            return name, len(alphabet)
    return None


def upper_bound(value: str) -> float:
    """Bits of `value` if it were drawn uniformly from the strings of its length over its character
    class: len · log2(class size) (digits 10, hex 16, lowercase alphanumeric 36, alphanumeric 62,
    printable ASCII 95), else 8 bits a UTF-8 byte. A bound under that assumption, not an entropy."""
    found = character_class(value)
    if found is None:
        return 8.0 * len(value.encode("utf-8"))
    return len(value) * math.log2(found[1])


def upper(records: Sequence[Record], basis: str | None = None) -> ValueBits:
    """Upper bounds for records with no known generator (`upper_bound` of each value)."""
    return ValueBits(tuple(upper_bound(r.value) for r in records), "upper",
                     basis or "upper bound: each value as if drawn uniformly over its length and character class")


def per_param_text(row: Mapping[str, Any], digits: int = 4) -> str:
    """Bits per parameter of a verification summary or a stored cell, as one short text: "0.0123"
    (exact), "≤ 0.0456" (an upper bound) or "-" (unknown), followed by " (recounted)" where the cell
    was stored without its bits and they were recounted (`recounted`: an old PhoneBook cell from its
    EM, any other from its config by `memlaw.recount.with_bits`)."""
    found = stored_bits(row)
    n_params = metrics_of(row).get("n_params", row.get("n_params"))
    if found is None or not n_params:
        return "-"
    value, kind = found[0] / n_params, found[1]
    text = f"{value:.{digits}f}" if kind == "exact" else f"≤ {value:.{digits}f}"
    return text + (" (recounted)" if recounted(row) else "")


# ---------------------------------------------------------------- reading stored cells


RECOUNTED = "bits_recounted"
"""Metrics key marking bits recounted from a cell's config (`memlaw.recount`), not stored with the cell."""


def has_stored_bits(row: Mapping[str, Any]) -> bool:
    """Whether the cell was stored with its bits (metrics `bits_kind`), not recounted."""
    m = metrics_of(row)
    return {**row, **m}.get("bits_kind") in ("exact", "upper") and not m.get(RECOUNTED)


def recounted(row: Mapping[str, Any]) -> bool:
    """Whether the bits read off `row` were recounted, not stored with the cell: from its config
    (`memlaw.recount.with_bits`), or from an old PhoneBook cell's record count (`row_bits`)."""
    return not has_stored_bits(row) and (row_bits(row) is not None or stored_bits(row) is not None)


def row_bits(row: Mapping[str, Any]) -> tuple[float, Kind] | None:
    """(bits of the whole memory, kind) of a stored cell (store row or `memlaw runs export` CSV row), or None."""
    return _counted(row, "bits_total", "n_records")


def stored_bits(row: Mapping[str, Any]) -> tuple[float, Kind] | None:
    """(bits of the values recalled exactly, kind) of a verification summary or stored cell, or None."""
    return _counted(row, "bits_stored", "em")


def _counted(row: Mapping[str, Any], name: str, legacy_count: str) -> tuple[float, Kind] | None:
    """`name` (or `name`_upper) with its kind. Cells stored before bits were counted per generator
    carry the old per-digit count; a PhoneBook one is recounted exactly (its records times
    PHONE_BITS: `legacy_count` is how many), other old cells give None."""
    metrics = metrics_of(row)
    m = {**row, **metrics}
    kind = m.get("bits_kind")
    if kind in ("exact", "upper"):
        value = m.get(f"{name}{suffix(kind)}")
        return (float(value), kind) if value is not None and value != "" else None
    bench = row.get("benchmark") or ((_config(row) or {}).get("benchmark") or {}).get("name")
    n = metrics.get(legacy_count)                    # counts from the stored metrics, never a CSV's em rate
    if bench == "phonebook" and n is not None and n != "":
        from memlaw.benchmarks.phonebook import PHONE_BITS

        return int(n) * PHONE_BITS, "exact"
    return None


def metrics_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored cell's metrics as a dict (parsed where a row carries them as JSON text; {} if none)."""
    m = row.get("metrics")
    if isinstance(m, str):
        import json

        try:
            m = json.loads(m) if m else {}
        except json.JSONDecodeError:
            m = {}
    return m if isinstance(m, dict) else {}


def _config(row: Mapping[str, Any]) -> dict[str, Any] | None:
    from memlaw.experiments import config_of

    return config_of(row)


@dataclass(frozen=True)
class FrontierPoint:
    """One rank on the capacity frontier: the largest ℓ all of whose records came back exactly."""

    rank: int
    length: int
    """ℓ_max: value tokens of the largest memory recalled in full at this rank."""
    n_params: int | None
    bits: float | None
    """Bits of that memory (exact or an upper bound: `kind`); None where no count is known."""
    kind: Kind | None
    cells: int
    """Cells at (rank, ℓ_max) with 100% EM (seeds)."""
    of: int
    """Cells at (rank, ℓ_max) in all."""
    recounted: int = 0
    """Of `cells`, those whose bits were recounted from their config (stored before bits were kept per cell)."""

    @property
    def bits_per_param(self) -> float | None:
        return None if self.bits is None or not self.n_params else self.bits / self.n_params

    @property
    def tokens_per_param(self) -> float | None:
        """Memorised value tokens per trainable parameter (the unit of the PEFT scaling figure)."""
        return self.length / self.n_params if self.n_params else None

    def to_dict(self) -> dict[str, Any]:
        s = "" if self.kind is None else suffix(self.kind)
        return {"rank": self.rank, "length": self.length, "n_params": self.n_params, "bits_kind": self.kind,
                f"bits{s}": self.bits, f"bits_per_param{s}": self.bits_per_param,
                "tokens_per_param": self.tokens_per_param, "cells": self.cells, "of": self.of,
                "recounted": self.recounted}


def frontier_bits(rows: Iterable[Mapping[str, Any]],
                  recount: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None) -> list[FrontierPoint]:
    """Per rank, the largest ℓ with 100% EM among `rows` (one experiment's stored cells) and its bits.

    Rows need rank, length, em_rate (or em, as CSV exports carry it), n_params, and the bits of the
    memory (`row_bits`). Ranks with no fully recalled length are left out. `recount` (e.g.
    `memlaw.recount.with_bits`) gives the frontier's cells stored without bits theirs; each point
    counts the cells whose bits were recounted.
    """
    by_rank: dict[int, list[Mapping[str, Any]]] = {}
    for r in rows:
        by_rank.setdefault(int(r["rank"]), []).append(r)
    points = []
    for rank in sorted(by_rank):
        cells = by_rank[rank]
        full = [r for r in cells if _em(r) is not None and _em(r) >= 1.0]
        if not full:
            continue
        length = max(int(r["length"]) for r in full)
        at = [r for r in cells if int(r["length"]) == length]
        done = [r for r in full if int(r["length"]) == length]
        if recount is not None:
            done = [r if row_bits(r) is not None else recount(r) for r in done]
        counted = [b for b in (row_bits(r) for r in done) if b is not None]
        kinds = {k for _, k in counted}
        bits, kind = (None, None)
        if counted and len(kinds) == 1:
            bits, kind = math.fsum(b for b, _ in counted) / len(counted), kinds.pop()
        params = [r.get("n_params") for r in done if r.get("n_params")]
        again = sum(1 for r in done if row_bits(r) is not None and recounted(r))
        points.append(FrontierPoint(rank, length, int(params[0]) if params else None, bits, kind, len(done), len(at),
                                    again))
    return points


def _em(row: Mapping[str, Any]) -> float | None:
    v = row.get("em_rate", row.get("em"))
    return None if v is None or v == "" else float(v)


def recount_note(capacity: Mapping[str, Any] | None) -> str | None:
    """One line saying at which ranks the frontier's bits were recounted (`capacity_summary`'s `recounted`
    per point: from the cells' configs, or an old PhoneBook cell's record count), or None."""
    ranks = [p for p in (capacity or {}).get("frontier", []) if p.get("recounted")]
    if not ranks:
        return None
    where = ", ".join(f"{p['rank']:g} ({p['recounted']} cell{'s' if p['recounted'] != 1 else ''})" for p in ranks)
    return (f"bits at rank{'s' if len(ranks) > 1 else ''} {where} recounted from the cells' configs (benchmark, "
            "its options, ℓ, the model's tokenizer): the cells were stored before bits were kept per cell")


@dataclass(frozen=True)
class Published:
    """A published capacity figure to set measured ones beside."""

    name: str
    low: float
    high: float
    unit: Literal["bits/param", "tokens/param"]
    scope: str


PUBLISHED = (
    Published("Morris et al. 2025 (arXiv:2505.24832)", 3.6, 3.6, "bits/param",
              "whole GPT-style models trained from scratch on random bit strings"),
    Published("PEFT scaling study (issue 13)", 1e-3, 1e-2, "tokens/param",
              "the knee of recall: memorised tokens per trainable adapter parameter"),
)
"""Figures to compare the frontier with (ranges where the source gives one)."""


def csv_columns(path, names: Sequence[str] = ("n_params", "benchmark", "metrics")) -> list[dict[str, Any]]:
    """The columns `frontier_bits` reads beyond a law table's, one dict a data row (in file order, as
    `law.read_law_csv` reads them): `memlaw runs export` writes them; a bare law table has none."""
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        reader.fieldnames = [h.strip() for h in reader.fieldnames or []]
        out = []
        for raw in reader:
            row: dict[str, Any] = {k: raw[k] for k in names if raw.get(k)}
            if "n_params" in row:
                try:
                    row["n_params"] = int(float(row["n_params"]))
                except ValueError:
                    del row["n_params"]
            out.append(row)
    return out


def capacity_summary(rows: Iterable[Mapping[str, Any]],
                     recount: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """JSON-ready: the frontier's bits per parameter per rank (`frontier_bits`, with `recount`) and the
    published figures beside them."""
    points = frontier_bits(rows, recount)
    return {"frontier": [p.to_dict() for p in points],
            "published": [{"name": p.name, "low": p.low, "high": p.high, "unit": p.unit, "scope": p.scope}
                          for p in PUBLISHED]}


__all__ = ["ValueBits", "Kind", "CLASSES", "suffix", "exact", "upper", "upper_bound", "character_class",
           "per_param_text", "row_bits", "stored_bits", "metrics_of", "RECOUNTED", "has_stored_bits", "recounted",
           "FrontierPoint", "frontier_bits", "Published", "PUBLISHED", "capacity_summary", "recount_note", "csv_columns"]
