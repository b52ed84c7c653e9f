"""`memlaw fit`: the cells of a store (or an exported CSV), one law table per experiment (DESIGN.md §7).

An experiment is a set of cells that differ only in rank, length and seed (`memlaw.experiments`);
each gets `memlaw.law.fit_table`: both law forms on the same cells, held out by rank and by length,
the frontier, the cell and seed counts, the spread across seeds and the cells left out, with why.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

from memlaw.errors import ConfigError, FitWarning, MemlawError
from memlaw.experiments import config_of, experiment_of, flat, group, one_experiment, without
from memlaw.fileio import json_ready
from memlaw.law import BOTH, fit_table, read_law_csv

OPTIONAL = ("seed", "L_base")
"""Store columns a law row carries when the cell has them (seeds for the spread, L_base for the bounded form)."""


def law_rows(rows: list[dict[str, Any]], pool: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Store rows -> law rows {rank, length, delta_loss, em, certified, L_final[, seed][, L_base][, group]}, after
    checking they form one experiment (`group`: the values of the `pool` keys, when pooled).

    Raises:
        ConfigError: no usable row, or rows of several experiments (cells that differ in more than
            rank, length and seed; the message names the keys and how to pick one with --where).
    """
    usable = [r for r in rows if r.get("status", "done") == "done" and r.get("delta_loss") is not None]
    if not usable:
        raise ConfigError("no finished cells with a ΔL match; check the store and the --where filter")
    one_experiment(usable, pool)
    return [{"rank": r["rank"], "length": r["length"], "delta_loss": r["delta_loss"], "em": r.get("em_rate"),
             "certified": r.get("certified_rate"), "L_final": r.get("L_final"),
             **{k: r[k] for k in OPTIONAL if r.get(k) is not None}, **_group(r, pool)} for r in usable]


def _group(row: dict[str, Any], pool: tuple[str, ...]) -> dict[str, Any]:
    """{"group": the pooled keys' values} for a pooled fit's row: cells at one (rank, length) but another
    ratio are not seeds of one another, so the spread across seeds is taken within each group."""
    if not pool:
        return {}
    f = flat(config_of(row) or {})
    return {"group": json.dumps([f.get(k) for k in pool])}


def fit_rows(rows: list[dict[str, Any]], *, law: str = BOTH, relative: bool = False,
             saturated_below: float | None = None, fix_b: bool = False) -> dict[str, Any]:
    """`law.fit_table` on law rows, plus the group's ranges; FitWarnings are caught into `warnings`."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FitWarning)
        out = fit_table(rows, law=law, relative=relative, saturated_below=saturated_below, fix_b=fix_b)
    out["warnings"] = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, FitWarning)))
    out["ranks"] = sorted({float(r["rank"]) for r in rows})
    out["lengths"] = sorted({float(r["length"]) for r in rows})
    return out


def fit_cells(*, store: str | os.PathLike | None = None, csv: str | os.PathLike | None = None,
              where: str | None = None, law: str = BOTH, relative: bool = False,
              saturated_below: float | None = None, fix_b: bool = False, pool: tuple[str, ...] = ()) -> dict[str, Any]:
    """`memlaw fit`: one law table per experiment (cells that differ only in rank, length and seed) of a store or CSV.

    Args:
        law: "both" (every form on the same cells), "paper" or "bounded".
        pool: dotted config keys to fit across, e.g. ("benchmark.ratio",): experiments that differ only
            in them are fitted as one (the paper's "combined" row); never used unless asked.

    Returns:
        {"fits": [...]}: per experiment, `fit_rows`' dict plus `experiment` (what sets it apart from
        the others), `config` (its shared settings), `source`, `n` (rows) and `capacity` (bits per
        parameter at the frontier, per rank, beside published figures: `bits.capacity_summary`; cells
        stored without bits get them recounted from their config, `memlaw.recount.with_bits`). Its
        `excluded` also lists the store's cells of that experiment that failed or have no ΔL.

    Raises:
        ConfigError: not exactly one of `store` and `csv`, `where` with a CSV, a bad law form, or no usable rows.
    """
    from memlaw.bits import capacity_summary, csv_columns
    from memlaw.recount import with_bits

    if (store is None) == (csv is None):
        raise ConfigError("give exactly one of --store or --csv")
    from memlaw.exports import is_export, read_export

    if csv is not None and where:
        raise ConfigError("--where filters a store; it does not apply to --csv")
    stored = store is not None or is_export(csv)     # a store's cells, or a `memlaw runs export` file of them
    unusable: list[dict[str, Any]] = []
    if not stored:                                   # a bare law table: rank,length,delta_loss[,...]
        rows, source = read_law_csv(csv), {"csv": str(csv)}
        extra = csv_columns(csv)                     # n_params and the metrics' bits, where the file has them
        if len(extra) == len(rows):
            rows = [{**e, **r} for r, e in zip(rows, extra)]
    else:
        if store is not None:
            from memlaw.store import open_store

            with open_store(store, create=False) as db:
                every = db.load_cells(where, status=None)
            source = {"store": str(store), "where": where}
        else:
            every, source = read_export(csv), {"csv": str(csv)}
        rows = [r for r in every if r["status"] == "done" and r.get("delta_loss") is not None]
        usable = {id(r) for r in rows}
        unusable = [r for r in every if id(r) not in usable]
        if not rows:
            raise ConfigError("no finished cells with a ΔL match; check the " + (
                "store and the --where filter" if store is not None else "file"))
    left_out = _by_experiment(unusable, pool)
    fits = []
    for experiment in group(rows, pool):    # one law per experiment: never across ratios, budgets, objectives
        lrows = law_rows(experiment.rows, pool) if stored else experiment.rows
        fit = fit_rows(lrows, law=law, relative=relative, saturated_below=saturated_below, fix_b=fix_b)
        fit["excluded"] = left_out.get(_key(experiment.config), []) + fit["excluded"]
        if pool:
            fit["pooled"] = list(pool)
            fit["pooled_values"] = pooled_values(experiment.rows, pool)
        fits.append({**fit, "experiment": experiment.label, "config": experiment.config, "source": source,
                     "n": len(lrows), "capacity": capacity_summary(experiment.rows, with_bits)})
    return json_ready({"fits": fits})


def pooled_values(rows: list[dict[str, Any]], pool: tuple[str, ...]) -> dict[str, list[Any]]:
    """{pooled key: its distinct values among `rows`, in first-seen order}: what a pooled fit combines."""
    out: dict[str, list[Any]] = {k: [] for k in pool}
    for r in rows:
        f = flat(config_of(r) or {})
        for k in pool:
            if f.get(k) not in out[k]:
                out[k].append(f.get(k))
    return out


def _key(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True)


def _by_experiment(rows: list[dict[str, Any]], pool: tuple[str, ...] = ()) -> dict[str, list[dict[str, Any]]]:
    """The store's unusable cells (failed, or done without a ΔL) by experiment, each with its reason.

    The error text of a failed cell is left out: it may quote a record.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        try:
            key = _key(without(experiment_of(r), pool, r))
        except MemlawError:                 # a config this memlaw cannot read belongs to no experiment here
            continue
        short = str(r.get("key"))[:12]
        reason = f"failed (its error: memlaw runs show {short})" if r["status"] == "failed" else "no ΔL measured"
        out.setdefault(key, []).append({"rank": r.get("rank"), "length": r.get("length"), "seed": r.get("seed"),
                                        "key": short, "reason": reason})
    return out


__all__ = ["law_rows", "fit_rows", "fit_cells"]
