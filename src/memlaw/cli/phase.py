"""CLI commands for the stubborn-token phase transition: `runs records` (the per-record rows each ρ is
computed from, as CSV) and `runs phase` (ρ per group with its interval, null baseline and phase table).
Their bodies are `memlaw.phase` and `memlaw.rho`."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from memlaw.cli._common import JsonOpt, out, print_table, run, setup_logging
from memlaw.cli.sweep import DEFAULT_STORE, StoreOpt, WhereOpt, _f, runs_app
from memlaw.errors import ConfigError


class Unit(str, Enum):
    cell = "cell"
    record = "record"


def _load(store: Path, where: str | None):
    """Finished rows matching `where` and {key: p_t rows} from the store; ConfigError when none match."""
    from memlaw.store import open_store

    with open_store(store, create=False) as db:
        rows = db.load_cells(where)
        probs = {r["key"]: db.token_probs(r["key"]) for r in rows}
    if not rows:
        raise ConfigError(f"{store}: no finished cells" + (f" match --where {where}" if where else ""))
    return rows, probs


@runs_app.command("records")
def runs_records(
    out_file: Annotated[Path, typer.Option("--out", help="CSV file to write (atomically).")],
    store: StoreOpt = DEFAULT_STORE,
    where: WhereOpt = None,
) -> None:
    """Write one row per record of the finished cells: the rows each ρ of `runs phase` is computed from.

    Columns: the cell (key, model, benchmark with its options, objective, kind, rank, length, seed), the
    record's index and verdict (n_value, n_terminator, em, certified, stubborn, earliest_stubborn,
    first_failure, min_p; positions are 0-based answer positions), `inclusion` (rho: failed under greedy
    decoding with a stubborn token, a point of ρ; recalled; no-stubborn; no-position; no-recall) and
    `stubborn_positions` (a JSON list where the cell stored its final p_t, else empty). No key or value.
    """
    setup_logging()

    def go():
        from memlaw.atomic import atomic_write_text, check_output_file
        from memlaw.phase import record_csv, record_table

        path = check_output_file(out_file)          # before any work: not over a directory, link or device
        rows, probs = _load(store, where)
        records = record_table(rows, probs)
        atomic_write_text(path, record_csv(records))
        n = sum(r["inclusion"] == "rho" for r in records)
        out.print(f"wrote {len(records)} records of {len(rows)} cells ({n} in ρ) to {out_file}", markup=False,
                  soft_wrap=True)

    run(go)


@runs_app.command("phase")
def runs_phase(
    store: StoreOpt = DEFAULT_STORE,
    where: WhereOpt = None,
    records: Annotated[Optional[Path], typer.Option(
        "--records", help="Read a `runs records` CSV instead of the store (ρ, interval and null; no phase table).",
        show_default="the store")] = None,
    by: Annotated[str, typer.Option(help="Group by these columns (comma-separated: model, benchmark, objective, "
                                         "kind, rank, length, seed), or `all` for one group.")] = "model,benchmark",
    resamples: Annotated[int, typer.Option(min=100, help="Bootstrap resamples for the interval of ρ.")] = 2000,
    draws: Annotated[int, typer.Option(min=100, help="Monte Carlo draws of the null.")] = 2000,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the bootstrap and the null draws.")] = 0,
    unit: Annotated[Unit, typer.Option(help="What the bootstrap resamples: whole cells (their records share an "
                                            "adapter) or single records.")] = Unit.cell,
    as_json: JsonOpt = False,
) -> None:
    """ρ(earliest stubborn, first failure) per group with n, a bootstrap interval and the null baseline, and
    the phase table (on-path answer positions by p_t > 0.5 / ≤ 0.5 against right / wrong under greedy decoding).

    n counts the records whose greedy output failed and that have a stubborn token (p_t ≤ 0.5). The first
    failure is always a stubborn position at or after the earliest one (greedy is right wherever p_t > 0.5),
    so ρ_null is the ρ of the same records with the failure put at a random one of their stubborn positions
    that decoding reaches: ρ − ρ_null is what the earliest stubborn token adds. ρ_bound keeps only first
    failure ≥ earliest stubborn. The phase table needs cells with stored final p_t (`token_probs` in the grid);
    its "wrong, p_t > 0.5" count must be 0. docs/report.md defines every column.
    """
    setup_logging()

    def go():
        from memlaw.phase import read_record_csv, study, study_records
        from memlaw.rho import PAPER_N, PAPER_RHO, RhoOptions

        keys = () if by.strip() == "all" else tuple(k.strip() for k in by.split(",") if k.strip())
        options = RhoOptions(resamples=resamples, draws=draws, seed=seed, unit=unit.value)
        if records is not None:
            if where:
                raise ConfigError("--where filters the store; with --records, filter the CSV before")
            groups = study_records(read_record_csv(records), by=keys, options=options)
        else:
            rows, probs = _load(store, where)
            groups = study(rows, probs, by=keys, options=options)
        if as_json:
            out.print_json(json.dumps({"by": list(keys), "options": vars(options), "paper": {"rho": PAPER_RHO,
                                       "n": PAPER_N}, "groups": [g.to_dict() for g in groups]}, allow_nan=False))
            return
        _print(groups, options, PAPER_RHO, PAPER_N)

    run(go)


def _print(groups, options, paper_rho: float, paper_n: int) -> None:
    pct = f"{100 * options.level:.0f}%"
    t = Table(title=f"ρ(earliest stubborn, first failure): {pct} {options.unit} bootstrap ({options.resamples}), "
                    f"null over {options.draws} draws, seed {options.seed}")
    for c in ("group", "n", "cells", "ρ", "interval", "ρ_null [range]", "ρ−ρ_null", "p(null)", "ρ_bound",
              "at earliest (null)", "ff<es", "right >.5", "right ≤.5", "wrong ≤.5", "wrong >.5"):
        t.add_column(c, justify="left" if c == "group" else "right")
    for g in groups:
        c, ph = g.correlation, g.phase or {}
        t.add_row(g.label, str(c.n), str(c.cells_in_rho), _f(c.rho), _pair(c.ci),
                  f"{_f(c.rho_null)} {_pair(c.null_interval)}", _f(c.excess),
                  "-" if c.p_null is None else f"{c.p_null:.2g}", _f(c.rho_bound),
                  f"{c.exact}/{c.n} ({_f(c.exact_null, 1)})", str(c.order_violations),
                  *(str(ph[k]) if ph else "-" for k in ("right_above", "right_below", "wrong_below", "violations")))
    t.add_row("paper", str(paper_n), "-", f"{paper_rho}", *["-"] * 11)
    print_table(t)
    for g in groups:
        c = g.correlation
        left = ", ".join(f"{v} {k}" for k, v in c.counts.items() if k != "rho" and v)
        extra = [f"{g.cells_without_records} cells without verdicts"] if g.cells_without_records else []
        extra += [c.note] if c.note else []
        extra += [f"phase table from {g.cells_with_probs} of {g.cells} cells (the others stored no final p_t)"
                  ] if g.phase is not None and g.cells_with_probs < g.cells else []
        out.print(f"{g.label}: {c.records} records ({left or 'none left out'})" +
                  "".join(f"; {e}" for e in extra), markup=False, soft_wrap=True)


def _pair(pair) -> str:
    return "-" if pair is None else f"[{pair[0]:.3f}, {pair[1]:.3f}]"
