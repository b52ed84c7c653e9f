"""The report's opening, for a reader who has not read the paper: a plain-language summary (what was
measured, on which model and budget, the main finding), written without symbols, then the symbols
the rest of the page uses, each defined there, before its first use. Pure: rows and fits in,
`Section`s out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from memlaw import experiments
from memlaw.recipe import budget_text, settings
from memlaw.report.document import Section

HELD_OUT_LIMIT = 10.0
"""Held-out MAPE (%) above which the report warns that the law does not extrapolate to larger ranks."""

SYMBOLS: dict[str, str] = {
    "r": "the adapter's rank, its size (a probe holds 2·d·r numbers, d the model's width)",
    "ℓ": "the memory's length: value tokens summed over its records, end-of-answer tokens excluded",
    "p_t": "the probability the model gives answer token t when shown the key and the true earlier tokens",
    "EM": "exact match: greedy decoding returns the value, character for character",
    "certified": "every answer token has p_t > 0.5, which makes greedy decoding return the value: EM is guaranteed",
    "stubborn": "an answer token with p_t ≤ 0.5, the ones that can break exact recall",
    "L_base": "the mean loss (cross-entropy, in nats) of the value tokens under the model without the adapter",
    "L_final": "the same loss with the adapter",
    "ΔL": "L_base − L_final, how much the adapter lowered the loss",
    "C, α, β, b": "the parameters of the paper's law ΔL = C·r^α·ℓ^(−β) + b: a scale C, the capacity exponent "
                  "α (how fast ΔL grows with rank), the length penalty β (how fast it falls with length) and "
                  "an offset b",
    "bounded form": "the law ΔL = L_base·(1 − exp(−C·r^α·ℓ^(−β))): the same C, α and β, but ΔL rises towards "
                    "L_base (the loss cannot fall below zero) instead of growing without bound, so it also fits "
                    "memories stored whole",
    "R²": "the share of the variation in ΔL the law explains (1: all of it)",
    "MAPE": "mean absolute percentage error of the law's ΔL against the measured one",
    "AIC": "Akaike's information criterion of a form on the cells: n·ln(RSS/n) + 2k for n cells, k parameters and "
           "the residual sum of squares RSS; lower is better, and only forms fitted to the same cells compare",
    "BIC": "the Bayesian information criterion: n·ln(RSS/n) + k·ln n, which charges more for each parameter",
    "held-out MAPE": "the law fitted on the smaller ranks only, its MAPE on the larger ones (and likewise on the "
                     "shorter lengths, predicting the longer ones): whether it predicts beyond what it was fitted on",
    "K, γ": "the capacity frontier ℓ_max = K·r^γ, the largest ℓ recalled exactly at rank r",
    "ρ": "Spearman's rank correlation",
}


def summary_section(rows: Sequence[Mapping[str, Any]], fits: Sequence[Mapping[str, Any]]) -> Section:
    """What was measured, on which model and budget, and what was found, in plain words (no symbols:
    the next section defines them).

    Args:
        rows: finished store rows.
        fits: per experiment, `{"experiment": label, "cells": n, "fit": fit_rows(...) or absent}` (the
            report's `summary["laws"]`).
    """
    sec = Section(id="summary", title="Summary")
    if not rows:
        sec.paragraphs.append("No finished cells: nothing was measured yet.")
        return sec
    ranks = sorted({r["rank"] for r in rows if r.get("rank") is not None})
    lengths = sorted({r["length"] for r in rows if r.get("length") is not None})
    sec.paragraphs.append(
        f"What was measured: {_memories(len(rows))}, each a set of key → value records ({_sources(rows)}) "
        f"trained into a small adapter ({_names(rows, 'kind')}) of the frozen model {_names(rows, 'model')}, with "
        f"adapter ranks (sizes) {_span(ranks)} and memories of {_span(lengths)} value tokens. Each memory was then "
        "read back by greedy decoding and compared with its values.")
    for experiment in experiments.group(rows):
        shared, mixed = settings(experiment.rows)
        until = ("stopping early once every record was certified" if shared.get("train.until") == "certified"
                 else "for the whole budget")
        budget = (f"{budget_text(shared)} at learning rate {shared.get('train.lr')}, {until}"
                  if "train.lr" in shared else "settings that differ between cells")
        name = experiment.label
        sec.paragraphs.append(f"Training budget ({name}): objective {shared.get('objective.name', '?')}, {budget}"
                              + (f"; the cells differ in {', '.join(sorted(mixed))}" if mixed else "") + ".")
    em_all = sum(1 for r in rows if r.get("em_rate") == 1.0)
    cert_all = sum(1 for r in rows if r.get("certified_rate") == 1.0)
    sec.paragraphs.append(
        f"Exact recall: {em_all} of {len(rows)} memories came back exactly, every record. {cert_all} were certified: "
        "every answer token had probability above one half, which guarantees exact recall.")
    for fit in fits:
        sec.paragraphs += _finding(fit)
    return sec


def _finding(group_fit: Mapping[str, Any]) -> list[str]:
    name = group_fit.get("experiment", "")
    fit = group_fit.get("fit")
    if not fit:
        return [f"Main finding ({name}): no law could be fitted to its {group_fit.get('cells', 0)} cells."]
    out = []
    fr = fit.get("frontier")
    if fr:
        pts = "; ".join(f"rank {p[0]:g}: {p[1]:g} tokens" for p in fr["points"])
        growth = ("roughly in proportion to rank" if 0.8 <= fr["gamma"] <= 1.2
                  else f"as rank to the power {fr['gamma']:.2f}")
        out.append(f"Main finding ({name}): the largest memory recalled exactly grows {growth} ({pts}).")
    else:
        out.append(f"Main finding ({name}): fewer than two ranks recalled a whole memory exactly, so how capacity "
                   "grows with rank could not be fitted.")
    forms = fit.get("forms") or {fit["law"].get("form", "paper"): {"law": fit["law"], "held_out": {
        "rank": fit.get("held_out")}}}
    for name, form in forms.items():
        law = form["law"]
        what = ("The paper's law of how much an adapter lowers the loss, by rank and length," if name == "paper" else
                "The bounded form of that law, which knows that the loss cannot fall below zero,")
        out.append(f"{what} matches these memories with an average error of {_pct(law.get('mape'))}"
                   + ("." if law.get("converged") else " (warning: the fit did not converge, so its numbers are "
                      "unreliable).") + _extrapolates(form["held_out"].get("rank")))
    if len(forms) > 1 and fit.get("best") in forms:
        best = "the paper's law" if fit["best"] == "paper" else "the bounded form"
        out.append(f"Fitted on the smaller ranks, or on the shorter memories, {best} predicts the rest better, so "
                   "planning uses it.")
    return out


def _extrapolates(ho: Mapping[str, Any] | None) -> str:
    if not ho or ho.get("mape") is None:
        return ""
    text = f" Fitted on the smaller ranks only, it predicts the larger ones within {ho['mape']:.0f}%"
    return text + (f" (warning: above {HELD_OUT_LIMIT:.0f}%, so do not trust it beyond the measured ranks)."
                   if ho["mape"] > HELD_OUT_LIMIT else ".")


def symbols_section() -> Section:
    """Every symbol the report uses, with its meaning."""
    sec = Section(id="symbols", title="Symbols and words")
    sec.paragraphs += [f"{symbol}: {meaning}." for symbol, meaning in SYMBOLS.items()]
    return sec


def _memories(n: int) -> str:
    return "1 memory" if n == 1 else f"{n} memories"


def _sources(rows: Sequence[Mapping[str, Any]]) -> str:
    names = sorted({str(r.get("benchmark")) for r in rows})
    return ", ".join("from a records file" if n == "records" else f"the {n} benchmark" for n in names)


def _names(rows: Sequence[Mapping[str, Any]], column: str) -> str:
    return ", ".join(sorted({str(r.get(column)) for r in rows}))


def _span(values: Sequence[Any]) -> str:
    if not values:
        return "?"
    return f"{values[0]:g}" if len(values) == 1 else f"{values[0]:g} to {values[-1]:g}"


def _pct(x: float | None) -> str:
    return "?" if x is None else f"{x:.1f}%"


__all__ = ["summary_section", "symbols_section", "SYMBOLS", "HELD_OUT_LIMIT"]
