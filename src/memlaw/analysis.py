"""Token-level analysis of stored cells (DESIGN §8). Pure: store rows and p_t arrays in, rows out.

Inputs are what the store gives back: `Store.load_cells()` rows (flat columns plus the parsed
`metrics`, whose `history` has the stubborn count at every check and whose `records` has every
record's verdict, see `memlaw.sweep.cell.record_columns`) and `Store.token_probs(key)`, a list of
(step, record, p_t) with p_t over the record's answer tokens (value, then terminator).

**Stubborn token**: p_t ≤ 0.5. **Earliest stubborn**: its first position. **First failure**: the first
answer position where greedy decoding differs from the target.

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
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from memlaw.certificate import certified, stubborn
from memlaw.experiments import experiment_of

LN2 = math.log(2.0)
PAPER_RHO, PAPER_N = 0.908, 155
"""The paper's Spearman ρ(earliest stubborn, first failure) and its number of failed records."""

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


# ---------------------------------------------------------------- earliest stubborn vs first failure


@dataclass
class StubbornFailure:
    """Spearman ρ between earliest stubborn position and first free-run failure, over failed records."""

    points: list[dict[str, Any]] = field(default_factory=list)
    """One per failed record with a stubborn token: key, rank, length, record, earliest_stubborn, first_failure."""
    rho: float | None = None
    p_value: float | None = None
    n: int = 0
    """Records in ρ: those whose greedy output failed and that have a stubborn token."""
    n_failed: int = 0
    """Failed records (EM false or a first failure), with or without a stubborn token."""
    n_no_stubborn: int = 0
    """Failed records without a stubborn token: certificate violations (numerics), left out of ρ."""
    exact: int = 0
    """Points where the first failure is the earliest stubborn position."""
    cells_without_records: int = 0
    """Cells stored without per-record verdicts (older memlaw or no greedy recall): not counted."""
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["paper"] = {"rho": PAPER_RHO, "n": PAPER_N}
        return d


def stubborn_vs_failure(rows: Iterable[Mapping[str, Any]]) -> StubbornFailure:
    """Earliest stubborn vs first failure over every failed record of `rows` (store rows), with Spearman ρ.

    Only records whose greedy output failed count (a recalled record has no first failure).
    """
    from scipy.stats import spearmanr

    res = StubbornFailure()
    rows = list(rows)
    for row in rows:
        recs = record_rows(row)
        if not recs or all(r.get("em") is None for r in recs):
            res.cells_without_records += 1
            continue
        for r in recs:
            if r.get("first_failure") is None and r.get("em") is not False:
                continue
            res.n_failed += 1
            if r.get("earliest_stubborn") is None or r.get("first_failure") is None:
                res.n_no_stubborn += 1
                continue
            res.points.append({"key": row["key"], "rank": row.get("rank"), "length": row.get("length"),
                               "record": r["record"], "earliest_stubborn": int(r["earliest_stubborn"]),
                               "first_failure": int(r["first_failure"])})
    res.n = len(res.points)
    res.exact = sum(p["earliest_stubborn"] == p["first_failure"] for p in res.points)
    x = np.array([p["earliest_stubborn"] for p in res.points], dtype=float)
    y = np.array([p["first_failure"] for p in res.points], dtype=float)
    if res.n == 0 and res.n_failed == 0 and res.cells_without_records and not any(record_rows(r) for r in rows):
        res.note = "no cell carries per-record verdicts (metrics.records): nothing to correlate"
    elif res.n < 3:
        res.note = f"ρ needs at least 3 failed records, got {res.n}"
    elif np.ptp(x) == 0 or np.ptp(y) == 0:
        res.note = "ρ is undefined: one of the two positions is the same for every failed record"
    else:
        stat = spearmanr(x, y)
        res.rho, res.p_value = float(stat.statistic), float(stat.pvalue)
    return res


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


# ---------------------------------------------------------------- the phase picture


def phase_points(row: Mapping[str, Any], token_probs: TokenProbRows) -> list[dict[str, Any]]:
    """Every answer position of a cell's records: final p_t and its free-run status (module doc).

    Returns:
        One dict per position: key, record, position, p, terminator (a terminator position),
        status ("right", "wrong", "off-path" or "not-decoded"). [] when the cell lacks per-record
        verdicts with greedy recall, or its last stored p_t is not from the final step.
    """
    recs = record_rows(row)
    step, final = final_probs(token_probs)
    steps = row.get("steps") if row.get("steps") is not None else (row.get("metrics") or {}).get("steps")
    if not recs or not final or (steps is not None and step != steps):
        return []
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
        if x["status"] == "off-path":
            c["off_path"] += 1
            continue
        if x["status"] == "not-decoded":
            c["not_decoded"] += 1
            continue
        c["on_path"] += 1
        above = not stubborn(x["p"])
        if x["status"] == "right":
            c["right_above" if above else "right_below"] += 1
        else:
            c["violations" if above else "wrong_below"] += 1
    return c


# ---------------------------------------------------------------- tables


CELL_COLUMNS = ("key", "model", "kind", "objective", "rank", "length", "seed", "n_records", "steps", "L_base",
                "L_final", "delta_loss", "em_rate", "certified_rate", "tf_acc", "free_acc", "stubborn",
                "bits_per_param", "time_to_certified", "wall_s")


def cell_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The per-cell table: flat columns plus a few metrics, sorted by group, length, rank, seed."""
    out = []
    for r in rows:
        m = r.get("metrics") or {}
        out.append({c: r.get(c, m.get(c)) for c in CELL_COLUMNS})
    return sorted(out, key=lambda r: (tuple(str(r.get(k)) for k in ("model", "kind", "objective")), r["length"] or 0,
                                      r["rank"] or 0, r["seed"] or 0))


__all__ = ["record_rows", "final_probs", "probability_grid", "stubborn_over_training", "certified_since",
           "stubborn_curves", "StubbornFailure", "stubborn_vs_failure", "Misalignment", "misalignment",
           "phase_points", "phase_summary", "cell_rows", "CELL_COLUMNS", "LN2", "PAPER_RHO",
           "PAPER_N"]
