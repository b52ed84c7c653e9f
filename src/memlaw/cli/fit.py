"""CLI `memlaw fit`: the law forms side by side per experiment, held out by rank and by length, the
frontier, the cells and seeds behind them. The body is `memlaw.fitting.fit_cells`."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from memlaw.cli._common import JsonOpt, app, flag, out, run, setup_logging
from memlaw.cli.sweep import WhereOpt, _f
from memlaw.law_names import BOTH, FORM_NAMES

SYMBOLS = {"C": "C", "alpha": "α", "beta": "β", "b": "b"}
SHOWN_EXCLUDED = 8
"""Excluded cells listed one by one in the text output (--json lists them all)."""


FitLaw = Enum("FitLaw", {name: name for name in (BOTH, *FORM_NAMES)}, type=str)
"""`--law` choices: every form side by side, or one (`memlaw.law_names`, so the CLI starts without numpy)."""


@app.command()
def fit(
    store: Annotated[Optional[Path], typer.Option("--store", help="Fit the cells of this store.",
                                                  show_default="none: give --store or --csv")] = None,
    csv_file: Annotated[Optional[Path], typer.Option("--csv", help=(
        "Or a CSV with columns rank,length,delta_loss[,em][,l_base][,seed] (a `memlaw runs export` file as it is)."),
        show_default="none")] = None,
    where: WhereOpt = None,
    law: Annotated[FitLaw, typer.Option(help=(
        "Law form: paper, ΔL = C·r^α·ℓ^(−β) + b; bounded, ΔL = L_base·(1 − exp(−C·r^α·ℓ^(−β))), which knows "
        "ΔL cannot exceed L_base and fits saturated cells (needs L_base per cell); both, side by side on the "
        "same cells."))] = FitLaw.both,
    relative: Annotated[bool, flag("--relative", help="Minimise relative residuals (noise that scales with ΔL).")] = False,
    saturated_below: Annotated[Optional[float], typer.Option(
        help="Leave cells with L_final below this (nats) out of the law fits (every form): ΔL cannot exceed "
             "L_base, so fully stored memories sit on that ceiling, where the paper's form does not hold. The "
             "frontier still uses every cell.", show_default="every cell")] = None,
    fix_b: Annotated[bool, flag("--fix-b", help="Hold b = 0 in the paper's form (a pure power law): small grids that "
                                "are nearly log-linear make its free fit diverge (C → ∞, b → −∞).")] = False,
    pool: Annotated[Optional[list[str]], typer.Option(
        "--pool", help="A config key to fit across (repeatable), e.g. --pool benchmark.ratio: experiments that "
                       "differ only in it become one fit, the paper's 'combined' row. Never done unless asked.",
        show_default="none")] = None,
    as_json: JsonOpt = False,
    as_markdown: Annotated[bool, flag("--markdown", help=(
        "Print Markdown laid out as the paper's table instead: a row per experiment, a table per form, then "
        "the held-out splits, the cells left out, the targets (R² ≥ 0.98, MAPE ≤ 5%, held-out MAPE ≤ 10%) "
        "met or missed with the cells that miss them, and bits per parameter at the frontier."))] = False,
) -> None:
    """Fit the memory law: parameters ± standard errors, R², MAPE, AIC, BIC, held-out MAPE by rank and by length.

    ΔL = L_base − L_final is how much the adapter lowers the mean value-token loss; r is the rank, ℓ
    the memory's length in value tokens. Both forms are fitted on the same cells by default; held
    out by rank, a form is fitted on the smaller ranks and predicts the larger, by length on the
    shorter lengths and predicts the longer; the one with the lower mean held-out MAPE is marked
    best (`memlaw plan` uses it). Also: the cells and seeds fitted, the cells left out and why, the
    spread of ΔL across seeds, and the capacity frontier with bits per parameter per rank beside
    published figures (cells stored before bits were kept per cell: recounted from their config with
    the model's tokenizer alone, and said so). One law per experiment: cells that differ
    only in rank, length and seed. Cells that differ in anything else (noise ratio, budget, lr,
    objective, ...) are fitted separately, each labelled by what differs; pick one with --where
    (flat columns or config keys, e.g. benchmark.ratio=r100).
    """
    setup_logging()

    def go():
        from memlaw.errors import ConfigError
        from memlaw.fitting import fit_cells

        if as_json and as_markdown:
            raise ConfigError("give one of --json and --markdown")

        result = fit_cells(store=store, csv=csv_file, where=where, law=law.value, relative=relative,
                           saturated_below=saturated_below, fix_b=fix_b, pool=tuple(pool or ()))
        if as_json:
            out.print_json(json.dumps(result, allow_nan=False))
        elif as_markdown:
            from memlaw.paper_table import capacity_table, markdown

            sys.stdout.write(markdown(result["fits"]) + "\n" + capacity_table(result["fits"]))
        else:
            for res in result["fits"]:
                print_fit(res)

    run(go)


def _pm(v, se) -> str:
    return f"{v:.4g} ± {se:.2g}" if se is not None else f"{v:.4g} ± ?"


def _pct(x) -> str:
    return "-" if x is None else f"{x:.2f}%"


def _values(v) -> str:
    return ",".join(f"{x:g}" for x in v)


def print_fit(res: dict) -> None:
    """One experiment's fit as text: the forms side by side, then seeds, exclusions, frontier, notes."""
    say = lambda text: out.print(text, markup=False, highlight=False, soft_wrap=True)  # noqa: E731
    what = res["experiment"] or res["source"].get("csv") or res["source"].get("store")
    cells = res["cells"]
    seeds = f", seeds {_values(cells['seeds'])}" if cells.get("seeds") else ""
    ceiling = (f"; {cells['saturated']} within 95% of L_base" if cells.get("saturated") is not None else "")
    say(f"{what}: {cells['n']} cells (ranks {_values(cells['ranks'])}; lengths {_values(cells['lengths'])}"
        f"{seeds}){ceiling}")
    forms = res["forms"]
    t = Table()
    t.add_column("")
    for name in forms:
        t.add_column(name + (" (best)" if name == res.get("best") and len(forms) > 1 else ""), justify="right")
    t.add_row("form", *(f["formula"] for f in forms.values()))
    for key, label in SYMBOLS.items():
        if any(key in f["law"]["params"] for f in forms.values()):
            t.add_row(label, *(_pm(f["law"]["params"][key], f["law"]["stderr"][key]) if key in f["law"]["params"]
                               else "-" for f in forms.values()))
    t.add_row("R²", *(_f(f["law"]["r2"], 4) for f in forms.values()))
    t.add_row("MAPE", *(_pct(f["law"]["mape"]) for f in forms.values()))
    t.add_row("AIC / BIC", *(f"{_f(f['law']['aic'], 1)} / {_f(f['law']['bic'], 1)}" for f in forms.values()))
    splits = []
    for split in ("rank", "length"):
        ho = next((f["held_out"][split] for f in forms.values() if f["held_out"][split]), None)
        t.add_row(f"held-out MAPE by {split}", *(_pct(f["held_out"][split]["mape"]) if f["held_out"][split]
                                                 else f"- (one {split})" for f in forms.values()))
        if ho is not None:
            train, test = ((ho["train_ranks"], ho["test_ranks"]) if split == "rank"
                           else (ho["train_lengths"], ho["test_lengths"]))
            splits.append(f"by {split}, fit on {_values(train)} and predict {_values(test)}")
    t.add_row("converged", *("yes" if f["law"]["converged"] else "NO" for f in forms.values()))
    out.print(t)
    if splits:
        say("held out: " + "; ".join(splits) + (f"; best: {res['best']} (lower mean held-out MAPE)"
                                                if res.get("best") and len(forms) > 1 else ""))
    spread = res.get("seed_spread")
    if spread:
        rel = "" if spread["rel_sd_median"] is None else f" ({spread['rel_sd_median']:.2f}% of ΔL)"
        at = spread["sd_max_at"]
        say(f"spread across seeds: {spread['pairs']} (rank, length) with ≥ 2 cells: sd of ΔL median "
            f"{spread['sd_median']:.3g}{rel}, max {spread['sd_max']:.3g} at r={at[0]:g} ℓ={at[1]:g}; each cell against "
            f"its (rank, length) mean: MAPE {_pct(spread['replicate_mape'])}, R² {_f(spread['r2_means'], 4)} (the most "
            "a law of rank and length alone reaches on them)")
    excluded = res.get("excluded", [])
    if excluded:
        shown = "; ".join(f"r={e['rank']} ℓ={e['length']}" + (f" seed {e['seed']}" if e.get("seed") is not None else "")
                          + f": {e['reason']}" for e in excluded[:SHOWN_EXCLUDED])
        more = f"; and {len(excluded) - SHOWN_EXCLUDED} more (--json lists them)" if len(excluded) > SHOWN_EXCLUDED else ""
        say(f"excluded {len(excluded)} cell{'s' if len(excluded) != 1 else ''}: {shown}{more}")
    fr = res.get("frontier")
    if fr:
        pts = ", ".join(f"r={p[0]:g}: ℓ={p[1]:g}" for p in fr["points"])
        say(f"frontier ℓ_max = K·r^γ: K = {_pm(fr['K'], fr['K_stderr'])}, γ = {_pm(fr['gamma'], fr['gamma_stderr'])}"
            f"  [{pts}]" + (f"  ranks without full EM: {fr['missing_ranks']}" if fr["missing_ranks"] else ""))
    _print_capacity(res.get("capacity"))
    for note in res.get("notes", []) + res.get("warnings", []):
        say(f"note: {note}")


def _print_capacity(cap: dict | None) -> None:
    """Bits per parameter at the capacity frontier, per rank, then the published figures to set beside them."""
    if not cap or not cap["frontier"]:
        return
    t = Table(title="capacity frontier: the largest ℓ recalled in full, per rank")
    for col in ("rank", "ℓ_max", "cells at 100% EM", "params", "bits", "bits/param", "tokens/param"):
        t.add_column(col, justify="right")
    for p in cap["frontier"]:
        upper = p["bits_kind"] == "upper"
        bits, bpp = (p.get("bits_upper"), p.get("bits_per_param_upper")) if upper else (p.get("bits"), p.get("bits_per_param"))
        mark = "≤ " if upper else ""
        t.add_row(str(p["rank"]), f"{p['length']:,}", f"{p['cells']}/{p['of']}",
                  "-" if p["n_params"] is None else f"{p['n_params']:,}",
                  "-" if bits is None else f"{mark}{bits:.1f}", "-" if bpp is None else f"{mark}{bpp:.4g}",
                  "-" if p["tokens_per_param"] is None else f"{p['tokens_per_param']:.3g}")
    out.print(t)
    if any(p["bits_kind"] == "upper" for p in cap["frontier"]):
        out.print("note: ≤ marks an upper bound (records with no known generator), not bits", markup=False)
    from memlaw.bits import recount_note

    again = recount_note(cap)
    if again:
        out.print(f"note: {again}", markup=False, soft_wrap=True)
    for p in cap["published"]:
        span = f"{p['low']:g}" if p["low"] == p["high"] else f"{p['low']:g}–{p['high']:g}"
        out.print(f"published: {p['name']}: {span} {p['unit']} ({p['scope']})", markup=False, soft_wrap=True)


__all__ = ["fit", "print_fit"]
