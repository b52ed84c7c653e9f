"""Token-level analysis of stored cells (DESIGN §8). Pure: store rows and p_t arrays in, rows out.

Inputs are what the store gives back: `Store.load_cells()` rows (flat columns plus the parsed
`metrics`, whose `history` has the stubborn count at every check and whose `records` has every
record's verdict, see `memlaw.sweep.cell.record_columns`) and `Store.token_probs(key)`, a list of
(step, record, p_t) with p_t over the record's answer tokens (value, then terminator).

**Stubborn token**: p_t ≤ 0.5. **Earliest stubborn**: its first position. The stubborn-token phase
transition (ρ of earliest stubborn and first failure, its null, the phase table) is `memlaw.phase`
and `memlaw.rho`.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from memlaw.bits import per_param_text
from memlaw.certificate import certified, stubborn
from memlaw.experiments import experiment_of

LN2 = math.log(2.0)

TokenProbRows = Sequence[tuple[int, int, np.ndarray]]


# ---------------------------------------------------------------- per-record verdicts and p_t


def record_rows(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One dict per record of a stored cell (`record` index plus the verdict fields); [] if not stored."""
    cols = (row.get("metrics") or {}).get("records")
    if not isinstance(cols, Mapping) or not cols:
        return []
    n = len(next(iter(cols.values())))
    return [{"record": i, **{name: values[i] for name, values in cols.items()}} for i in range(n)]


def final_probs(token_probs: TokenProbRows) -> tuple[int | None, dict[int, np.ndarray]]:
    """(last stored step, {record: p_t at that step}); (None, {}) when nothing was stored."""
    if not token_probs:
        return None, {}
    last = max(step for step, _, _ in token_probs)
    return last, {r: np.asarray(p, dtype=np.float32) for step, r, p in token_probs if step == last}


def probability_grid(token_probs: TokenProbRows, record: int) -> tuple[np.ndarray, np.ndarray]:
    """p_t of one record over training: (steps, shape (S,); grid, shape (n_answer, S))."""
    by_step = sorted((step, p) for step, r, p in token_probs if r == record)
    if not by_step:
        return np.zeros(0, dtype=int), np.zeros((0, 0), dtype=np.float32)
    steps = np.array([s for s, _ in by_step])
    return steps, np.stack([np.asarray(p, dtype=np.float32) for _, p in by_step], axis=1)


def stubborn_over_training(token_probs: TokenProbRows, margin: float = 0.0) -> list[dict[str, Any]]:
    """One row per (step, record): stubborn tokens (p_t ≤ 0.5), earliest stubborn, min p_t, certified."""
    out = []
    for step, record, p in sorted(token_probs, key=lambda x: (x[0], x[1])):
        p = np.asarray(p, dtype=np.float32)
        stub = np.flatnonzero(stubborn(p))
        out.append({"step": int(step), "record": int(record), "stubborn": int(stub.size),
                    "earliest_stubborn": int(stub[0]) if stub.size else None,
                    "min_p": float(p.min()) if p.size else None, "certified": certified(p, margin)})
    return out


def certified_since(over_training: Iterable[Mapping[str, Any]]) -> dict[int, int | None]:
    """Per record, the first checked step from which it stays certified to the end (None: not at the end)."""
    by_record: dict[int, list[tuple[int, bool]]] = defaultdict(list)
    for r in over_training:
        by_record[r["record"]].append((r["step"], r["certified"]))
    out: dict[int, int | None] = {}
    for record, seq in by_record.items():
        seq.sort()
        since = None
        for step, ok in seq:
            since = (since if since is not None else step) if ok else None
        out[record] = since
    return out


def stubborn_curves(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Stubborn tokens and certified records at every check, one row per (cell, check), from `history`."""
    out = []
    for row in rows:
        m = row.get("metrics") or {}
        for h in m.get("history") or []:
            out.append({"key": row["key"], "rank": row.get("rank"), "length": row.get("length"),
                        "n_records": m.get("n_records"), "step": h.get("step"), "stubborn": h.get("stubborn"),
                        "certified": h.get("certified"), "loss": h.get("loss")})
    return out


# ---------------------------------------------------------------- loss vs recall


@dataclass
class Misalignment:
    """Cells whose mean answer loss is low while exact recall fails."""

    rows: list[dict[str, Any]]
    threshold: float
    """L_final below this counts as low (default ln 2: geometric-mean p_t above 0.5)."""
    n_low: int
    """Cells with L_final below the threshold."""
    n_misaligned: int
    """Of those, cells with EM < 100%."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def misalignment(rows: Iterable[Mapping[str, Any]], threshold: float = LN2) -> Misalignment:
    """Loss-vs-recall misalignment: cells with L_final < `threshold` yet EM < 100%, lowest loss first.

    Each row also says whether its loss is below that of a fully recalled cell of its experiment
    (`below_recalled`: the loss ranks it above a cell that recalls everything) and, with per-record
    verdicts, how many of its failed records have their own mean loss below the threshold.
    """
    rows = [r for r in rows if r.get("L_final") is not None and r.get("em_rate") is not None]
    recalled_max: dict[tuple, float] = {}
    for r in rows:
        if r["em_rate"] >= 1.0:
            g = _experiment(r)
            recalled_max[g] = max(recalled_max.get(g, -math.inf), r["L_final"])
    low = [r for r in rows if r["L_final"] < threshold]
    out = []
    for r in sorted(low, key=lambda r: r["L_final"]):
        if r["em_rate"] >= 1.0:
            continue
        recs = record_rows(r)
        failed = [x for x in recs if x.get("em") is False]
        ceiling = recalled_max.get(_experiment(r))
        m = r.get("metrics") or {}
        out.append({
            "key": r["key"], "model": r.get("model"), "rank": r.get("rank"), "length": r.get("length"),
            "L_final": r["L_final"], "delta_loss": r.get("delta_loss"), "em_rate": r["em_rate"],
            "certified_rate": r.get("certified_rate"), "stubborn": m.get("stubborn"),
            "n_records": m.get("n_records"),
            "failed_records": len(failed) if recs else None,
            "failed_low_loss": sum(x.get("loss_final") is not None and x["loss_final"] < threshold for x in failed)
            if recs else None,
            "recalled_L_final_max": ceiling,
            "below_recalled": ceiling is not None and r["L_final"] < ceiling,
        })
    return Misalignment(out, threshold, len(low), len(out))


def _experiment(row: Mapping[str, Any]) -> str:
    return json.dumps(experiment_of(row), sort_keys=True)


# ---------------------------------------------------------------- tables


CELL_COLUMNS = ("key", "model", "kind", "objective", "rank", "length", "seed", "n_records", "steps", "L_base",
                "L_final", "delta_loss", "em_rate", "certified_rate", "tf_acc", "free_acc", "stubborn",
                "bits_per_param", "time_to_certified", "wall_s")


def cell_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The per-cell table: flat columns plus a few metrics, sorted by group, length, rank, seed.

    `bits_per_param` is text: exact ("0.0123") or an upper bound ("≤ 0.0456"), never one read as the other."""
    out = []
    for r in rows:
        m = r.get("metrics") or {}
        out.append({**{c: r.get(c, m.get(c)) for c in CELL_COLUMNS}, "bits_per_param": per_param_text(r)})
    return sorted(out, key=lambda r: (tuple(str(r.get(k)) for k in ("model", "kind", "objective")), r["length"] or 0,
                                      r["rank"] or 0, r["seed"] or 0))


__all__ = ["record_rows", "final_probs", "probability_grid", "stubborn_over_training", "certified_since",
           "stubborn_curves", "Misalignment", "misalignment", "cell_rows", "CELL_COLUMNS", "LN2"]
