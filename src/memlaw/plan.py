"""Plan an adapter from the stored sweep results: which rank do these records need? (DESIGN §7.)

The store gives, for one model and adapter kind, measured (rank, ℓ, ΔL, EM) cells. From them:

- measured evidence first: the smallest rank whose cell recalled (and certified) every record at a
  length ≥ ℓ, under the same settings, is the answer when there is one;
- else the capacity frontier ℓ_max = K · r^γ (largest ℓ with 100% EM per rank): the smallest
  integer r with K · r^γ ≥ ℓ;
- the law predicts ΔL at that rank: by default the form (`LAW_FORMS`: the paper's ΔL = C·r^α·ℓ^(−β) + b
  or the bounded ΔL = L_base·(1 − exp(−C·r^α·ℓ^(−β)))) with the lower held-out MAPE on the cells,
  named in the plan; the ΔL needed is the records' own L_base minus the L_final that fully recalled
  cells reached, and their difference is the margin.

Anything outside the measured ranks or lengths is an extrapolation, flagged with its factor. A plan
holds for the settings the cells were measured under (budget, lr, objective, prompt, dtype), which
it carries, and `Plan.command()` is the `memlaw write` that realises it (`memlaw.recipe`).
`plan_records` is the body of `memlaw plan` (`memlaw.fitting.fit_cells` that of `memlaw fit`).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from memlaw import recipe
from memlaw.errors import ConfigError, FitWarning
from memlaw.fileio import json_ready
from memlaw.fitting import law_rows
from memlaw.law import BOTH, FORMS, Frontier, fit_table, make_law, unsaturated
from memlaw.law_names import AUTO

LAW_FORMS: dict[str, tuple[type, str]] = {name: (cls, cls.formula) for name, cls in FORMS.items()}
"""Law forms `plan` can fit, by name: (class with fit/predict/rank_for/summary, formula). A new form plugs in
`memlaw.law.FORMS`."""


@dataclass
class Plan:
    """The answer of `plan`: the rank to use, the evidence for it, and the settings it holds for."""

    length: int                          # ℓ of the records (value tokens)
    n_records: int
    rank: int | None                     # recommended rank (None: no evidence gives one)
    rank_source: str                     # "measured", "frontier", "law" or "none"
    frontier_rank: float | None          # continuous rank the frontier needs for ℓ (None: no finite one)
    law_rank: float | None               # continuous rank the law needs for the ΔL needed
    measured_rank: int | None            # smallest measured rank that recalled (and certified) a length >= ℓ
    predicted_delta_loss: float | None   # law at (rank, ℓ)
    needed_delta_loss: float | None      # L_base(records) − L_final at full recall
    margin: float | None                 # predicted − needed (nats; > 0: headroom)
    capacity: float | None               # frontier ℓ_max at `rank` (value tokens)
    capacity_margin: float | None        # capacity / ℓ − 1 (> 0: headroom)
    L_base: float | None
    law_form: str = "paper"
    law_formula: str = LAW_FORMS["paper"][1]
    law_choice: dict[str, Any] = field(default_factory=dict)
    """How the form was chosen (law=auto): {"by", "held_out_mape": {form: % or None}, "converged": {form: bool},
    "notes": what the fits compared warned (each form on all cells, and held out by rank and by length) that the
    law used did not; those are not about it}; {} when the form was given."""
    extrapolating: list[str] = field(default_factory=list)
    extrapolation: dict[str, float] = field(default_factory=dict)
    """How far outside the measured grid: {"length": ℓ / nearest measured length, "rank": ...}, > 1."""
    notes: list[str] = field(default_factory=list)
    law: dict[str, Any] = field(default_factory=dict)
    frontier: dict[str, Any] | None = None
    measured: dict[str, Any] = field(default_factory=dict)
    """The grid the answer comes from: ranks, lengths, cells."""
    settings: dict[str, Any] = field(default_factory=dict)
    """What the answer holds for: the settings every fitted cell shared (budget, lr, objective, ...)."""
    mixed_settings: dict[str, list] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready and strict: NaN and ±inf become None."""
        return json_ready(asdict(self))

    def command(self, records: str = "RECORDS", out: str = "ADAPTER") -> list[str]:
        """argv of the `memlaw write` that realises the plan (None-free; needs a rank)."""
        if self.rank is None:
            raise ConfigError("the plan has no rank, so no write command: " + "; ".join(self.notes))
        return recipe.write_command(self.settings, self.rank, records=records, out=out)

    def config(self, fmt: str, records: str = "RECORDS", out: str = "ADAPTER") -> str:
        """The plan as `fmt`: 'memlaw' (the shell command), 'peft' (JSON) or 'axolotl' (YAML); LoRA only
        for the last two."""
        if fmt not in recipe.FORMATS:
            raise ConfigError(f"format must be one of {', '.join(recipe.FORMATS)}, got {fmt!r}")
        if fmt == "memlaw":
            return recipe.command_text(self.command(records, out))
        if self.settings.get("adapter.kind") != "lora":
            raise ConfigError(f"--format {fmt} writes a LoRA config, but these cells are "
                              f"{self.settings.get('adapter.kind')!r} adapters (memlaw's own); plan --kind lora")
        if self.rank is None:
            raise ConfigError("the plan has no rank, so no config: " + "; ".join(self.notes))
        if fmt == "peft":
            return json.dumps(json_ready(recipe.peft_config(self.settings, self.rank)), indent=2, allow_nan=False)
        return recipe.axolotl_config(self.settings, self.rank, records=records)


def plan(length: int, rows: list[dict[str, Any]], *, n_records: int = 0, L_base: float | None = None,
         law: str = AUTO, fix_b: bool = False, saturated_below: float | None = None) -> Plan:
    """Which rank holds `length` value tokens, from the law rows of one group. Pure.

    The rank comes from the strongest evidence there is: the smallest measured rank that fully
    recalled (and certified) a length ≥ ℓ; else the capacity frontier's rank (ℓ outside what any
    measured rank held: an extrapolation, flagged with its factor); else the law's.

    Args:
        length: ℓ of the records to write.
        rows: law rows of one group (`law_rows`).
        n_records: for the report only.
        L_base: the base model's mean value-token loss on the records (None: no ΔL target, no margin).
        law: the law form (a key of `LAW_FORMS`), or "auto": every form on the same cells, and the one
            with the lower held-out MAPE (mean of by rank and by length) is used; the bounded form is a
            candidate when the cells carry L_base.
    """
    if length < 1:
        raise ConfigError(f"length must be >= 1, got {length}")
    if law != AUTO and law not in LAW_FORMS:
        raise ConfigError(f"law form must be one of {', '.join([*LAW_FORMS, AUTO])}, got {law!r}")
    with np.errstate(all="ignore"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = _plan(length, rows, n_records, L_base, law, fix_b, saturated_below)
    # The notes are about the law used, its frontier and rank: the fits that chose the form (every form, and
    # each held out by rank and by length) warned apart, into law_choice, and what the law used says too is said once.
    p.notes = list(dict.fromkeys([*p.notes, *_fit_warnings(caught)]))
    if "notes" in p.law_choice:
        p.law_choice["notes"] = [n for n in p.law_choice["notes"] if n not in p.notes]
    return p


def _fit_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    """The FitWarnings' messages, each once, in order."""
    return list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, FitWarning)))


def _plan(length, rows, n_records, L_base, law_form, fix_b, saturated_below) -> Plan:
    # Optionally as `memlaw fit --fix-b --saturated-below`: fully stored memories sit on the
    # ΔL = L_base ceiling, and a free b lets small, nearly log-linear grids diverge.
    fit_on = rows
    if saturated_below is not None:
        fit_on = unsaturated(rows, saturated_below) or rows
    notes: list[str] = []
    if len(fit_on) < len(rows):
        notes.append(f"law fitted on {len(fit_on)} non-saturated cells (L_final >= {saturated_below})")
    law_form, choice = _choose_law(fit_on, law_form, fix_b, notes)
    fitted = _fit_law(fit_on, law_form, fix_b)

    frontier, frontier_rank, measured = None, None, None
    with_em = [x for x in rows if x.get("em") is not None]
    if with_em:
        try:
            frontier = Frontier().fit([x["rank"] for x in with_em], [x["length"] for x in with_em],
                                      [x["em"] for x in with_em])
            frontier_rank = _finite(frontier.rank_for(length))
        except ConfigError as e:
            notes.append(f"no frontier: {e}")
        full = sorted(int(x["rank"]) for x in with_em if _held(x) and x["length"] >= length)
        measured = full[0] if full else None
    else:
        notes.append("no frontier: the cells have no EM")

    needed, law_rank = None, None
    if L_base is not None:
        finals = [float(x["L_final"]) for x in rows if x.get("em") == 1.0 and x.get("L_final") is not None]
        needed = L_base - (statistics.median(finals) if finals else 0.0)
        try:
            law_rank = _finite(fitted.rank_for(needed, length, L_base))
        except ConfigError as e:
            notes.append(f"law: {e}")

    rank, source = None, "none"
    if measured is not None:
        rank, source = measured, "measured"
    elif frontier_rank is not None:
        rank, source = max(1, math.ceil(frontier_rank - 1e-9)), "frontier"
    elif law_rank is not None:
        rank, source = max(1, math.ceil(law_rank - 1e-9)), "law"
    else:
        notes.append("neither a measured cell, the frontier nor the law gives a finite rank")

    predicted = None
    if rank is not None and (L_base is not None or not fitted.needs_l_base):
        predicted = _finite(float(fitted.predict(rank, length, L_base)))
    margin = predicted - needed if predicted is not None and needed is not None else None
    capacity = _finite(float(frontier.max_length(rank))) if frontier is not None and rank is not None else None
    all_r = np.array([float(x["rank"]) for x in rows])
    all_l = np.array([float(x["length"]) for x in rows])
    outside, factors = _outside(length, rank, all_l, all_r)
    return Plan(length=length, n_records=n_records, rank=rank, rank_source=source, frontier_rank=frontier_rank,
                law_rank=law_rank, measured_rank=measured, predicted_delta_loss=predicted, needed_delta_loss=needed,
                margin=margin, capacity=capacity, capacity_margin=None if capacity is None else capacity / length - 1.0,
                L_base=L_base, law_form=law_form, law_formula=fitted.formula, law_choice=choice, extrapolating=outside,
                extrapolation=factors, notes=notes, law=fitted.summary(),
                frontier=frontier.summary() if frontier is not None else None,
                measured={"ranks": sorted(set(all_r.tolist())), "lengths": sorted(set(all_l.tolist())),
                          "cells": len(rows)})


def _choose_law(rows: list[dict[str, Any]], law: str, fix_b: bool, notes: list[str]) -> tuple[str, dict[str, Any]]:
    """The form to use: `law` itself, or (auto) the one `fit_table` finds with the lower held-out MAPE."""
    if law != AUTO:
        return law, {}
    with warnings.catch_warnings(record=True) as caught:        # kept apart from the notes on the law used
        warnings.simplefilter("always")
        table = fit_table(rows, law=BOTH, fix_b=fix_b)
    notes += [n for n in table["notes"] if n.startswith("bounded:")]
    choice = {"by": "held-out MAPE (mean of by rank and by length; fitted on the same cells)",
              "held_out_mape": {name: form["held_out_mape"] for name, form in table["forms"].items()},
              "converged": {name: form["law"]["converged"] for name, form in table["forms"].items()},
              "notes": _fit_warnings(caught)}
    if table["best"] is None:
        notes.append("law: no form could be held out (or none converged), so the paper's form is used")
    return table["best"] or "paper", choice


def _fit_law(rows: list[dict[str, Any]], form: str, fix_b: bool):
    """`form` fitted to the rows (the bounded form to those with an L_base: `fit_table` compares it on them)."""
    model = make_law(form, fix_b=fix_b)
    if model.needs_l_base:
        rows = [x for x in rows if x.get("L_base") is not None and x["L_base"] > 0]
        if not rows:
            raise ConfigError("the bounded law needs the cells' L_base, and none of them has one; use --law paper")
    columns = [np.array([float(x[k]) for x in rows]) for k in ("rank", "length", "delta_loss")]
    return model.fit(*columns, np.array([float(x["L_base"]) for x in rows]) if model.needs_l_base else None)


def _held(row: dict[str, Any]) -> bool:
    """A cell that recalled every record exactly and, where the store says, certified every one."""
    return row["em"] >= 1.0 and (row.get("certified") is None or row["certified"] >= 1.0)


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _outside(length: int, rank: int | None, lengths: np.ndarray, ranks: np.ndarray) -> tuple[list[str], dict[str, float]]:
    """Why the answer is an extrapolation (phrases) and by what factor, for ℓ and the rank."""
    out, factors = [], {}
    for name, x, grid in (("length", length, lengths), ("rank", rank, ranks)):
        if x is None:
            continue
        lo, hi = float(grid.min()), float(grid.max())
        what = f"ℓ = {x}" if name == "length" else f"rank {x}"
        if x > hi:
            factors[name] = x / hi
            out.append(f"{what} is {x / hi:.2g}× the largest measured {name} ({hi:g})")
        elif x < lo:
            factors[name] = lo / x
            out.append(f"{what} is 1/{lo / x:.2g} of the smallest measured {name} ({lo:g})")
    return out, factors


def plan_records(records: str | os.PathLike | Sequence[Any], *, store: str | os.PathLike,
                 model: str = "smollm2-135m", kind: str = "probe", where: str | None = None, law: str = AUTO,
                 fix_b: bool = False, saturated_below: float | None = None, device: str = "auto",
                 base: Any = None) -> Plan:
    """`memlaw plan`: the rank `records` need on `model`, from the store's cells of that model and kind.

    Loads the model (or uses `base`) on `device` to measure the records' L_base under the prompt and
    dtype the cells were written with. The plan carries the settings the cells shared, so that
    `Plan.command()` writes the records under them.

    Raises:
        ConfigError: no finished cells for `model` and `kind`, cells of several groups, a bad law form.
        RecordError: bad records (file:line and cause).
    """
    from memlaw.config import PromptConfig
    from memlaw.records import as_records, load_records
    from memlaw.store import open_store

    with open_store(store, create=False) as db:
        stored = db.load_cells(f"model={model},kind={kind}" + (f",{where}" if where else ""))
    if not stored:
        raise ConfigError(f"{store}: no finished cells for model {model} and adapter kind {kind}; "
                          "run a sweep for them first")
    rows = law_rows(stored)
    recs = load_records(records) if isinstance(records, (str, os.PathLike)) else as_records(records)
    shared, mixed = recipe.settings(stored)
    if base is None:
        from memlaw.models import load_base

        base = load_base(model, dtype=shared.get("dtype", "auto"), device=device)
    from memlaw.encode import encode
    from memlaw.verify import base_answer_losses

    enc = encode(recs, base.tokenizer, PromptConfig(**(prompt_of(stored) or {})), max_length=base.context_length)
    losses = base_answer_losses(base, enc)
    L_base = sum(loss * len(v) for (loss, _), v in zip(losses, enc.value_ids)) / max(1, enc.length)
    result = plan(enc.length, rows, n_records=len(recs), L_base=L_base, law=law, fix_b=fix_b,
                  saturated_below=saturated_below)
    result.settings, result.mixed_settings = shared, mixed
    if mixed:
        result.notes.append(f"the cells differ in {', '.join(mixed)} as well as rank and length: the answer "
                            "mixes those settings; pick one with --where")
    if extra := recipe.unexpressed(shared):
        result.notes.append("the cells also set " + ", ".join(f"{k}={v}" for k, v in extra.items()) +
                            ", which `memlaw write` has no option for: write with the Python API to match them")
    if shared.get("train.until") == "budget":
        result.notes.append("the cells trained for their whole budget; the planned write stops once every record "
                            "certifies, on the same learning-rate schedule")
    return result


def prompt_of(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The prompt spec most of the group's cells were written with (so L_base is measured the same way)."""
    prompts = Counter(_freeze(r["config"]["prompt"]) for r in rows if isinstance(r.get("config"), dict))
    return dict(prompts.most_common(1)[0][0]) if prompts else None


def _freeze(d: dict) -> tuple:
    return tuple(sorted(d.items()))


__all__ = ["plan", "plan_records", "Plan", "prompt_of", "LAW_FORMS", "AUTO"]
