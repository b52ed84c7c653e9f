"""One experiment's law table fitted: every form on the same cells, held out by rank and by length,
with the frontier, the cell and seed counts, the cells left out and why, and the spread across seeds.

`fit_table` is what `memlaw fit` prints per experiment. Rows in, a JSON-ready dict out; no I/O.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from memlaw.errors import ConfigError
from memlaw.law import estimation as est
from memlaw.law.bounded import SATURATED
from memlaw.law.forms import FORMS, check_form, make_law
from memlaw.law.frontier import Frontier
from memlaw.law.held_out import SPLITS, held_out_mape
from memlaw.law_names import BOTH


def unsaturated(rows: Sequence[Mapping[str, Any]], below: float) -> list[Mapping[str, Any]]:
    """The rows whose L_final is at least `below` (or unknown): the memories not stored completely."""
    return [w for w in rows if w.get("L_final") is None or w["L_final"] >= below]


def seed_spread(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """How much ΔL varies between cells at the same (rank, length): seeds, or any other replicates.

    Rows with a `group` (a pooled fit: the ratio, say) are replicates only within their group.

    Returns:
        None when no (rank, length) holds two cells; else {"pairs": how many (rank, length) do,
        "cells": the cells in them, "sd_median", "sd_max" (nats, sample sd of ΔL), "sd_max_at":
        [rank, length], "rel_sd_median" (% of the mean ΔL), "replicate_mape" (%: each of those cells
        against its (rank, length) mean), "r2_means" (R² of the (rank, length) means on those cells:
        the most any law of rank and length alone, such as the paper's form, can reach on them; a law
        that also reads each cell's L_base can reach more)}.
    """
    by: dict[tuple[Any, float, float], list[float]] = defaultdict(list)
    for w in rows:
        by[(w.get("group"), float(w["rank"]), float(w["length"]))].append(float(w["delta_loss"]))
    reps = {k: v for k, v in by.items() if len(v) >= 2}
    if not reps:
        return None
    mean = {k: statistics.fmean(v) for k, v in reps.items()}
    sd = {k: statistics.stdev(v) for k, v in reps.items()}
    rel = [sd[k] / abs(mean[k]) * 100 for k in reps if mean[k] != 0]
    errors = [abs(y - mean[k]) / abs(y) * 100 for k, v in reps.items() for y in v if y != 0]
    ys = [y for v in reps.values() for y in v]
    within = sum((y - mean[k]) ** 2 for k, v in reps.items() for y in v)
    total = sum((y - statistics.fmean(ys)) ** 2 for y in ys)
    worst = max(sd, key=sd.get)
    return {"pairs": len(reps), "cells": len(ys), "sd_median": statistics.median(sd.values()),
            "sd_max": sd[worst], "sd_max_at": list(worst[1:]), "rel_sd_median": statistics.median(rel) if rel else None,
            "replicate_mape": statistics.fmean(errors) if errors else None,
            "r2_means": 1 - within / total if total > 0 else None}


def _cell(w: Mapping[str, Any], reason: str) -> dict[str, Any]:
    return {"rank": w["rank"], "length": w["length"], "seed": w.get("seed"), "reason": reason}


def _has_l_base(w: Mapping[str, Any]) -> bool:
    v = w.get("L_base")
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def _columns(rows: Sequence[Mapping[str, Any]], with_l_base: bool) -> tuple[np.ndarray, ...]:
    extra = {"l_base": [w["L_base"] for w in rows]} if with_l_base else {}
    return est.check_data([w["rank"] for w in rows], [w["length"] for w in rows],
                          delta_loss=[w["delta_loss"] for w in rows], **extra)


def cell_errors(rows: Sequence[Mapping[str, Any]], predicted: Iterable[float],
                index: Iterable[int] | None = None) -> list[dict[str, Any]]:
    """Per cell: rank, length, seed, measured and predicted ΔL, and the absolute % error ("ape", None at ΔL = 0).

    `index`: the positions in `rows` that `predicted` is for (all of them, in order, when None).
    """
    picked = [rows[i] for i in index] if index is not None else rows
    out = []
    for w, p in zip(picked, predicted):
        y = float(w["delta_loss"])
        out.append({"rank": w["rank"], "length": w["length"], "seed": w.get("seed"), "delta_loss": y,
                    "predicted": est.finite_or_none(float(p)),
                    "ape": est.finite_or_none(abs(p - y) / abs(y) * 100) if y != 0 else None})
    return out


def _fit_form(form: str, cols: tuple[np.ndarray, ...], rows: Sequence[Mapping[str, Any]], *, relative: bool,
              fix_b: bool, notes: list[str]) -> dict[str, Any]:
    """One form on the table's cells (`rows`, as `cols`): the fit, its error per cell, and held out by rank
    and by length (with the error per held-out cell)."""
    r, length, y, *rest = cols
    L = rest[0] if rest else None
    model = make_law(form, relative=relative, fix_b=fix_b).fit(r, length, y, L)
    out: dict[str, Any] = {"formula": model.formula, "law": model.summary(), "held_out": {},
                           "cells": cell_errors(rows, model.predict(r, length, L))}
    for split in SPLITS:
        if np.unique(r if split == "rank" else length).size >= 2:
            ho = held_out_mape(r, length, y, split=split, relative=relative, fix_b=fix_b, form=form, l_base=L)
            ho["cells"] = cell_errors(rows, ho.pop("predicted"), ho.pop("test_index"))
            out["held_out"][split] = ho
        else:
            out["held_out"][split] = None
            note = f"held_out: needs >= 2 distinct {split}s"
            if note not in notes:
                notes.append(note)
    # The form's held-out error: the mean of its MAPE by rank and by length (those that exist).
    scores = [h["mape"] for h in out["held_out"].values() if h is not None and h["mape"] is not None]
    out["held_out_mape"] = statistics.fmean(scores) if scores else None
    return out


def best_form(forms: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The form with the lowest held-out MAPE (None when no form has one; the first listed on a tie)."""
    scored = [(f["held_out_mape"], i, name) for i, (name, f) in enumerate(forms.items())
              if f.get("held_out_mape") is not None and f["law"]["converged"]]
    return min(scored)[2] if scored else None


def fit_table(rows: Iterable[Mapping[str, Any]], *, law: str = "paper", relative: bool = False,
              saturated_below: float | None = None, fix_b: bool = False) -> dict[str, Any]:
    """Fit the law (one form or every form, on the same cells), the held-out checks and the frontier.

    Args:
        rows: Mappings with keys rank, length, delta_loss and optionally em, L_final, L_base and seed.
        law: "paper", "bounded" or "both". The bounded form needs L_base per cell: cells without it
            are left out of every form (so the forms share their cells); with "both" and no cell
            having it, only the paper's form is fitted (a note says why).
        relative: Passed to every estimator.
        saturated_below: leave cells with L_final below this (nats) out of the law and held-out
            fits. ΔL = L_base − L_final cannot exceed L_base, so a memory stored completely sits on
            that ceiling whatever its rank; the paper's law describes the non-saturated regime. The
            bounded form fits them. The frontier still uses every cell.
        fix_b: hold b = 0 in the paper's form.

    Returns:
        {"law": the first form's `summary()` (the paper's unless law="bounded"), "held_out": its
        held-out fit by rank or None, "frontier": Frontier.summary() or None, "forms": {form:
        {"formula", "law", "cells": `cell_errors` of the fit, "held_out": {"rank", "length"} (each with
        "cells": the held-out cells' errors), "held_out_mape"}}, "best": the form with
        the lower held-out MAPE, "cells": {"n", "ranks", "lengths", "seeds", "saturated"},
        "seed_spread": `seed_spread` or None, "excluded": [{"rank", "length", "seed", "reason"}],
        "notes": why a part is missing}.

    Raises:
        ConfigError: a row without rank, length or delta_loss; bad data; law="bounded" and no cell
            has an L_base.
    """
    if law != BOTH:
        check_form(law)
    rows = list(rows)
    for i, row in enumerate(rows):
        missing = [k for k in ("rank", "length", "delta_loss") if row.get(k) is None]
        if missing:
            raise ConfigError(f"row {i}: missing key(s) {', '.join(missing)}")
    forms = list(FORMS) if law == BOTH else [law]
    notes: list[str] = []
    excluded: list[dict[str, Any]] = []
    fitted = rows
    if saturated_below is not None:
        fitted = unsaturated(rows, saturated_below)
        notes.append(f"law: {len(rows) - len(fitted)} saturated cells (L_final < {saturated_below}) left out")
        kept = {id(w) for w in fitted}
        excluded += [_cell(w, f"saturated: L_final {w['L_final']:.3g} < {saturated_below:g} (--saturated-below)")
                     for w in rows if id(w) not in kept]
    if "bounded" in forms:
        with_base = [w for w in fitted if _has_l_base(w)]
        if not with_base and law == BOTH:
            forms.remove("bounded")
            notes.append("bounded: no cell has an L_base (a CSV column l_base), so only the paper's form is fitted")
        elif not with_base:
            raise ConfigError("the bounded law needs each cell's L_base: a CSV column l_base (or L_base, as "
                              "`memlaw runs export` writes it); none of the cells has one")
        elif len(with_base) < len(fitted):
            excluded += [_cell(w, "no L_base (the bounded form needs it; left out of every form)")
                         for w in fitted if not _has_l_base(w)]
            fitted = with_base
    with_l_base = "bounded" in forms
    cols = _columns(fitted, with_l_base)
    results = {form: _fit_form(form, cols, fitted, relative=relative, fix_b=fix_b, notes=notes) for form in forms}
    first = results[forms[0]]
    out: dict[str, Any] = {"law": first["law"], "held_out": first["held_out"]["rank"], "forms": results,
                           "best": best_form(results), "frontier": None,
                           "cells": _counts(fitted), "seed_spread": seed_spread(fitted),
                           "excluded": excluded}
    out["frontier"] = _frontier(rows, notes)
    out["notes"] = notes
    return out


def _counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    seeds = sorted({w["seed"] for w in rows if w.get("seed") is not None})
    saturated = (sum(w["delta_loss"] >= SATURATED * w["L_base"] for w in rows)   # the paper's form fitted alone
                 if rows and all(_has_l_base(w) for w in rows) else None)          # still says how many sit there
    return {"n": len(rows), "ranks": sorted({float(w["rank"]) for w in rows}),
            "lengths": sorted({float(w["length"]) for w in rows}), "seeds": seeds or None,
            "saturated": saturated}


def _frontier(rows: Sequence[Mapping[str, Any]], notes: list[str]) -> dict[str, Any] | None:
    with_em = [w for w in rows if w.get("em") is not None]
    if not with_em:
        notes.append("frontier: no em column")
        return None
    em_cols = est.check_data([w["rank"] for w in with_em], [w["length"] for w in with_em],
                             em=[w["em"] for w in with_em])
    try:
        return Frontier().fit(*em_cols).summary()
    except ConfigError as e:  # the data are valid; too few ranks reach full recall to fit a line
        notes.append(f"frontier: {e}")
        return None


__all__ = ["fit_table", "unsaturated", "seed_spread", "best_form", "cell_errors", "BOTH"]
