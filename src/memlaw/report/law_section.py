"""The report's law section: per experiment, the law forms side by side on the same cells (parameters,
R², MAPE, AIC/BIC, held-out MAPE by rank and by length, frontier), which predicts held-out cells
better, the cells and seeds behind the fit, and the scaling figures. Pure (no I/O)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from memlaw.errors import MemlawError
from memlaw.report import plots
from memlaw.report.document import Cell, FigureSpec, Section, Table, fmt
from memlaw.report.document import pm as _pm
from memlaw.report.document import slug as _slug
from memlaw.report.summary import HELD_OUT_LIMIT

POOR_R2 = 0.9
"""R² below which the law's fit gets a warning beside it (the paper reports R² > 0.98)."""
SYMBOL = {"C": "C", "alpha": "α", "beta": "β", "b": "b"}
MAX_EXCLUDED = 12
"""Cells left out of a fit that the report lists one by one (`memlaw fit --json` lists them all)."""
NAMES = {"paper": "the paper's form", "bounded": "the bounded form"}


def law_section(experiment, law_options: Mapping[str, Any] | None = None) -> tuple[Section, dict[str, Any]]:
    """The law fitted to one experiment (`experiments.Experiment`: cells differing only in rank, length, seed):
    every form asked for (`law_options["law"]`, both by default) side by side on the same cells.
    `law_options["pool"]`: the config keys the experiment was grouped across (`experiments.group(rows, pool)`)."""
    from memlaw.fitting import fit_rows, law_rows

    options = dict(law_options or {})
    pool = tuple(options.pop("pool", None) or ())
    rows = experiment.rows
    digest = hashlib.sha256(json.dumps(experiment.config, sort_keys=True).encode()).hexdigest()[:8]
    group = (experiment.label[:40], digest)               # figure and table names: unique per experiment
    sec = Section(id=_slug("law", *group), title=f"Memory law: {experiment.label}")
    summary: dict[str, Any] = {"experiment": experiment.label, "config": experiment.config, "cells": len(rows)}
    try:
        lrows = law_rows(rows, pool)
        fit = fit_rows(lrows, **{"law": "both", **options})
    except (MemlawError, ValueError, FloatingPointError) as e:
        sec.paragraphs.append(f"No law fit: {e}")
        lrows, fit = [], None
    forms: dict[str, Any] = {}
    if fit is not None:
        forms = fit["forms"]
        summary["fit"] = {k: fit.get(k) for k in ("law", "held_out", "forms", "best", "frontier", "cells",
                                                  "seed_spread", "excluded", "notes", "warnings")}
        sec.tables.append(_law_table(fit, len(lrows), group))
        sec.paragraphs += _law_paragraphs(fit)
    for name, form in forms.items():
        params = form["law"]["params"] if form["law"]["converged"] else None
        lines = (f"lines {NAMES[name]} of the law" + (" at each line's mean L_base." if name == "bounded" else ".")
                 if params is not None else f"no lines: {NAMES[name]} did not converge.")
        sec.figures.append(FigureSpec(_slug("law-panels", name, *group), "ΔL against rank (per length) and against "
                                      f"length (per rank); points measured, {lines}",
                                      plots.law_panels(lrows, params, form=name)))
        if params is not None:
            sec.figures.append(FigureSpec(_slug("predicted", name, *group), f"The prediction of {NAMES[name]} "
                                          "against measured ΔL.", plots.predicted_vs_true(lrows, params, form=name)))
    if lrows and not forms:
        sec.figures.append(FigureSpec(_slug("law-panels", *group), "ΔL against rank (per length) and against length "
                                      "(per rank), measured.", plots.law_panels(lrows, None)))
    done = [r for r in rows if r.get("em_rate") is not None]
    if done:
        sec.figures.append(FigureSpec(_slug("heat-em", *group), "Exact match (greedy recall) over rank × length.",
                                      plots.heatmap(done, "em_rate", title="EM rate", fmt="{:.0%}")))
    with_loss = [r for r in rows if r.get("L_final") is not None]
    if with_loss:
        sec.figures.append(FigureSpec(_slug("heat-lfinal", *group), "Final mean value-token loss over rank × "
                                      "length.", plots.heatmap(with_loss, "L_final", title="L_final (nats)",
                                                               fmt="{:.3f}", cmap="magma_r")))
    return sec, summary


def _law_table(fit: Mapping[str, Any], n: int, group: tuple) -> Table:
    """The forms side by side: parameters ± se, R², MAPE, AIC/BIC, held-out MAPE by rank and by length."""
    forms = fit["forms"]
    t = Table(id=_slug("fit", *group), caption=f"The law fitted to {n} cells, each form on the same cells "
              "(nonlinear least squares on ΔL; ± standard error)", columns=["quantity", *forms], rows=[])
    warned = list(dict.fromkeys(fit.get("warnings", [])))   # the held-out refits repeat the full fit's
    t.rows.append(["form", *(f["formula"] for f in forms.values())])
    for key, label in SYMBOL.items():
        if any(key in f["law"]["params"] for f in forms.values()):
            t.rows.append([label, *(_pm(f["law"]["params"][key], f["law"]["stderr"][key])
                                    if key in f["law"]["params"] else "-" for f in forms.values())])
    t.rows.append(["R²", *(Cell(fmt(f["law"]["r2"], 4), warning=None if f["law"]["r2"] is None or f["law"]["r2"] >= POOR_R2
                                else f"below {POOR_R2}: the law explains little of how ΔL varies here")
                           for f in forms.values())])
    t.rows.append(["MAPE", *("-" if f["law"]["mape"] is None else f"{f['law']['mape']:.2f}%" for f in forms.values())])
    t.rows.append(["AIC / BIC (lower is better)", *(f"{fmt(f['law']['aic'], 1)} / {fmt(f['law']['bic'], 1)}"
                                                    for f in forms.values())])
    for split, larger in (("rank", "the larger ranks"), ("length", "the longer lengths")):
        ho = next((f["held_out"][split] for f in forms.values() if f["held_out"][split]), None)
        if ho is None:
            t.rows.append([f"held-out MAPE by {split}", *(f"- (needs ≥ 2 {split}s)" for _ in forms)])
            continue
        train, test = ((ho["train_ranks"], ho["test_ranks"]) if split == "rank" else
                       (ho["train_lengths"], ho["test_lengths"]))
        label = (f"held-out MAPE (fit on {split}s {','.join(f'{x:g}' for x in train)}, predict "
                 f"{','.join(f'{x:g}' for x in test)})")
        cells = []
        for f in forms.values():
            mape = (f["held_out"][split] or {}).get("mape")
            bad = mape is not None and mape > HELD_OUT_LIMIT
            cells.append(Cell("-" if mape is None else f"{mape:.2f}%", warning=(
                f"above {HELD_OUT_LIMIT:.0f}%: the law does not predict {larger} well; do not extrapolate with it")
                if bad else None))
        t.rows.append([label, *cells])
    fr = fit.get("frontier")
    on_frontier = [w for w in warned if w.startswith("frontier")]
    if fr:
        t.rows.append(["capacity frontier ℓ_max = K·r^γ (every form)",
                       *[Cell(f"K = {_pm(fr['K'], fr['K_stderr'])}, γ = {_pm(fr['gamma'], fr['gamma_stderr'])}",
                              warning="; ".join(on_frontier) or None)] * len(forms)])
    t.rows.append(["paper", *("R² > 0.98, MAPE 0.5–8%" if name == "paper" else "-" for name in forms)])
    t.rows.append(["converged", *(Cell(fmt(f["law"]["converged"]), warning="; ".join(
        w for w in warned if w.startswith(_PREFIX[name])) or None) for name, f in forms.items())])
    return t


_PREFIX = {"paper": "memory-law fit", "bounded": "bounded-law fit"}


def _law_paragraphs(fit: Mapping[str, Any]) -> list[str]:
    """Which form predicts held-out cells better, the cells and seeds behind the fit, the spread, the exclusions."""
    out = []
    forms, best = fit["forms"], fit.get("best")
    if best and len(forms) > 1:
        scores = ", ".join(f"{NAMES[n]} {f['held_out_mape']:.2f}%" for n, f in forms.items()
                           if f["held_out_mape"] is not None)
        out.append(f"{NAMES[best].capitalize()} predicts held-out cells better (mean held-out MAPE by rank and by "
                   f"length: {scores}); `memlaw plan` uses it.")
    c = fit["cells"]
    seeds = f" and seeds {', '.join(f'{s:g}' for s in c['seeds'])}" if c.get("seeds") else ""
    ceiling = f"; {c['saturated']} of them reach 95% of L_base" if c.get("saturated") is not None else ""
    out.append(f"Fitted on {c['n']} cells: ranks {', '.join(f'{x:g}' for x in c['ranks'])}, lengths "
               f"{', '.join(f'{x:g}' for x in c['lengths'])}{seeds}{ceiling}.")
    spread = fit.get("seed_spread")
    if spread:
        out.append(f"Across seeds, {spread['pairs']} (rank, length) hold two cells or more: the sd of ΔL has median "
                   f"{spread['sd_median']:.3g} nats and maximum {spread['sd_max']:.3g}; R² of their (rank, length) "
                   f"means {fmt(spread['r2_means'], 4)}, the most a law of rank and length alone can reach there.")
    excluded = fit.get("excluded", [])
    if excluded:
        listed = "; ".join(f"rank {e['rank']}, length {e['length']}" + (f", seed {e['seed']}" if e.get("seed")
                                                                          is not None else "") + f": {e['reason']}"
                           for e in excluded[:MAX_EXCLUDED])
        more = f"; and {len(excluded) - MAX_EXCLUDED} more" if len(excluded) > MAX_EXCLUDED else ""
        out.append(f"Left out of the fit ({len(excluded)} cells): {listed}{more}.")
    for note in fit.get("notes", []):
        out.append(f"Note: {note}.")
    return out


__all__ = ["law_section", "POOR_R2"]
