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
    help="Filter on store columns or config keys, e.g. model=smollm2-135m,kind=probe,rank>=4,benchmark.ratio=r100 "
         "(ops = != < <= > >=).",
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
    workers: Annotated[str, typer.Option(metavar="auto|N", help="Local executor: processes running cells side by side on the CPU, "
                                         "sharing torch's threads (one per core unless OMP_NUM_THREADS says "
                                         "less); auto: one per thread, at most 8, as memory allows; 1 on a GPU.")
                       ] = "auto",
    dry_run: Annotated[bool, flag("--dry-run", help="List the cells, which are already stored, and an estimate of "
                                  "their cost from the model's known shapes (FLOPs, and time at a stated assumed "
                                  "throughput); load no model, run nothing.")] = False,
    online: OnlineOpt = False,
    as_json: JsonOpt = False,
    quiet: Annotated[bool, flag("--quiet", "-q", help="No per-cell lines.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Write and verify every cell of GRID not yet in the store (rerun to resume after a crash).

    Exit code 0 when the sweep ran (cells that did not certify are results, stored as such; a cell
    that cannot run or whose training diverges is stored as failed with its error, and the sweep goes
    on), 2 for bad input.

    Local executor: first prints what the cells still to run will cost, and refuses any that cannot work.
    """
    setup_logging(verbose)
    go_online(online)

    def go():
        from memlaw.store import open_store
        from memlaw.sweep import load_sweep, run_sweep

        cfg = load_sweep(grid)
        n_workers = _workers(workers)
        from memlaw.model_names import check_model_name

        try:                                     # before the store is created: nothing half-written
            if not dry_run:                      # a dry run lists and estimates: it needs no model
                check_model_name(cfg.model)
            cfg.cells()                          # each cell's settings (seeds: train.seed) are valid
            if stack is not None:
                cfg = dataclasses.replace(cfg, stack=stack)
        except MemlawError as e:
            raise ConfigError(f"{grid}: {e}") from None
        if cfg.stack > 1 and executor == Executor.ray:
            err.print(f"note: stack {cfg.stack} is for the local executor; Ray actors run one cell at a time",
                      markup=False, highlight=False)
        if dry_run:                              # reads the store if there is one, creates nothing
            _dry_run(cfg, _stored_keys(store), as_json)
            return
        with open_store(store) as db:
            ctx, on_cell, on_step = sweep_progress(not as_json and sys.stderr.isatty(), quiet or as_json)
            options = ({"address": address, "num_gpus": num_gpus, "num_cpus": num_cpus, "actors": actors,
                        "device": device} if executor == Executor.ray else
                       {"device": device, "on_step": on_step, "workers": n_workers,
                        "base": _announce_cost(cfg, db, device)})
            with ctx:
                summary = run_sweep(cfg, db, executor=executor.value, on_cell=on_cell, **options)
        if as_json:
            out.print_json(json.dumps({**summary.to_dict(), "store": str(store)}))
        else:
            out.print(summary.as_text() + f"; store {store}", markup=False, soft_wrap=True)

    run(go)


def _workers(text: str) -> int | str:
    """`--workers`: "auto" or a whole number of at least 1."""
    if text == "auto":
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise ConfigError(f"--workers must be 'auto' or a whole number of at least 1, got {text!r}")


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
    """List the cells, count them and estimate their cost from the model's shapes (`memlaw.flops`), loading nothing."""
    from memlaw.flops import grid_cost

    cells = cfg.cells()
    todo = {c.key for c in cells if c.key not in finished}
    cost = grid_cost(cells, todo)
    rows = [{"key": c.key, "benchmark": _bench_label(c.benchmark), "objective": c.objective.name, "rank": c.rank,
             "length": c.length, "seed": c.seed, "stored": c.key in finished, "cost": k.to_dict()}
            for c, k in zip(cells, cost.cells)]
    if as_json:
        out.print_json(json.dumps({"name": cfg.name, "model": cfg.model, "n_cells": len(cells),
                                   "n_stored": len(cells) - len(todo), "cells": rows, "cost": cost.to_dict()}))
        return
    t = Table(title=f"sweep {cfg.name}: {len(cells)} cells, {len(cells) - len(todo)} stored")
    for col in ("key", "benchmark", "objective", "rank", "length", "seed", "stored", "params", "steps", "FLOP",
                "time"):
        t.add_column(col, justify="right" if col in ("rank", "length", "seed", "params", "steps", "FLOP", "time")
                     else "left")
    for r in rows:
        k = r["cost"]
        t.add_row(r["key"][:12], r["benchmark"], r["objective"], str(r["rank"]), str(r["length"]), str(r["seed"]),
                  "yes" if r["stored"] else "no", _count(k["n_params"]), _count(k["steps"]),
                  "-" if k["flops"] is None else f"{k['flops']:.2g}", _duration(k["seconds"]) if k["seconds"] else "-")
    print_table(t)
    out.print(cost.line(len(todo)), markup=False, highlight=False, soft_wrap=True)


def _stored_keys(store: Path) -> set[str]:
    from memlaw.store import open_store

    if not store.exists():
        return set()
    with open_store(store, create=False) as db:
        return db.finished_keys()


def _bench_label(b) -> str:
    opts = {k: v for k, v in b.options().items() if k in ("ratio", "source") and v is not None}
    rule = "" if "rule" not in b.key_dict() else f" {b.rule_text()}"   # the paper's rule: not shown
    return b.name + "".join(f" {v}" for v in opts.values()) + rule


def _count(x) -> str:
    return "-" if x is None else f"{x:,}"


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
    failed: Annotated[bool, flag("--failed", help=(
        "Also write the failed cells (status failed, their error text left out: it may quote a record), so "
        "`memlaw fit --csv` lists them among the cells left out, as it does on the store."))] = False,
) -> None:
    """Write the finished cells to CSV or Parquet (flat columns, `em`, and config/metrics/versions as JSON)."""
    setup_logging()

    def go():
        from memlaw.exports import export_cells
        from memlaw.store import open_store

        with open_store(store, create=False) as db:
            n = export_cells(db, out_file, fmt.value, where=where, status=None if failed else "done")
        out.print(f"exported {n} cells to {out_file}", markup=False, soft_wrap=True)

    run(go)


@runs_app.command("compare")
def runs_compare(
    store: StoreOpt = DEFAULT_STORE,
    where: WhereOpt = None,
    metric: Annotated[Optional[str], typer.Option(
        help="What to compare: em_rate, free_acc, certified_rate, delta_loss, held_out_em_rate, "
             "locality.kl_mean (what the adapter costs the base model; the lower wins), ... "
             "(default: the benchmark's headline, EM or, for long-context, free-run token accuracy).",
        show_default="the benchmark's headline")] = None,
    as_json: JsonOpt = False,
) -> None:
    """MemFT vs SFT: objectives run on the same memories, mean ± sd over seeds per rank × length.

    A * marks the objective whose mean beats every other's by more than the larger sd of the two;
    without one the cell is a tie (with one seed there is no spread, so no mark).
    """
    setup_logging()

    def go():
        from memlaw.errors import ConfigError
        from memlaw.experiments import compare
        from memlaw.store import open_store

        with open_store(store, create=False) as db:
            rows = db.load_cells(where)
        tables = [c for c in compare(rows, metric) if len(c.objectives) > 1]
        if not tables:
            raise ConfigError(f"{store}: no cells that differ only in their objective" +
                              (f" match --where {where}" if where else "") + "; run a grid with `objectives:`")
        if as_json:
            out.print_json(json.dumps([{"setup": c.label, "metric": c.metric, "columns": c.columns,
                                        "winners": [c.winner(col) for col in c.columns],
                                        "cells": {o: [None if (s := c.cells[o].get(col)) is None else vars(s)
                                                      for col in c.columns] for o in c.objectives}}
                                       for c in tables]))
            return
        for c in tables:
            t = Table(title=f"{c.label}: {c.metric} (mean ± sd over seeds [n])")
            t.add_column("objective")
            for r, n in c.columns:
                t.add_column(f"r{r} ℓ{n}", justify="right")
            for name in c.objectives:
                cells = []
                for col in c.columns:
                    s = c.cells[name].get(col)
                    text = "-" if s is None else f"{s.mean:.3f}" + (f" ± {s.sd:.3f}" if s.sd is not None else "")
                    cells.append(text + (f" [{s.n}]" if s else "") + (" *" if c.winner(col) == name else ""))
                t.add_row(name, *cells)
            print_table(t)

    run(go)
