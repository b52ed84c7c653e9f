"""The law table laid out as the paper's (its table of R² and MAPE per noise ratio, combined across
ratios, and PhoneBook), in Markdown: one row per fitted experiment, one table per law form, then
the held-out splits, the cells left out, and the issue's targets met or missed with the cells that
miss them. `memlaw fit --markdown` prints it; docs/make_reproduction.py pastes it into
docs/reproduction.md. Fits in (`memlaw.fitting.fit_cells` output), text out; no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from memlaw.bits import recount_note
from memlaw.experiments import flat
from memlaw.report.document import pm

FORM_NAMES = {"paper": "The paper's form", "bounded": "The bounded form", "paper, b = 0": "The paper's form, b = 0"}
SYMBOLS = (("C", "C"), ("alpha", "α"), ("beta", "β"), ("b", "b"))
BENCHMARKS = {"phonebook": "PhoneBook", "long-context": "long-context", "linear-rule": "linear rule"}
SHOWN_CELLS = 6
"""Cells that miss a target listed one by one (worst first); the rest are counted."""
WORST_FOR_R2 = 3
"""An R² below target names this many cells: those with the largest errors in nats."""


@dataclass(frozen=True)
class Targets:
    """What a law must reach on a non-saturated grid (issue 13): R² ≥ r2, MAPE ≤ mape (%), and held-out
    MAPE ≤ held_out_mape (%) by rank and by length."""

    r2: float = 0.98
    mape: float = 5.0
    held_out_mape: float = 10.0

    def describe(self) -> str:
        return f"R² ≥ {self.r2:g}, MAPE ≤ {self.mape:g}%, held-out MAPE ≤ {self.held_out_mape:g}% by rank and by length"


TARGETS = Targets()


@dataclass
class Check:
    """One target on one form of one fit: the value reached, whether it is met, and the cells that miss."""

    name: str                     # "R²", "MAPE", "held-out MAPE by rank", "held-out MAPE by length"
    value: float | None
    limit: float
    met: bool
    misses: list[dict[str, Any]] = field(default_factory=list)
    """Cells (`law.cell_errors` dicts) whose own error is beyond the target (for R²: the largest errors)."""


def row_label(fit: Mapping[str, Any]) -> str:
    """A fit's row name: model, benchmark and noise ratio, or "combined (r100, r60, ...)" for a pooled fit."""
    f = flat(fit.get("config") or {})
    parts = [str(f["model"])] if f.get("model") else []
    bench = f.get("benchmark.name")
    if bench:
        parts.append(BENCHMARKS.get(bench, str(bench)))
    pooled = fit.get("pooled_values") or {}
    if pooled:
        parts.append("combined (" + "; ".join(", ".join(str(v) for v in values) for values in pooled.values()) + ")")
    elif f.get("benchmark.ratio"):
        parts.append(str(f["benchmark.ratio"]))
    return " ".join(parts) or fit.get("experiment") or "law"


def labels(fits: Sequence[Mapping[str, Any]]) -> list[str]:
    """`row_label` of each fit; where two would read the same, the fit's experiment label (what differs)."""
    out = [row_label(f) for f in fits]
    return [f"{lab} ({fit['experiment']})" if out.count(lab) > 1 and fit.get("experiment") else lab
            for lab, fit in zip(out, fits)]


def checks(fit: Mapping[str, Any], form: str, targets: Targets = TARGETS) -> list[Check]:
    """The targets on one form of a fit: R², MAPE, held-out MAPE by rank and by length (those that exist)."""
    f = fit["forms"][form]
    cells = f.get("cells") or []
    out = []
    r2 = f["law"]["r2"]
    worst = sorted((c for c in cells if c["predicted"] is not None),
                   key=lambda c: -abs(c["predicted"] - c["delta_loss"]))[:WORST_FOR_R2]
    met = r2 is not None and r2 >= targets.r2
    out.append(Check("R²", r2, targets.r2, met, [] if met else worst))
    mape = f["law"]["mape"]
    out.append(_mape_check("MAPE", mape, targets.mape, cells))
    for split in ("rank", "length"):
        ho = f["held_out"].get(split)
        if ho is not None:
            out.append(_mape_check(f"held-out MAPE by {split}", ho["mape"], targets.held_out_mape, ho.get("cells") or []))
    return out


def _mape_check(name: str, value: float | None, limit: float, cells: Iterable[Mapping[str, Any]]) -> Check:
    met = value is not None and value <= limit
    over = sorted((c for c in cells if c["ape"] is None or c["ape"] > limit), key=lambda c: -(c["ape"] or 0))
    return Check(name, value, limit, met, [] if met else [dict(c) for c in over])


def cell_text(c: Mapping[str, Any]) -> str:
    """A cell and its error: "r4 ℓ50 seed 1: ΔL 6.78, predicted 7.41 (+9.3%)"."""
    seed = f" seed {c['seed']:g}" if c.get("seed") is not None else ""
    if c.get("predicted") is None:
        return f"r{c['rank']:g} ℓ{c['length']:g}{seed}: ΔL {c['delta_loss']:.3g}, no prediction"
    err = (c["predicted"] - c["delta_loss"]) / abs(c["delta_loss"]) * 100 if c["delta_loss"] else None
    signed = "" if err is None else f" ({err:+.1f}%)"
    return f"r{c['rank']:g} ℓ{c['length']:g}{seed}: ΔL {c['delta_loss']:.3g}, predicted {c['predicted']:.3g}{signed}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}%"


def _values(v: Iterable[float]) -> str:
    return ",".join(f"{x:g}" for x in v)


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


COLUMNS = ("experiment", "cells", "seeds", "≥ 95% of L_base", "C", "α", "β", "b", "R²", "MAPE",
           "held-out MAPE by rank", "held-out MAPE by length", "sd of ΔL across seeds", "left out")


def form_table(fits: Sequence[Mapping[str, Any]], form: str, names: Sequence[str] | None = None) -> str:
    """One form's table: a row per fit that has the form (parameters ± standard error, R², MAPE, held-out
    MAPE by rank and by length, cells, seeds, cells within 95% of L_base, the seeds' spread, cells left out).
    A fit that did not converge is marked "(not converged)" after its name."""
    names = list(names or labels(fits))
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(["---"] + ["--:"] * (len(COLUMNS) - 1)) + "|"]
    for name, fit in zip(names, fits):
        f = fit["forms"].get(form)
        if f is None:
            continue
        law, c = f["law"], fit["cells"]
        spread = fit.get("seed_spread")
        sd = ("-" if not spread else f"{spread['sd_median']:.3g}" + (
            f" ({spread['rel_sd_median']:.1f}%)" if spread.get("rel_sd_median") is not None else ""))
        row = [_escape(name) + ("" if law["converged"] else " (not converged)"), str(c["n"]),
               _values(c["seeds"]) if c.get("seeds") else "-",
               "-" if c.get("saturated") is None else f"{c['saturated']}/{c['n']}",
               *(_param(law, k) for k, _ in SYMBOLS),
               "-" if law["r2"] is None else f"{law['r2']:.4f}", _pct(law["mape"]),
               *(_pct(f["held_out"][s]["mape"]) if f["held_out"].get(s) else "-" for s in ("rank", "length")),
               sd, str(len(fit.get("excluded") or []))]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _param(law: Mapping[str, Any], key: str) -> str:
    if key not in law["params"]:
        return "-"
    if key == "b" and law.get("fix_b"):
        return "0 (fixed)"
    return pm(law["params"][key], law["stderr"][key])


def form_name(form: str, fits: Sequence[Mapping[str, Any]] = ()) -> str:
    """"The paper's form", "The bounded form", and ", b = 0" where the paper's form was fitted with b held at 0."""
    name = FORM_NAMES.get(form, form)
    fixed = [fit["forms"][form]["law"].get("fix_b") for fit in fits if form in fit["forms"]]
    return name + (", b = 0" if fixed and all(fixed) and "b = 0" not in name else "")


def markdown(fits: Sequence[Mapping[str, Any]], *, targets: Targets = TARGETS, names: Sequence[str] | None = None) -> str:
    """The whole table: one table per law form fitted, then the held-out splits, the seeds' spread, the cells
    left out and why, and the targets met or missed, each missed one with the cells that miss it."""
    names = list(names or labels(fits))
    forms = list(dict.fromkeys(form for fit in fits for form in fit["forms"]))
    parts = []
    for form in forms:
        formula = next(fit["forms"][form]["formula"] for fit in fits if form in fit["forms"])
        parts += [f"**{form_name(form, fits)}**, {formula} (± standard error):", "", form_table(fits, form, names), ""]
    parts += ["Columns: cells fitted; seeds; cells whose ΔL reaches 95% of their L_base (the ceiling); the law's "
              "parameters; R² and MAPE of the fit on its cells; held-out MAPE (fitted on the smaller half of the "
              "ranks or lengths, predicting the rest); median sd of ΔL over seeds at one (rank, length) (% of ΔL); "
              "cells left out (listed below).", ""]
    parts += _details(fits, names, forms, targets)
    return "\n".join(parts).rstrip() + "\n"


def _details(fits: Sequence[Mapping[str, Any]], names: Sequence[str], forms: Sequence[str],
             targets: Targets) -> list[str]:
    out = []
    for name, fit in zip(names, fits):
        lines = []
        splits = []
        for split in ("rank", "length"):
            ho = next((f["held_out"][split] for f in fit["forms"].values() if f["held_out"].get(split)), None)
            if ho is not None:
                key = "ranks" if split == "rank" else "lengths"
                splits.append(f"by {split}, fitted on {key} {_values(ho['train_' + key])} and predicting "
                              f"{_values(ho['test_' + key])}")
        if splits:
            lines.append("held out: " + "; ".join(splits) + ".")
        spread = fit.get("seed_spread")
        if spread:
            lines.append(f"seeds: {spread['pairs']} (rank, length) hold ≥ 2 cells; sd of ΔL median {spread['sd_median']:.3g}, "
                         f"max {spread['sd_max']:.3g} nats at r{spread['sd_max_at'][0]:g} ℓ{spread['sd_max_at'][1]:g}; "
                         f"each cell against its (rank, length) mean: MAPE {_pct(spread['replicate_mape'])}.")
        for e in fit.get("excluded") or []:
            seed = f" seed {e['seed']:g}" if e.get("seed") is not None else ""
            lines.append(f"left out: r{e['rank']:g} ℓ{e['length']:g}{seed}: {e['reason']}.")
        for form in forms:
            if form not in fit["forms"]:
                continue
            if not fit["forms"][form]["law"]["converged"]:
                lines.append(f"{form_name(form, [fit]).replace('The ', 'the ')} did not converge: its numbers are "
                             "those of the last iterate, not a least-squares fit.")
            lines.append(target_line(fit, form, targets))
        out.append(f"- **{_escape(name)}**: {lines[0]}")
        out += [f"  - {line}" for line in lines[1:]]
    if out:
        out = [f"Targets: {targets.describe()}.", ""] + out
    return out


def target_line(fit: Mapping[str, Any], form: str, targets: Targets = TARGETS) -> str:
    """"the paper's form: meets every target" or which it misses, by how much, and the cells that miss it."""
    missed = [c for c in checks(fit, form, targets) if not c.met]
    head = form_name(form, [fit]).replace("The ", "the ")
    if not missed:
        return f"{head}: meets every target."
    parts = []
    for c in missed:
        value = "-" if c.value is None else (f"{c.value:.4f}" if c.name == "R²" else f"{c.value:.2f}%")
        bound = f"≥ {c.limit:g}" if c.name == "R²" else f"≤ {c.limit:g}%"
        n = len(c.misses)
        what = "largest errors" if c.name == "R²" else (f"{n} cell{'s' if n != 1 else ''} off by more than {c.limit:g}%"
                                                         if c.misses else "no single cell beyond it")
        shown = "; ".join(cell_text(m) for m in c.misses[:SHOWN_CELLS])
        more = f"; and {len(c.misses) - SHOWN_CELLS} more" if len(c.misses) > SHOWN_CELLS else ""
        parts.append(f"{c.name} {value} (target {bound}; {what}{': ' + shown + more if shown else ''})")
    return f"{head}: misses " + "; ".join(parts) + "."


def capacity_table(fits: Sequence[Mapping[str, Any]], names: Sequence[str] | None = None) -> str:
    """Bits per parameter at the capacity frontier (per rank, the largest ℓ recalled in full), one row per
    fit and rank, and the published figures beside them; "-" where the cells carry no bit count; a line per
    fit whose bits were recounted from its cells' configs (`bits.recount_note`)."""
    names = list(names or labels(fits))
    lines = ["| experiment | rank | ℓ_max | cells at 100% EM | params | bits | bits/param | tokens/param |",
             "|---|--:|--:|--:|--:|--:|--:|--:|"]
    published, notes = None, []
    for name, fit in zip(names, fits):
        cap = fit.get("capacity") or {}
        published = published or cap.get("published")
        again = recount_note(cap)
        if again:
            notes.append(f"{_escape(name)}: {again}.")
        for p in cap.get("frontier") or []:
            upper = p.get("bits_kind") == "upper"
            bits = p.get("bits_upper") if upper else p.get("bits")
            bpp = p.get("bits_per_param_upper") if upper else p.get("bits_per_param")
            mark = "≤ " if upper else ""
            lines.append(f"| {_escape(name)} | {p['rank']:g} | {p['length']:g} | {p['cells']}/{p['of']} | "
                         f"{'-' if p['n_params'] is None else format(p['n_params'], ',')} | "
                         f"{'-' if bits is None else f'{mark}{bits:.1f}'} | {'-' if bpp is None else f'{mark}{bpp:.4g}'} | "
                         f"{'-' if p['tokens_per_param'] is None else format(p['tokens_per_param'], '.3g')} |")
    if len(lines) == 2:
        return "No rank recalls any length in full (no cell at 100% EM): no capacity frontier.\n"
    text = "\n".join(lines) + "\n" + "".join(f"\n{n}" for n in notes)
    for p in published or []:
        span = f"{p['low']:g}" if p["low"] == p["high"] else f"{p['low']:g}–{p['high']:g}"
        text += f"\nPublished: {p['name']}: {span} {p['unit']} ({p['scope']})."
    return text.rstrip() + "\n"


__all__ = ["Targets", "TARGETS", "Check", "row_label", "labels", "checks", "cell_text", "form_name", "form_table", "markdown",
           "target_line", "capacity_table"]
