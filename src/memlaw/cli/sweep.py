"""CLI commands for studies: sweep, runs (list, show, export), fit, plan."""

from __future__ import annotations

import dataclasses
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from memlaw.cli._common import (DeviceOpt, JsonOpt, OnlineOpt, VerboseOpt, app, err, flag, go_online, nullcontext, out,
                                print_table, run, setup_logging)
from memlaw.errors import ConfigError, MemlawError

runs_app = typer.Typer(no_args_is_help=True, help="Inspect and export the cells in a results store.")
app.add_typer(runs_app, name="runs")

StoreOpt = Annotated[Path, typer.Option("--store", help="SQLite results store.")]
WhereOpt = Annotated[Optional[str], typer.Option(
    help="Filter on store columns, e.g. model=smollm2-135m,kind=probe,rank>=4 (ops = != < <= > >=).",
    show_default="every cell")]
DEFAULT_STORE = Path("runs.db")


class Executor(str, Enum):
    local = "local"
    ray = "ray"


class Format(str, Enum):
    csv = "csv"
    parquet = "parquet"


def _f(x, p: int = 3) -> str:
    return "-" if x is None else f"{x:.{p}f}"


def _duration(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _cell_line(e) -> str:
    c, m = e.result.cell, e.result.metrics
    what = (f"ΔL {_f(m.get('delta_loss'))}  EM {_f(m.get('em_rate'), 2)}  certified {_f(m.get('certified_rate'), 2)}"
            f"  {m.get('steps')} steps  {_f(m.get('wall_s'), 1)} s" if e.result.status == "done"
            else f"FAILED: {e.result.error}")
    return (f"cell {e.done}/{e.total}  rank {c.rank}  length {c.length}  seed {c.seed}  {what}"
            f"  (ETA {_duration(e.eta_s)})")


def sweep_progress(show_bar: bool, quiet: bool):
    """(context, on_cell, on_step): a rich bar over cells with ETA plus the running cell's steps on a TTY,
    one line per finished cell otherwise."""
    if not show_bar:
        def on_cell(e) -> None:
            if e.result is not None and not quiet:
                err.print(_cell_line(e), markup=False, highlight=False, soft_wrap=True)
        return nullcontext(), on_cell, None
    bar = Progress(TextColumn("[bold]{task.fields[what]}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TextColumn("{task.description}"), TimeElapsedColumn(), console=err, transient=False)
    state: dict = {"cells": None, "steps": None, "checked": ""}

    def on_cell(e) -> None:
        if state["cells"] is None:
            state["cells"] = bar.add_task("", total=e.total, what="cells")
        desc = f"ETA {_duration(e.eta_s)}" + (f"  {e.skipped} already stored" if e.skipped else "")
        if e.failed:
            desc += f"  {e.failed} failed"
        bar.update(state["cells"], completed=e.done, description=desc)
        if e.result is not None:
            bar.console.print(_cell_line(e), markup=False, highlight=False, soft_wrap=True)

    def on_step(info) -> None:
        if state["steps"] is None or info.step == 1:
            if state["steps"] is not None:
                bar.remove_task(state["steps"])
            state["steps"], state["checked"] = bar.add_task("", total=info.total, what="write"), ""
        if info.certified is not None:             # counts exist at check steps only: keep the last ones
            state["checked"] = f"  stubborn {info.stubborn}  certified {info.certified}/{info.n_records}"
        bar.update(state["steps"], completed=info.step, description=f"loss {info.loss:.4f}{state['checked']}")

    return bar, on_cell, on_step


@app.command()
def sweep(
    grid: Annotated[Path, typer.Argument(help="Sweep YAML: model, benchmark, ranks, lengths, seeds, adapter, objective, train.")],
    store: StoreOpt = DEFAULT_STORE,
    executor: Annotated[Executor, typer.Option(help="local: one process, base model resident; ray: Ray actors.")] = Executor.local,
    address: Annotated[Optional[str], typer.Option(help="Ray address: 'auto' joins this machine's cluster.",
                                                   show_default="start a local Ray")] = None,
    num_gpus: Annotated[float, typer.Option(help="Ray: GPUs per actor (0: CPU actors).")] = 0.0,
    num_cpus: Annotated[float, typer.Option(help="Ray: CPUs per actor (torch threads on CPU).")] = 1.0,
    actors: Annotated[Optional[int], typer.Option(help="Ray: number of actors.", show_default="as many as fit")] = None,
    device: DeviceOpt = "auto",
    stack: Annotated[Optional[int], typer.Option(min=1, help="Train up to K probe cells in one forward pass, each "
                                                 "verified and stored alone (overrides the grid's `stack`; 1: off). "
                                                 "Local executor.", show_default="the grid's")] = None,
    dry_run: Annotated[bool, flag("--dry-run", help="List the cells and which are already stored; run nothing.")] = False,
    online: OnlineOpt = False,
    as_json: JsonOpt = False,
    quiet: Annotated[bool, flag("--quiet", "-q", help="No per-cell lines.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Write and verify every cell of GRID not yet in the store (rerun to resume after a crash).

    Exit code 0 when the sweep ran (cells that did not certify are results, stored as such), 2 for
    bad input.

    Local executor: first prints what the cells still to run will cost, and refuses any that cannot work.
    """
    setup_logging(verbose)
    go_online(online)

    def go():
        from memlaw.store import open_store
        from memlaw.sweep import load_sweep, run_sweep

        cfg = load_sweep(grid)
        from memlaw.model_names import check_model_name

        try:                                     # before the store is created: nothing half-written
            check_model_name(cfg.model)
            cfg.cells()                          # each cell's settings (seeds: train.seed) are valid
            if stack is not None:
                cfg = dataclasses.replace(cfg, stack=stack)
        except MemlawError as e:
            raise ConfigError(f"{grid}: {e}") from None
        if cfg.stack > 1 and executor == Executor.ray:
            err.print(f"note: stack {cfg.stack} is for the local executor; Ray actors run one cell at a time",
                      markup=False, highlight=False)
        with open_store(store) as db:
            if dry_run:
                _dry_run(cfg, db.finished_keys(), as_json)
                return
            ctx, on_cell, on_step = sweep_progress(not as_json and sys.stderr.isatty(), quiet or as_json)
            options = ({"address": address, "num_gpus": num_gpus, "num_cpus": num_cpus, "actors": actors,
                        "device": device} if executor == Executor.ray else
                       {"device": device, "on_step": on_step, "base": _announce_cost(cfg, db, device)})
            with ctx:
                summary = run_sweep(cfg, db, executor=executor.value, on_cell=on_cell, **options)
        if as_json:
            out.print_json(json.dumps({**summary.to_dict(), "store": str(store)}))
        else:
            out.print(summary.as_text() + f"; store {store}", markup=False, soft_wrap=True)

    run(go)


def _announce_cost(cfg, db, device: str):
    """Local executor: load the base, refuse cells that cannot work, print what the rest will cost; the base or None."""
    from memlaw.cost import grid_line
    from memlaw.models import load_base
    from memlaw.sweep.cell import cell_records
    from memlaw.sweep.progress import pending_cells

    todo = pending_cells(cfg, db.finished_keys())
    if not todo:
        return None
    base = load_base(cfg.model, dtype=cfg.dtype, device=device)
    err.print(grid_line(todo, base, lambda c: cell_records(c.benchmark, c.length, base.tokenizer)), soft_wrap=True)
    return base


def _dry_run(cfg, finished: set[str], as_json: bool) -> None:
    cells = cfg.cells()
    rows = [{"key": c.key, "rank": c.rank, "length": c.length, "seed": c.seed, "stored": c.key in finished}
            for c in cells]
    if as_json:
        out.print_json(json.dumps({"name": cfg.name, "cells": rows}))
        return
    t = Table(title=f"sweep {cfg.name}: {len(cells)} cells, {sum(r['stored'] for r in rows)} stored")
    for col in ("key", "rank", "length", "seed", "stored"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["key"][:12], str(r["rank"]), str(r["length"]), str(r["seed"]), "yes" if r["stored"] else "no")
    print_table(t)


# ---------------------------------------------------------------- runs


@runs_app.command("list")
def runs_list(
    store: StoreOpt = DEFAULT_STORE,
    where: WhereOpt = None,
    failed: Annotated[bool, flag("--all", help="Include failed cells.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """One line per stored cell: key, model, kind, rank, length, seed, ΔL, EM, certified, steps, wall time."""
    setup_logging()

    def go():
        from memlaw.store import open_store

        with open_store(store, create=False) as db:
            rows = db.load_cells(where, status=None if failed else "done")
        cols = ("key", "status", "model", "kind", "objective", "rank", "length", "seed", "delta_loss", "em_rate",
                "certified_rate", "steps", "wall_s")
        if as_json:
            out.print_json(json.dumps([{c: r[c] for c in cols} for r in rows]))
            return
        t = Table(title=f"{store}: {len(rows)} cells")
        for c in ("key", "status", "model", "kind", "objective", "rank", "ℓ", "seed", "ΔL", "EM", "certified",
                  "steps", "wall s"):
            t.add_column(c, justify="left" if c in ("key", "status", "model", "kind", "objective") else "right")
        for r in rows:
            t.add_row(r["key"][:12], r["status"], r["model"], r["kind"], r["objective"], str(r["rank"]),
                      str(r["length"]), str(r["seed"]), _f(r["delta_loss"]), _f(r["em_rate"], 2),
                      _f(r["certified_rate"], 2), str(r["steps"] if r["steps"] is not None else "-"), _f(r["wall_s"], 1))
        print_table(t)

    run(go)


@runs_app.command("show")
def runs_show(
    key: Annotated[str, typer.Argument(help="Cell key or a unique prefix of it.")],
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Everything stored about one cell, as JSON: columns, config, metrics, versions."""
    setup_logging()

    def go():
        from memlaw.store import open_store

        with open_store(store, create=False) as db:
            full = db.find_key(key)
            (row,) = db.load_cells({"key": full}, status=None, strict=True)
            row["token_probs_rows"] = len(db.token_probs(full))
        out.print_json(json.dumps(row))

    run(go)


@runs_app.command("export")
def runs_export(
    out_file: Annotated[Path, typer.Option("--out", help="File to write (atomically).")],
    fmt: Annotated[Format, typer.Option("--format", help="csv or parquet.")] = Format.csv,
    store: StoreOpt = DEFAULT_STORE,
    where: WhereOpt = None,
) -> None:
    """Write the finished cells to CSV or Parquet (flat columns, `em`, and config/metrics/versions as JSON)."""
    setup_logging()

    def go():
        from memlaw.store import open_store

        with open_store(store, create=False) as db:
            n = db.export(out_file, fmt.value, where=where)
        out.print(f"exported {n} cells to {out_file}", markup=False, soft_wrap=True)

    run(go)


# ---------------------------------------------------------------- fit and plan


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
    the memory's length in value tokens; C, α, β and b are fitted.
    """
    setup_logging()

    def go():
        from memlaw.plan import fit_cells

        result = fit_cells(store=store, csv=csv_file, where=where, relative=relative,
                           saturated_below=saturated_below, fix_b=fix_b)
        if as_json:
            out.print_json(json.dumps(result, allow_nan=False))
        else:
            _print_fit(result)

    run(go)


def _pm(v, se) -> str:
    return f"{v:.4g} ± {se:.2g}" if se is not None else f"{v:.4g} ± ?"


def _print_fit(res: dict) -> None:
    src = res["source"]
    what = src.get("csv") or ", ".join(f"{k}={src[k]}" for k in ("model", "kind", "objective", "benchmark") if k in src)
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
    for note in res.get("notes", []) + res.get("warnings", []):
        out.print(f"note: {note}", markup=False, soft_wrap=True)


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
