"""Bits of cells stored before bits were kept per cell, recounted from their config (DESIGN §2).

A cell's bits are decided by its config: the benchmark and its options (noise ratio, data seed, a
records file), ℓ, and the model's tokenizer. A stored row that lacks them (a cell run before
`memlaw.bits`: its metrics carry no `bits_kind`) gets them again here: its records are rebuilt
(`benchmarks.build`) and counted under their generator (`benchmarks.value_bits`), exact or an upper
bound as a fresh cell's would be, with the model's tokenizer alone (`models.load_tokenizer`, never
the weights), loaded once per model in a process.

The rebuilt memory must match what the cell stored (its record count and each record's value
tokens, where the row has them); a cell whose memory cannot be rebuilt (a records file moved or
edited, a model whose tokenizer is not here) keeps its bits unknown, with a warning saying why.
A recounted row says so (`metrics["bits_recounted"]`), and so does every table that shows it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from memlaw.bits import RECOUNTED, ValueBits, has_stored_bits, metrics_of, row_bits, stored_bits, suffix
from memlaw.errors import MemlawError

logger = logging.getLogger(__name__)

_TOKENIZERS: dict[str, Any] = {}
_COUNTS: dict[str, tuple[ValueBits, tuple[int, ...]] | str] = {}
"""(model, benchmark, ℓ) -> the memory's bits and value tokens per record, or why they could not be
counted; once a process."""
_WARNED: set[str] = set()


def tokenizer(model: str):
    """The tokenizer of `model` (`models.load_tokenizer`: never the weights), loaded once per model."""
    if model not in _TOKENIZERS:
        from memlaw.models import load_tokenizer

        _TOKENIZERS[model] = load_tokenizer(model)
    return _TOKENIZERS[model]


def value_bits(row: Mapping[str, Any]) -> ValueBits | None:
    """The bits of the memory a stored cell (store row or `memlaw runs export` row) wrote, rebuilt
    from its config; None (with a warning, once per cause) where it cannot be rebuilt, or where the
    rebuilt memory differs from the one the cell stored."""
    from memlaw.experiments import config_of

    try:
        cfg = config_of(row)
    except MemlawError:
        return None
    if not cfg or not cfg.get("model") or not isinstance(cfg.get("benchmark"), Mapping):
        return None
    length = cfg.get("length", row.get("length"))
    key = json.dumps([cfg["model"], cfg["benchmark"], length], sort_keys=True, default=str)
    if key not in _COUNTS:
        _COUNTS[key] = _count(cfg["model"], cfg["benchmark"], length)
    found = _COUNTS[key]
    if isinstance(found, str):
        _warn(f"bits of {cfg['model']} {cfg['benchmark'].get('name')} ℓ={length} left unknown: {found}")
        return None
    mismatch = _mismatch(row, *found)
    if mismatch:
        _warn(f"bits of cell {str(row.get('key'))[:12]} left unknown: the memory rebuilt from its config "
              f"differs from the one it stored ({mismatch})")
        return None
    return found[0]


def _count(model: str, benchmark: Mapping[str, Any], length: Any) -> tuple[ValueBits, tuple[int, ...]] | str:
    """(the bits of one memory rebuilt, each record's value tokens), or the reason it cannot be rebuilt."""
    from memlaw.benchmarks import build, value_bits as count
    from memlaw.config import BenchmarkConfig, from_dict

    try:
        bench = from_dict(BenchmarkConfig, dict(benchmark), "cell.benchmark")
        tok = tokenizer(model)
        records, _ = build(bench.name, tok, int(length), **bench.options())
        found = count(bench.name, tok, records, **bench.options())
        tokens = tuple(len(ids) for ids in tok([r.value for r in records], add_special_tokens=False).input_ids)
    except (MemlawError, OSError, TypeError, ValueError) as e:
        return (str(e).strip().splitlines() or [type(e).__name__])[0]
    return found, tokens


def _mismatch(row: Mapping[str, Any], found: ValueBits, tokens: tuple[int, ...]) -> str | None:
    """Why the rebuilt memory is not the cell's (record count, value tokens per record), or None."""
    m = metrics_of(row)
    n = m.get("n_records")
    if n not in (None, "") and int(n) != len(found.per_record):
        return f"{len(found.per_record)} records rebuilt, {n} stored"
    stored = (m.get("records") or {}).get("n_value") if isinstance(m.get("records"), Mapping) else None
    if stored is not None and tuple(int(t) for t in stored) != tokens:
        return "the records' value tokens differ"
    return None


def with_bits(row: Mapping[str, Any]) -> Mapping[str, Any]:
    """`row` itself where `memlaw.bits` can read its bits (stored with the cell, or an old PhoneBook
    cell's count) or none can be rebuilt; else a copy whose metrics hold the bits recounted from its
    config (`ValueBits.metrics`: bits_kind, bits_total, and bits_stored and bits_per_param where it is
    known which records came back), marked `bits_recounted`."""
    if has_stored_bits(row) or (row_bits(row) is not None and stored_bits(row) is not None):
        return row
    found = value_bits(row)
    if found is None:
        return row
    m = dict(metrics_of(row))
    recalled = _recalled(row, m, len(found.per_record))
    n_params = row.get("n_params", m.get("n_params"))
    if recalled is not None and n_params:
        m.update(found.metrics(recalled, int(n_params)))
    else:
        m.update({"bits_kind": found.kind, "bits_basis": found.basis, f"bits_total{suffix(found.kind)}": found.total})
    m[RECOUNTED] = True
    return {**row, "metrics": m}


def with_bits_all(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """`with_bits` of each row."""
    return [with_bits(r) for r in rows]


def _recalled(row: Mapping[str, Any], m: Mapping[str, Any], n: int) -> Sequence[bool] | None:
    """Which records came back by greedy decoding: the cell's per-record verdicts, or all/none at EM 100%/0%."""
    per = (m.get("records") or {}).get("em") if isinstance(m.get("records"), Mapping) else None
    if per is not None and len(per) == n:
        return [bool(x) for x in per]
    em = row.get("em_rate", m.get("em_rate"))
    if em in (None, ""):
        return None
    return [True] * n if float(em) >= 1.0 else [False] * n if float(em) <= 0.0 else None


def _warn(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning(message)


__all__ = ["tokenizer", "value_bits", "with_bits", "with_bits_all"]
