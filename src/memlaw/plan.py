"""Plan an adapter from the stored sweep results: which rank do these records need? (DESIGN §7.)

The store gives, for one model and adapter kind, measured (rank, ℓ, ΔL, EM) cells. From them:

- the capacity frontier ℓ_max = K · r^γ (largest ℓ with 100% EM per rank) answers the rank needed:
  the smallest integer r with K · r^γ ≥ ℓ;
- the law ΔL = C · r^α · ℓ^(−β) + b predicts ΔL at that rank; the ΔL needed is the records' own
  L_base minus the L_final that fully recalled cells reached, and their difference is the margin.

Anything outside the measured ranks or lengths is an extrapolation and is flagged as one.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from memlaw.errors import ConfigError, FitWarning
from memlaw.law import Frontier, MemoryLaw, fit_table, unsaturated

GROUP = ("model", "kind", "objective", "benchmark")
"""Rows of one law share these; a fit over several groups would mix different laws."""


def law_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Store rows -> law rows {rank, length, delta_loss, em, L_final}, after checking they form one group.

    Raises:
        ConfigError: no usable row, or rows of several (model, kind, objective, benchmark) groups
            (the message lists them and how to pick one with --where).
    """
    usable = [r for r in rows if r.get("status", "done") == "done" and r.get("delta_loss") is not None]
    if not usable:
        raise ConfigError("no finished cells with a ΔL match; check the store and the --where filter")
    groups = Counter(tuple(r.get(k) for k in GROUP) for r in usable)
    if len(groups) > 1:
        listed = "; ".join(f"{', '.join(f'{k}={v}' for k, v in zip(GROUP, g))} ({n} cells)" for g, n in groups.items())
        raise ConfigError(f"the cells mix {len(groups)} groups, each its own law: {listed}; "
                          "pick one with --where, e.g. --where model=...,kind=...")
    return [{"rank": r["rank"], "length": r["length"], "delta_loss": r["delta_loss"], "em": r.get("em_rate"),
             "L_final": r.get("L_final")} for r in usable]


def fit_rows(rows: list[dict[str, Any]], *, relative: bool = False,
             saturated_below: float | None = None, fix_b: bool = False) -> dict[str, Any]:
    """`law.fit_table` on law rows, plus the group's ranges; FitWarnings are caught into `warnings`."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FitWarning)
        out = fit_table(rows, relative=relative, saturated_below=saturated_below, fix_b=fix_b)
    out["warnings"] = [str(w.message) for w in caught if issubclass(w.category, FitWarning)]
    out["ranks"] = sorted({float(r["rank"]) for r in rows})
    out["lengths"] = sorted({float(r["length"]) for r in rows})
    return out


@dataclass
class Plan:
    """The answer of `plan`: the rank to use and what the law says about it."""

    length: int                          # ℓ of the records (value tokens)
    n_records: int
    rank: int | None                     # recommended rank (None: neither frontier nor law gives one)
    rank_source: str                     # "frontier", "law" or "none"
    frontier_rank: float | None          # continuous rank the frontier needs for ℓ
    law_rank: float | None               # continuous rank the law needs for the ΔL needed
    measured_rank: int | None            # smallest measured rank that fully recalled a length >= ℓ
    predicted_delta_loss: float | None   # law at (rank, ℓ)
    needed_delta_loss: float | None      # L_base(records) − L_final at full recall
    margin: float | None                 # predicted − needed (nats; > 0: headroom)
    capacity_margin: float | None        # frontier ℓ_max(rank) / ℓ − 1 (> 0: headroom)
    L_base: float | None
    extrapolating: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    law: dict[str, Any] = field(default_factory=dict)
    frontier: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan(length: int, rows: list[dict[str, Any]], *, n_records: int = 0, L_base: float | None = None,
         fix_b: bool = False, saturated_below: float | None = None) -> Plan:
    """Which rank holds `length` value tokens, from the law rows of one group. Pure.

    Args:
        length: ℓ of the records to write.
        rows: law rows of one group (`law_rows`).
        n_records: for the report only.
        L_base: the base model's mean value-token loss on the records (None: no ΔL target, no margin).
    """
    if length < 1:
        raise ConfigError(f"length must be >= 1, got {length}")
    # Optionally as `memlaw fit --fix-b --saturated-below`: fully stored memories sit on the
    # ΔL = L_base ceiling, and a free b lets small, nearly log-linear grids diverge.
    fit_on = rows
    if saturated_below is not None:
        fit_on = unsaturated(rows, saturated_below) or rows
    r = np.array([float(x["rank"]) for x in fit_on])
    ls = np.array([float(x["length"]) for x in fit_on])
    y = np.array([float(x["delta_loss"]) for x in fit_on])
    notes: list[str] = []
    if len(fit_on) < len(rows):
        notes.append(f"law fitted on {len(fit_on)} non-saturated cells (L_final >= {saturated_below})")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FitWarning)
        law = MemoryLaw(fix_b=fix_b).fit(r, ls, y)
    notes += [str(w.message) for w in caught if issubclass(w.category, FitWarning)]

    frontier, frontier_rank, measured = None, None, None
    with_em = [x for x in rows if x.get("em") is not None]
    if with_em:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", FitWarning)
                frontier = Frontier().fit([x["rank"] for x in with_em], [x["length"] for x in with_em],
                                          [x["em"] for x in with_em])
            notes += [f"frontier: {w.message}" for w in caught if issubclass(w.category, FitWarning)]
            frontier_rank = frontier.rank_for(length)
        except ConfigError as e:
            notes.append(f"no frontier: {e}")
        full = sorted(int(x["rank"]) for x in with_em if x["em"] >= 1.0 and x["length"] >= length)
        measured = full[0] if full else None
    else:
        notes.append("no frontier: the cells have no EM")

    needed, law_rank = None, None
    if L_base is not None:
        finals = [float(x["L_final"]) for x in rows if x.get("em") == 1.0 and x.get("L_final") is not None]
        L_final_full = statistics.median(finals) if finals else 0.0
        needed = L_base - L_final_full
        try:
            law_rank = law.rank_for(needed, length)
        except ConfigError as e:
            notes.append(f"law: {e}")

    rank, source = None, "none"
    if frontier_rank is not None and math.isfinite(frontier_rank):
        rank, source = max(1, math.ceil(frontier_rank - 1e-9)), "frontier"
    elif law_rank is not None and math.isfinite(law_rank):
        rank, source = max(1, math.ceil(law_rank - 1e-9)), "law"
    else:
        notes.append("neither the frontier nor the law gives a finite rank")

    predicted = float(law.predict(rank, length)) if rank is not None else None
    margin = predicted - needed if predicted is not None and needed is not None else None
    capacity = float(frontier.max_length(rank)) / length - 1.0 if frontier is not None and rank is not None else None
    return Plan(length=length, n_records=n_records, rank=rank, rank_source=source, frontier_rank=frontier_rank,
                law_rank=law_rank, measured_rank=measured, predicted_delta_loss=predicted, needed_delta_loss=needed,
                margin=margin, capacity_margin=capacity, L_base=L_base,
                extrapolating=_outside(length, rank, ls, r), notes=notes, law=law.summary(),
                frontier=frontier.summary() if frontier is not None else None)


def _outside(length: int, rank: int | None, lengths: np.ndarray, ranks: np.ndarray) -> list[str]:
    out = []
    lo, hi = lengths.min(), lengths.max()
    if not lo <= length <= hi:
        out.append(f"ℓ = {length} is outside the fitted lengths [{lo:g}, {hi:g}]")
    if rank is not None and not ranks.min() <= rank <= ranks.max():
        out.append(f"rank {rank} is outside the fitted ranks [{ranks.min():g}, {ranks.max():g}]")
    return out


def prompt_of(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The prompt spec most of the group's cells were written with (so L_base is measured the same way)."""
    prompts = Counter(_freeze(r["config"]["prompt"]) for r in rows if isinstance(r.get("config"), dict))
    return dict(prompts.most_common(1)[0][0]) if prompts else None


def _freeze(d: dict) -> tuple:
    return tuple(sorted(d.items()))


__all__ = ["plan", "Plan", "law_rows", "fit_rows", "prompt_of", "GROUP"]
