"""The stubborn-token phase transition, per group of cells (DESIGN §8). Pure: rows in, rows out.

**Stubborn token**: p_t ≤ 0.5. **Earliest stubborn**: its first answer position. **First failure**:
the first answer position where greedy decoding leaves the target (positions are 0-based over the
value tokens, then the terminator).

**The phase picture.** Answer position t of a record is *right under free-run* when the greedy
token at t equals the target and so does every greedy token before it: t < first failure (every
decoded position when there is none). The first failure is *wrong*. Positions after it are
*off-path*: greedy decoding saw another prefix there than the teacher-forced pass that measured p_t,
so p_t says nothing about them; they are left out (so are terminator positions after the first
terminator token, which greedy decoding never produces). On the path the greedy context equals the
teacher-forced one, so greedy picks the argmax of the distribution p_t comes from: p_t > 0.5 forces
the target (right), and a wrong position has another token at least as likely, so p_t ≤ 0.5. The
boundary at 0.5 is deterministic one way: `violations` (p_t > 0.5 but wrong) must be 0 up to
numerics between the teacher-forced pass and the KV-cached decode. The other way it is not: a
token with p_t ≤ 0.5 can still be the argmax (`right_below`). p_t is read back from float16, which
rounds to the nearest value, and 0.5 is exact in float16: a stored p_t > 0.5 was > 0.5 before.

The statistics over the per-record rows (which records count, ρ, its interval and its null) are in
`memlaw.rho`; this module turns store rows into those rows, counts the phase table, and groups cells.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from memlaw.analysis import TokenProbRows, final_probs, record_rows
from memlaw.certificate import stubborn
from memlaw.config import BenchmarkConfig, ObjectiveConfig, from_dict, to_dict
from memlaw.errors import ConfigError
from memlaw.experiments import config_of
from memlaw.rho import INCLUSIONS, Correlation, RhoOptions, correlate, inclusion

RECORD_FIELDS = ("key", "model", "benchmark", "objective", "kind", "rank", "length", "seed", "record", "n_value",
                 "n_terminator", "em", "certified", "stubborn", "earliest_stubborn", "first_failure", "min_p",
                 "inclusion", "stubborn_positions")
"""Columns of `record_table` (and of `memlaw runs records`): the cell, the record, its verdict, whether it is
in ρ, and its stubborn positions where the cell stored final p_t (None otherwise)."""
GROUP_KEYS = ("model", "benchmark", "objective", "kind", "rank", "length", "seed")
"""Columns ρ can be grouped by."""
DEFAULT_BY = ("model", "benchmark")


# ---------------------------------------------------------------- per-record rows


def cell_columns(row: Mapping[str, Any]) -> dict[str, Any]:
    """What a cell was: key, model, benchmark (name and options), objective (name and non-default options),
    adapter kind, rank, length, seed."""
    cfg = config_of(row) or {}
    return {"key": row["key"], "model": row.get("model"), "benchmark": benchmark_label(row, cfg),
            "objective": objective_label(row, cfg), "kind": row.get("kind"), "rank": row.get("rank"),
            "length": row.get("length"), "seed": row.get("seed")}


def benchmark_label(row: Mapping[str, Any], cfg: Mapping[str, Any] | None = None) -> str | None:
    """`phonebook`, `long-context ratio=r100 source=own data_seed=0`, `records sha256=0123456789ab`."""
    bench = ((cfg if cfg is not None else config_of(row)) or {}).get("benchmark") or {}
    name = bench.get("name", row.get("benchmark"))
    default_rule = list(BenchmarkConfig.OPTIONS["linear-rule"]["rule"])
    opts = [f"{k}={str(v)[:12] if k == 'sha256' else v}" for k, v in bench.items()
            if k not in ("name", "path") and v is not None and not (k == "rule" and list(v) == default_rule)]
    return " ".join([str(name), *opts]) if name is not None else None


def objective_label(row: Mapping[str, Any], cfg: Mapping[str, Any] | None = None) -> str | None:
    """The objective's name, plus its options that differ from the defaults (`memft-ot tau=0.6`)."""
    obj = ((cfg if cfg is not None else config_of(row)) or {}).get("objective") or {}
    if not obj:
        return row.get("objective")
    try:                                   # as the cell key sees it: the curriculum's settings only where it reads them
        cfg_obj = from_dict(ObjectiveConfig, obj, "objective")
        obj, default = cfg_obj.key_dict(), ObjectiveConfig(name=cfg_obj.name).key_dict()
    except ConfigError:
        default = to_dict(ObjectiveConfig())
    return " ".join([str(obj.get("name")), *(f"{k}={v}" for k, v in obj.items()
                                              if k != "name" and k in default and v != default[k])])


def final_cell_probs(row: Mapping[str, Any], token_probs: TokenProbRows) -> dict[int, np.ndarray]:
    """{record: final p_t} when the cell's last stored p_t is from its final step, else {}."""
    step, final = final_probs(token_probs)
    steps = row.get("steps") if row.get("steps") is not None else (row.get("metrics") or {}).get("steps")
    return {} if not final or (steps is not None and step != steps) else final


def record_table(rows: Iterable[Mapping[str, Any]],
                 token_probs: Mapping[str, TokenProbRows] | None = None) -> list[dict[str, Any]]:
    """One row per record of every cell with per-record verdicts (`RECORD_FIELDS`), in store order.

    Args:
        rows: store rows (`Store.load_cells`).
        token_probs: {cell key: `Store.token_probs(key)`}; where a cell's final p_t is stored, its
            records get `stubborn_positions` (every answer position with p_t ≤ 0.5), else None.
    """
    out = []
    for row in rows:
        cell = cell_columns(row)
        final = final_cell_probs(row, (token_probs or {}).get(row["key"]) or [])
        for r in record_rows(row):
            p = final.get(r["record"])
            measured = p is not None and len(p) == r["n_value"] + r["n_terminator"]
            out.append({**cell, **{k: r.get(k) for k in RECORD_FIELDS if k in r}, "record": r["record"],
                        "inclusion": inclusion(r),
                        "stubborn_positions": np.flatnonzero(stubborn(p)).tolist() if measured else None})
    return out


# ---------------------------------------------------------------- the phase table


def phase_points(row: Mapping[str, Any], token_probs: TokenProbRows) -> list[dict[str, Any]]:
    """Every answer position of a cell's records: final p_t and its free-run status (module doc).

    Returns:
        One dict per position: key, record, position, p, terminator (a terminator position),
        status ("right", "wrong", "off-path" or "not-decoded"). [] when the cell lacks per-record
        verdicts with greedy recall, or its last stored p_t is not from the final step.
    """
    recs = record_rows(row)
    final = final_cell_probs(row, token_probs) if recs else {}
    out = []
    for r in recs:
        p = final.get(r["record"])
        if p is None or r.get("em") is None or len(p) != r["n_value"] + r["n_terminator"]:
            continue
        ff = r.get("first_failure")
        for t, pt in enumerate(p.tolist()):
            if ff is None:
                status = "right" if t <= r["n_value"] else "not-decoded"
            else:
                status = "right" if t < ff else "wrong" if t == ff else "off-path"
            out.append({"key": row["key"], "record": r["record"], "position": t, "p": pt,
                        "terminator": t >= r["n_value"], "status": status})
    return out


def phase_summary(points: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Counts of on-path positions on each side of p_t = 0.5 (right/wrong), and those left out.

    `violations` = wrong positions with p_t > 0.5: 0 unless numerics differ between the passes.
    """
    c = {"positions": 0, "on_path": 0, "right_above": 0, "right_below": 0, "wrong_below": 0, "violations": 0,
         "off_path": 0, "not_decoded": 0}
    for x in points:
        c["positions"] += 1
        if x["status"] in ("off-path", "not-decoded"):
            c[x["status"].replace("-", "_")] += 1
            continue
        c["on_path"] += 1
        above = not stubborn(x["p"])
        if x["status"] == "right":
            c["right_above" if above else "right_below"] += 1
        else:
            c["violations" if above else "wrong_below"] += 1
    return c


# ---------------------------------------------------------------- per group


@dataclass
class PhaseGroup:
    """One group of cells (equal in the `by` columns): ρ with its interval and null, and the phase table."""

    group: dict[str, Any]
    label: str
    cells: int
    cells_without_records: int
    """Cells stored without per-record verdicts (older memlaw): not counted."""
    cells_with_probs: int
    """Cells whose final p_t is stored: the phase table counts their positions."""
    correlation: Correlation
    phase: dict[str, int] | None
    """`phase_summary` of the group's cells with final p_t; None when no cell stored it."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _by(by: Sequence[str]) -> tuple[str, ...]:
    bad = [k for k in by if k not in GROUP_KEYS]
    if bad or len(set(by)) != len(by):
        raise ConfigError(f"group by: {', '.join(bad) or 'a repeated column'} is not one of {', '.join(GROUP_KEYS)} "
                          "(each at most once)")
    return tuple(by)


def _label(by: Sequence[str], values: Sequence[Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in zip(by, values)) or "all cells"


def study(rows: Iterable[Mapping[str, Any]], token_probs: Mapping[str, TokenProbRows] | None = None, *,
          by: Sequence[str] = DEFAULT_BY, options: RhoOptions = RhoOptions()) -> list[PhaseGroup]:
    """The phase transition per group of store rows (groups in first-seen order).

    Args:
        rows: finished store rows.
        token_probs: {cell key: `Store.token_probs(key)`}: the phase table and measured stubborn sets.
        by: columns of `GROUP_KEYS` that define a group (() pools every cell).
        options: bootstrap and null draws.
    """
    by, token_probs = _by(by), token_probs or {}
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        cols = cell_columns(row)
        groups.setdefault(tuple(cols[k] for k in by), []).append(row)
    out = []
    for values, cells in groups.items():
        label = _label(by, values)
        points = [p for r in cells for p in phase_points(r, token_probs.get(r["key"]) or [])]
        out.append(PhaseGroup(dict(zip(by, values)), label, len(cells), sum(not record_rows(r) for r in cells),
                              len({p["key"] for p in points}),
                              correlate(record_table(cells, token_probs), options, stream=label),
                              phase_summary(points) if points else None))
    return out


def study_records(records: Iterable[Mapping[str, Any]], *, by: Sequence[str] = DEFAULT_BY,
                  options: RhoOptions = RhoOptions()) -> list[PhaseGroup]:
    """ρ, interval and null per group from `record_table` rows alone (e.g. read back from CSV): no phase table."""
    by = _by(by)
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault(tuple(r.get(k) for k in by), []).append(r)
    return [PhaseGroup(dict(zip(by, values)), _label(by, values), len({r["key"] for r in recs}), 0, 0,
                       correlate(recs, options, stream=_label(by, values)), None)
            for values, recs in groups.items()]


# ---------------------------------------------------------------- the per-record rows as CSV

_INTS = ("rank", "length", "seed", "record", "n_value", "n_terminator", "stubborn", "earliest_stubborn",
         "first_failure")
_BOOLS = {"true": True, "false": False, "": None}


def record_csv(records: Iterable[Mapping[str, Any]]) -> str:
    """`record_table` rows as CSV text: `RECORD_FIELDS` columns, None empty, booleans true/false, stubborn
    positions as a JSON list ("" where not measured). Text cells never start a spreadsheet formula."""
    import csv
    import io

    from memlaw.fileio import csv_cell

    def cell(v: Any) -> Any:
        if v is None:
            return ""
        if isinstance(v, bool):
            return "true" if v else "false"
        return json.dumps(v, separators=(",", ":")) if isinstance(v, list) else csv_cell(v)

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(RECORD_FIELDS)
    w.writerows([cell(r.get(k)) for k in RECORD_FIELDS] for r in records)
    return buf.getvalue()


def read_record_csv(path) -> list[dict[str, Any]]:
    """Rows written by `record_csv` (`memlaw runs records`), typed back.

    Raises:
        ConfigError: naming file:line and the cause (a missing column, a value of the wrong type).
    """
    from memlaw.fileio import csv_text, read_csv

    reader = read_csv(path, kind="`memlaw runs records`", required=RECORD_FIELDS, error=ConfigError)
    out = []
    for raw in reader:
        try:
            row: dict[str, Any] = {k: raw[k] or None for k in RECORD_FIELDS}
            for k in ("key", "model", "benchmark", "objective", "kind"):    # undo `csv_cell`'s apostrophe
                if row[k]:
                    row[k] = csv_text(row[k])
            for k in _INTS:
                row[k] = None if row[k] is None else int(row[k])
            for k in ("em", "certified"):
                row[k] = _BOOLS[raw[k]]
            row["min_p"] = None if row["min_p"] is None else float(row["min_p"])
            pos = json.loads(raw["stubborn_positions"]) if raw["stubborn_positions"] else None
            if pos is not None and not (isinstance(pos, list) and all(type(t) is int for t in pos)):
                raise ValueError("stubborn_positions is not a list of integers")
            row["stubborn_positions"] = pos
            if row["inclusion"] not in INCLUSIONS:
                raise ValueError(f"inclusion must be one of {', '.join(INCLUSIONS)}")
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{path}:{reader.line_num}: {e}") from None
        out.append(row)
    return out


__all__ = ["RECORD_FIELDS", "GROUP_KEYS", "DEFAULT_BY", "cell_columns", "benchmark_label", "objective_label",
           "final_cell_probs", "record_table", "phase_points", "phase_summary", "PhaseGroup", "study", "study_records",
           "record_csv", "read_record_csv"]
