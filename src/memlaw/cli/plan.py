"""CLI commands that read the law off a store: fit (the law and the capacity frontier) and plan (which
rank some records need, and the command that writes them). Their bodies are `memlaw.plan.fit_cells`
and `memlaw.plan.plan_records`."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from memlaw.cli._common import DeviceOpt, JsonOpt, OnlineOpt, app, flag, go_online, out, run, setup_logging
from memlaw.cli.sweep import DEFAULT_STORE, StoreOpt, WhereOpt, _f
from memlaw.errors import ConfigError


@app.command()
def fit(
    store: Annotated[Optional[Path], typer.Option("--store", help="Fit the cells of this store.",
                                                  show_default="none: give --store or --csv")] = None,
    csv_file: Annotated[Optional[Path], typer.Option("--csv", help="Or a CSV with columns rank,length,delta_loss[,em].",
                                                     show_default="none")] = None,
    where: WhereOpt = None,
    relative: Annotated[bool, flag("--relative", help="Minimise relative residuals (noise that scales with ΔL).")] = False,
    saturated_below: Annotated[Optional[float], typer.Option(
        help="Leave cells with L_final below this (nats) out of the law fit: ΔL cannot exceed L_base, so "
             "fully stored memories sit on that ceiling. The frontier still uses every cell.",
        show_default="every cell")] = None,
    fix_b: Annotated[bool, flag("--fix-b", help="Hold b = 0 (a pure power law): small grids that "
                                "are nearly log-linear make the free fit diverge (C → ∞, b → −∞).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Fit ΔL = C·r^α·ℓ^(−β) + b: parameters ± standard errors, R², MAPE, held-out MAPE, capacity frontier.

    ΔL = L_base − L_final is how much the adapter lowers the mean value-token loss; r is the rank, ℓ
    the memory's length in value tokens; C, α, β and b are fitted. One law per experiment: cells
    that differ only in rank, length and seed. Cells that differ in anything else (noise ratio,
    budget, lr, objective, ...) are fitted separately, each labelled by what differs; pick one with
    --where (flat columns or config keys, e.g. benchmark.ratio=r100).
    """
    setup_logging()

    def go():
        from memlaw.plan import fit_cells

        result = fit_cells(store=store, csv=csv_file, where=where, relative=relative,
                           saturated_below=saturated_below, fix_b=fix_b)
        if as_json:
            out.print_json(json.dumps(result, allow_nan=False))
        else:
            for fit in result["fits"]:
                _print_fit(fit)

    run(go)


def _pm(v, se) -> str:
    return f"{v:.4g} ± {se:.2g}" if se is not None else f"{v:.4g} ± ?"


def _print_fit(res: dict) -> None:
    what = res["experiment"] or res["source"].get("csv") or res["source"].get("store")
    law = res["law"]
    out.print(f"ΔL = C·r^α·ℓ^(−β) + b fitted to {res['n']} cells ({what})", markup=False, soft_wrap=True)
    t = Table()
    t.add_column("parameter")
    t.add_column("value ± stderr", justify="right")
    for name, label in (("C", "C"), ("alpha", "α"), ("beta", "β"), ("b", "b")):
        t.add_row(label, _pm(law["params"][name], law["stderr"][name]))
    out.print(t)
    pct = lambda x: "-" if x is None else f"{x:.2f}%"  # noqa: E731
    line = f"R² {_f(law['r2'], 4)}   MAPE {pct(law['mape'])}"
    ho = res.get("held_out")
    if ho:
        fmt = lambda v: ",".join(f"{x:g}" for x in v)  # noqa: E731
        line += (f"   held-out MAPE {pct(ho['mape'])} (fit on ranks {fmt(ho['train_ranks'])}, "
                 f"predict ranks {fmt(ho['test_ranks'])})")
    out.print(line + ("" if law["converged"] else "   (did not converge)"), markup=False, soft_wrap=True)
    fr = res.get("frontier")
    if fr:
        pts = ", ".join(f"r={p[0]:g}: ℓ={p[1]:g}" for p in fr["points"])
        out.print(f"frontier ℓ_max = K·r^γ: K = {_pm(fr['K'], fr['K_stderr'])}, γ = {_pm(fr['gamma'], fr['gamma_stderr'])}"
                  f"  [{pts}]" + (f"  ranks without full EM: {fr['missing_ranks']}" if fr["missing_ranks"] else ""),
                  markup=False)
    _print_capacity(res.get("capacity"))
    for note in res.get("notes", []) + res.get("warnings", []):
        out.print(f"note: {note}", markup=False, soft_wrap=True)


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
    for p in cap["published"]:
        span = f"{p['low']:g}" if p["low"] == p["high"] else f"{p['low']:g}–{p['high']:g}"
        out.print(f"published: {p['name']}: {span} {p['unit']} ({p['scope']})", markup=False, soft_wrap=True)


class LawForm(str, Enum):
    paper = "paper"


class PlanFormat(str, Enum):
    memlaw = "memlaw"
    peft = "peft"
    axolotl = "axolotl"


@app.command()
def plan(
    records: Annotated[Path, typer.Argument(help="Records to write: JSONL or CSV.")],
    model: Annotated[str, typer.Option(help="Base model the adapter is for.")] = "smollm2-135m",
    store: StoreOpt = DEFAULT_STORE,
    kind: Annotated[str, typer.Option(help="Adapter kind whose law to use: probe or lora.")] = "probe",
    where: WhereOpt = None,
    law: Annotated[LawForm, typer.Option(help="Law form to fit: paper, ΔL = C·r^α·ℓ^(−β) + b.")] = LawForm.paper,
    fix_b: Annotated[bool, flag("--fix-b", help="Law with b = 0 (as memlaw fit --fix-b).")] = False,
    saturated_below: Annotated[Optional[float], typer.Option(
        help="Fit the law on cells with L_final at least this (as memlaw fit).", show_default="every cell")] = None,
    fmt: Annotated[PlanFormat, typer.Option("--format", help=(
        "What to print to realise the plan: the memlaw write command, or (LoRA) a PEFT LoraConfig + "
        "TrainingArguments as JSON, or an axolotl YAML."))] = PlanFormat.memlaw,
    out_dir: Annotated[str, typer.Option("--out", help="Adapter directory named in the printed command.")] = "ADAPTER",
    device: DeviceOpt = "auto",
    online: OnlineOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Which rank RECORDS need on MODEL, and the command that writes them, from the store's cells.

    The answer holds for the settings the cells were measured under (budget, learning rate,
    objective, prompt, dtype), which it states; the printed command writes RECORDS under them. The
    rank is the smallest measured one that recalled a length ≥ ℓ; without one, the capacity
    frontier's (an extrapolation, flagged with how far). Loads MODEL (on --device) to measure the
    records' own loss L_base.
    """
    setup_logging()
    go_online(online)

    def go():
        from memlaw.model_names import check_model_name
        from memlaw.plan import plan_records

        if fmt != PlanFormat.memlaw and kind != "lora":
            raise ConfigError(f"--format {fmt.value} writes a LoRA config; the probe is memlaw's own adapter "
                              "(plan --kind lora, or --format memlaw)")
        check_model_name(model)
        result = plan_records(records, store=store, model=model, kind=kind, where=where, law=law.value,
                              fix_b=fix_b, saturated_below=saturated_below, device=device)
        config = result.config(fmt.value, str(records), out_dir) if result.rank is not None else None
        if as_json:
            payload = {**result.to_dict(), "model": model, "kind": kind, "records": str(records),
                       "format": fmt.value, "config": config}
            if result.rank is not None:
                payload["command"] = result.command(str(records), out_dir)
            out.print_json(json.dumps(payload, allow_nan=False))
        else:
            _print_plan(result, model, kind, config, fmt.value)

    run(go)


def _print_plan(p, model: str, kind: str, config: str | None, fmt: str) -> None:
    from memlaw.recipe import budget_text

    say = lambda text: out.print(text, markup=False, highlight=False, soft_wrap=True)  # noqa: E731
    s = p.settings
    say(f"{p.n_records} records, ℓ = {p.length} value tokens (ℓ: value tokens summed over the records) on {model}, "
        f"{kind} adapter")
    template = s.get("prompt.template") or "the tokenizer's default"
    say(f"holds for: objective {s.get('objective.name', '?')}, lr {s.get('train.lr', '?')}, "
        f"budget {budget_text(s)}, prompt {template}, dtype {s.get('dtype', '?')}: the settings of the "
        f"{p.measured.get('cells', 0)} cells it is fitted to (benchmark {s.get('benchmark.name', '?')})")
    say(f"law: {p.law_form}, {p.law_formula} (ΔL = L_base − L_final, the drop in mean value-token loss the "
        f"adapter buys; r the rank)")
    if p.rank is None:
        say("no rank: " + "; ".join(p.notes))
        return
    why = {"measured": f"measured: the smallest rank whose cell recalled and certified every record at "
                       f"ℓ ≥ {p.length}",
           "frontier": f"capacity frontier ℓ_max = K·r^γ (the largest fully recalled ℓ per rank, fitted) needs "
                       f"r ≥ {_f(p.frontier_rank, 2)}",
           "law": f"the law needs r ≥ {_f(p.law_rank, 2)} for the ΔL these records need"}[p.rank_source]
    say(f"rank: {p.rank}  ({why})")
    if p.rank_source == "measured" and p.frontier_rank is not None:
        say(f"  the frontier alone would need r ≥ {_f(p.frontier_rank, 2)} (not measured there)")
    if p.capacity is not None:
        say(f"  capacity at rank {p.rank}: the frontier holds ℓ_max ≈ {p.capacity:.0f} value tokens, "
            f"{abs(p.capacity_margin):.0%} {'more' if p.capacity_margin >= 0 else 'fewer'} than these records need")
    if p.predicted_delta_loss is not None and p.needed_delta_loss is not None:
        say(f"  ΔL: the law predicts {_f(p.predicted_delta_loss)} nats at rank {p.rank}; these records need "
            f"{_f(p.needed_delta_loss)} (their L_base {_f(p.L_base)} minus the L_final of fully recalled cells): "
            f"{_f(abs(p.margin))} nats {'to spare' if p.margin >= 0 else 'short'}")
    ranks, lengths = p.measured.get("ranks", []), p.measured.get("lengths", [])
    grid = (f"measured ranks {min(ranks):g}–{max(ranks):g}, lengths {min(lengths):g}–{max(lengths):g}"
            if ranks and lengths else "the measured grid")
    if p.extrapolating:
        say(f"EXTRAPOLATING beyond {grid}: " + "; ".join(p.extrapolating) +
            ". Nothing measured says this rank holds: add it to a sweep first, or write and check the exit code.")
    else:
        say(f"within {grid} (interpolating)")
    for note in p.notes:
        say(f"note: {note}")
    if config is not None:
        say("write it with:" if fmt == "memlaw" else f"{fmt} config:")
        say(("  " + config) if fmt == "memlaw" else config.rstrip("\n"))


__all__ = ["fit", "plan"]
