"""CLI `memlaw plan`: which rank some records need, from the law and frontier of a store's cells, and the
command that writes them. The body is `memlaw.plan.plan_records`."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from memlaw.cli._common import DeviceOpt, JsonOpt, OnlineOpt, app, flag, go_online, out, run, setup_logging
from memlaw.cli.sweep import DEFAULT_STORE, StoreOpt, WhereOpt, _f
from memlaw.errors import ConfigError
from memlaw.law_names import AUTO, FORM_NAMES


LawForm = Enum("LawForm", {name: name for name in (AUTO, *FORM_NAMES)}, type=str)
"""`--law` choices: the form that predicts held-out cells better, or one (`memlaw.law_names`: no numpy)."""


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
    law: Annotated[LawForm, typer.Option(help=(
        "Law form: auto, whichever of the two predicts held-out cells better (fitted on the smaller ranks and "
        "shorter lengths, checked on the rest); paper, ΔL = C·r^α·ℓ^(−β) + b; bounded, ΔL = L_base·(1 − "
        "exp(−C·r^α·ℓ^(−β))).")
    )] = LawForm.auto,
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
    scores, converged = p.law_choice.get("held_out_mape", {}), p.law_choice.get("converged", {})
    if len(scores) > 1:
        say("  chosen for its lower held-out MAPE (mean of by rank and by length; a form whose fit did not converge "
            "is not a candidate): " + ", ".join(f"{name} {'-' if v is None else f'{v:.2f}%'}"
                                              f"{'' if converged.get(name, True) else ' (did not converge)'}"
                                              for name, v in scores.items()))
        if compared := p.law_choice.get("notes"):
            say("  warnings of the fits compared (each form on all cells, and held out by rank and by length), "
                "not of the law used:")
            for note in compared:
                say(f"    {note}")
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


__all__ = ["plan"]
