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

from memlaw.cli._common import app, err, nullcontext, out, print_table, run, setup_logging
from memlaw.errors import ConfigError, MemlawError

runs_app = typer.Typer(no_args_is_help=True, help="Inspect and export the cells in a results store.")
app.add_typer(runs_app, name="runs")

StoreOpt = Annotated[Path, typer.Option("--store", help="SQLite results store.")]
WhereOpt = Annotated[Optional[str], typer.Option(
    help="Filter on store columns, e.g. model=smollm2-135m,kind=probe,rank>=4 (ops = != < <= > >=).")]
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
    address: Annotated[Optional[str], typer.Option(help="Ray address: none starts a local Ray; 'auto' joins this machine's cluster.")] = None,
    num_gpus: Annotated[float, typer.Option(help="Ray: GPUs per actor (0: CPU actors).")] = 0.0,
    num_cpus: Annotated[float, typer.Option(help="Ray: CPUs per actor (torch threads on CPU).")] = 1.0,
    actors: Annotated[Optional[int], typer.Option(help="Ray: number of actors (default: as many as fit).")] = None,
    device: Annotated[str, typer.Option(help="auto (cuda if available), cpu or cuda.")] = "auto",
    stack: Annotated[Optional[int], typer.Option(min=1, help="Train up to K probe cells in one forward pass, each "
                                                 "verified and stored alone (overrides the grid's `stack`; 1: off). "
                                                 "Local executor.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the cells and which are already stored; run nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No per-cell lines.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Write and verify every cell of GRID not yet in the store (rerun to resume after a crash)."""
    setup_logging(verbose)

    def go():
        from memlaw.store import open_store
        from memlaw.sweep import load_sweep, run_sweep

        cfg = load_sweep(grid)
        from memlaw.models import check_model_name

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
                        "device": device} if executor == Executor.ray else {"device": device, "on_step": on_step})
            with ctx:
                summary = run_sweep(cfg, db, executor=executor.value, on_cell=on_cell, **options)
        if as_json:
            out.print_json(json.dumps({**summary.to_dict(), "store": str(store)}))
        else:
            out.print(summary.as_text() + f"; store {store}", markup=False, soft_wrap=True)

    run(go)


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
    failed: Annotated[bool, typer.Option("--all", help="Include failed cells.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
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
            (row,) = db.load_cells({"key": full}, status=None)
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
    store: Annotated[Optional[Path], typer.Option("--store", help="Fit the cells of this store.")] = None,
    csv_file: Annotated[Optional[Path], typer.Option("--csv", help="Or a CSV with columns rank,length,delta_loss[,em].")] = None,
    where: WhereOpt = None,
    relative: Annotated[bool, typer.Option(help="Minimise relative residuals (noise that scales with ΔL).")] = False,
    saturated_below: Annotated[Optional[float], typer.Option(
        help="Leave cells with L_final below this (nats) out of the law fit: ΔL cannot exceed L_base, so "
             "fully stored memories sit on that ceiling. The frontier still uses every cell.")] = None,
    fix_b: Annotated[bool, typer.Option("--fix-b", help="Hold b = 0 (a pure power law): small grids that "
                                        "are nearly log-linear make the free fit diverge (C → ∞, b → −∞).")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Fit ΔL = C·r^α·ℓ^(−β) + b: parameters ± standard errors, R², MAPE, held-out MAPE, capacity frontier."""
    setup_logging()

    def go():
        from memlaw.errors import ConfigError
        from memlaw.law import read_law_csv
        from memlaw.plan import GROUP, fit_rows, law_rows

        if (store is None) == (csv_file is None):
            raise ConfigError("give exactly one of --store or --csv")
        source: dict = {}
        if csv_file is not None:
            if where:
                raise ConfigError("--where filters a store; it does not apply to --csv")
            rows = read_law_csv(csv_file)
            source = {"csv": str(csv_file)}
        else:
            from memlaw.store import open_store

            with open_store(store, create=False) as db:
                stored = db.load_cells(where)
            rows = law_rows(stored)
            source = {"store": str(store), "where": where, **{k: stored[0][k] for k in GROUP}}
        result = {**fit_rows(rows, relative=relative, saturated_below=saturated_below, fix_b=fix_b), "source": source,
                  "n": len(rows)}
        if as_json:
            out.print_json(json.dumps(result))
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


@app.command()
def plan(
    records: Annotated[Path, typer.Argument(help="Records to write: JSONL or CSV.")],
    model: Annotated[str, typer.Option(help="Base model the adapter is for.")] = "smollm2-135m",
    store: StoreOpt = DEFAULT_STORE,
    kind: Annotated[str, typer.Option(help="Adapter kind whose law to use: probe or lora.")] = "probe",
    where: WhereOpt = None,
    fix_b: Annotated[bool, typer.Option("--fix-b", help="Law with b = 0 (as memlaw fit --fix-b).")] = False,
    saturated_below: Annotated[Optional[float], typer.Option(
        help="Fit the law on cells with L_final at least this (as memlaw fit).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Which rank RECORDS need on MODEL, from the law and frontier fitted to the store's cells."""
    setup_logging()

    def go():
        from memlaw.config import PromptConfig
        from memlaw.encode import encode
        from memlaw.errors import ConfigError
        from memlaw.models import load_base
        from memlaw.plan import law_rows, plan as make_plan, prompt_of
        from memlaw.records import load_records
        from memlaw.store import open_store
        from memlaw.verify import base_answer_losses

        with open_store(store, create=False) as db:
            stored = db.load_cells(f"model={model},kind={kind}" + (f",{where}" if where else ""))
        if not stored:
            raise ConfigError(f"{store}: no finished cells for model {model} and adapter kind {kind}; "
                              "run a sweep for them first")
        rows = law_rows(stored)
        recs = load_records(records)
        prompt = PromptConfig(**(prompt_of(stored) or {}))
        base = load_base(model, dtype=stored[0]["config"].get("dtype", "auto"))
        enc = encode(recs, base.tokenizer, prompt, max_length=base.context_length)
        losses = base_answer_losses(base, enc)
        L_base = sum(loss * len(v) for (loss, _), v in zip(losses, enc.value_ids)) / max(1, enc.length)
        result = make_plan(enc.length, rows, n_records=len(recs), L_base=L_base, fix_b=fix_b,
                           saturated_below=saturated_below)
        if as_json:
            out.print_json(json.dumps({**result.to_dict(), "model": model, "kind": kind, "records": str(records)}))
        else:
            _print_plan(result, model, kind)

    run(go)


def _print_plan(p, model: str, kind: str) -> None:
    out.print(f"{p.n_records} records, ℓ = {p.length} value tokens under {model}; law from {kind} cells", markup=False, soft_wrap=True)
    if p.rank is None:
        out.print("no rank: " + "; ".join(p.notes), markup=False, soft_wrap=True)
        return
    how = {"frontier": f"frontier needs r ≥ {_f(p.frontier_rank, 2)}",
           "law": f"law needs r ≥ {_f(p.law_rank, 2)} for the ΔL needed"}[p.rank_source]
    out.print(f"rank needed: {p.rank}  ({how}" + (f"; smallest measured rank that recalled ℓ ≥ {p.length}: "
              f"{p.measured_rank}" if p.measured_rank is not None else "") + ")", markup=False, soft_wrap=True)
    out.print(f"predicted ΔL at rank {p.rank}: {_f(p.predicted_delta_loss)} nats; needed {_f(p.needed_delta_loss)} "
              f"(L_base {_f(p.L_base)}); margin {_f(p.margin)} nats"
              + (f"; capacity margin {p.capacity_margin:+.0%}" if p.capacity_margin is not None else ""), markup=False, soft_wrap=True)
    if p.extrapolating:
        out.print("EXTRAPOLATING: " + "; ".join(p.extrapolating), markup=False, soft_wrap=True)
    else:
        out.print("within the fitted ranks and lengths (interpolating)", markup=False, soft_wrap=True)
    for note in p.notes:
        out.print(f"note: {note}", markup=False, soft_wrap=True)
