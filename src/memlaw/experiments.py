"""Experiments and comparisons over stored cells (rows in, rows out; no I/O).

An **experiment** is a set of cells equal in everything but rank, length and seed
(`CellConfig.experiment`): one law is fitted to it, its seeds are averaged. Cells that differ in
anything else (noise ratio, budget, lr, prompt, dtype, layer, objective, ...) are other experiments,
so `fit`, `plan` and `report` never mix them. A **comparison** is a set of experiments that differ
only in their objective (MemFT vs SFT): its table has one row per objective and one column per
(rank, length), each cell the mean ± sd over seeds.

Rows are store rows (`Store.load_cells`: `config` a dict) or CSV rows (`memlaw runs export`:
`config` a JSON string); a bare law table (rank, length, delta_loss) is one experiment.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from memlaw.errors import ConfigError

SCORE = {"phonebook": "em_rate", "long-context": "free_acc", "linear-rule": "em_rate", "records": "em_rate"}
"""The headline number of a memory per benchmark: EM (records), free-run token accuracy (one long record)."""
SCORE_LABEL = {"em_rate": "EM %", "free_acc": "free-run token accuracy %", "held_out_em_rate": "held-out EM %"}
LOWER_IS_BETTER = ("locality.kl_mean", "locality.kl_max", "locality.kl_first")
"""Metrics where the smaller mean wins a comparison (what an adapter costs the base model)."""


def config_of(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """The cell config of a store or CSV row (None for a bare law table)."""
    cfg = row.get("config")
    if isinstance(cfg, str) and cfg:
        try:
            cfg = json.loads(cfg)
        except json.JSONDecodeError:
            raise ConfigError(f"cell {str(row.get('key'))[:12]}: its config is not valid JSON") from None
    return cfg if isinstance(cfg, dict) else None


def experiment_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row's experiment: its config without rank, length and seed ({} for a bare law table)."""
    from memlaw.sweep.grid import CellConfig

    cfg = config_of(row)
    if cfg is None:
        return {"experiment": row["experiment"]} if row.get("experiment") else {}
    try:
        return CellConfig.from_dict(cfg).experiment()
    except ConfigError as e:
        raise ConfigError(f"cell {str(row.get('key'))[:12]}: its config is not one this memlaw reads ({e})") from None


def flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 0.01}} -> {"train.lr": 0.01}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differing(experiments: Sequence[Mapping[str, Any]]) -> list[str]:
    """The dotted config keys whose values are not the same in every experiment."""
    flats = [flat(e) for e in experiments]
    keys = sorted({k for f in flats for k in f})
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1]


@dataclass
class Experiment:
    """The cells of one experiment, and how it differs from the others it was grouped with."""

    config: dict[str, Any]
    rows: list[Mapping[str, Any]] = field(default_factory=list)
    label: str = ""
    """`key=value` for each config key that differs between the experiments grouped together."""


def group(rows: Iterable[Mapping[str, Any]], pool: Sequence[str] = ()) -> list[Experiment]:
    """Rows by experiment, in first-seen order, each labelled by what sets it apart.

    `pool`: dotted config keys (e.g. `benchmark.ratio`) whose values are let go of, so experiments
    that differ only in them form one group: the paper's law "combined across ratios". A pooled
    group's label names what it pooled over.
    """
    by: dict[str, Experiment] = {}
    for row in rows:
        exp = without(experiment_of(row), pool, row)
        by.setdefault(json.dumps(exp, sort_keys=True), Experiment(exp)).rows.append(row)
    out = list(by.values())
    keys = differing([e.config for e in out])
    for e in out:
        f = flat(e.config)
        e.label = ", ".join(f"{k}={f.get(k)}" for k in keys) or _short(e.config)
        if pool:
            e.label += f" (pooled over {', '.join(pool)})"
    return out


def without(experiment: dict[str, Any], keys: Sequence[str], row: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`experiment` without the dotted `keys` (a copy).

    Raises:
        ConfigError: a key that is not in the cell's config (a typo pools nothing, silently, otherwise).
    """
    if not keys:
        return experiment
    out = json.loads(json.dumps(experiment))
    for key in keys:
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or last not in node:
            known = ", ".join(sorted(flat(experiment)))
            raise ConfigError(f"cannot pool over {key!r}: cell {str((row or {}).get('key'))[:12]} has no such config "
                              f"key (keys: {known})")
        del node[last]
    return out


def one_experiment(rows: Sequence[Mapping[str, Any]], pool: Sequence[str] = ()) -> list[Mapping[str, Any]]:
    """`rows` if they form one experiment.

    Raises:
        ConfigError: the rows mix experiments; the message names every config key that differs and
            how to pick one with --where.
    """
    groups = group(rows, pool)
    if len(groups) > 1:
        keys = differing([e.config for e in groups])
        listed = "; ".join(f"{e.label} ({len(e.rows)} cells)" for e in groups)
        raise ConfigError(f"the cells mix {len(groups)} experiments (they differ in {', '.join(keys)}), each its "
                          f"own law: {listed}; pick one with --where (e.g. --where benchmark=...,objective=...)")
    return list(rows)


def _short(config: Mapping[str, Any]) -> str:
    f = flat(config)
    parts = [f.get("model"), f.get("adapter.kind"), f.get("objective.name"), f.get("benchmark.name")]
    return ", ".join(str(p) for p in parts if p is not None)


# ---------------------------------------------------------------- comparisons (MemFT vs SFT)


def score(row: Mapping[str, Any], metric: str) -> float | None:
    """A cell's number for `metric`: a flat column or metric, `held_out_em_rate` (generalization), or a
    nested metric by its dotted name (`locality.kl_mean`, `held_out.free_acc`)."""
    m = row.get("metrics") or {}
    if isinstance(m, str):
        m = json.loads(m) if m else {}
    if metric == "held_out_em_rate":
        return (m.get("held_out") or {}).get("em_rate", row.get("held_out_em_rate"))
    if "." in metric and metric not in row:
        head, rest = metric.split(".", 1)
        v = (m.get(head) or {}).get(rest) if isinstance(m.get(head), Mapping) else None
        v = row.get(metric.replace(".", "_"), v)          # export CSV columns: locality_kl_mean
    else:
        v = row.get(metric, m.get(metric))
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


@dataclass
class Stat:
    """Mean ± sd of one cell's metric over its seeds (sd None with one seed)."""

    mean: float
    sd: float | None
    n: int
    values: list[float]

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values),
                   list(values))


@dataclass
class Comparison:
    """Objectives on one memory setup: `cells[objective][(rank, length)]` = Stat over seeds."""

    config: dict[str, Any]                     # the shared experiment, objective removed
    metric: str
    objectives: list[str]
    columns: list[tuple[int, int]]              # (rank, length)
    cells: dict[str, dict[tuple[int, int], Stat]]
    label: str = ""

    def winner(self, column: tuple[int, int]) -> str | None:
        """The objective whose mean beats every other's by more than the seeds' spread, or None (a tie).

        Beats: is higher, or lower for the metrics where less is better (`LOWER_IS_BETTER`). Spread:
        the larger sd of the two means compared; with one seed there is no spread, so no winner.
        """
        sign = 1.0 if self.metric in LOWER_IS_BETTER else -1.0
        stats = sorted(((s, o) for o in self.objectives if (s := self.cells[o].get(column)) is not None),
                       key=lambda x: sign * x[0].mean)
        if len(stats) < 2:
            return None
        (best, name), (second, _) = stats[0], stats[1]
        if best.sd is None or second.sd is None:
            return None
        return name if abs(best.mean - second.mean) > max(best.sd, second.sd) else None


def objective_label(objective: Mapping[str, Any], others: Sequence[Mapping[str, Any]]) -> str:
    """The objective's name, plus the options in which it differs from objectives of the same name."""
    same = [o for o in others if o.get("name") == objective.get("name")]
    keys = differing(same) if len(same) > 1 else []
    return objective["name"] + "".join(f" {k}={objective.get(k)}" for k in keys)


def compare(rows: Iterable[Mapping[str, Any]], metric: str | None = None) -> list[Comparison]:
    """Comparisons among `rows`: experiments grouped by everything but the objective.

    Args:
        rows: stored cells.
        metric: the number compared; None: the benchmark's headline (`SCORE`).
    """
    setups: dict[str, list[Experiment]] = {}
    for e in group(rows):
        rest = {k: v for k, v in e.config.items() if k != "objective"}
        setups.setdefault(json.dumps(rest, sort_keys=True), []).append(e)
    out = []
    for text, experiments in setups.items():
        rest = json.loads(text)
        bench = (rest.get("benchmark") or {}).get("name")
        what = metric or SCORE.get(bench, "em_rate")
        objectives = [e.config.get("objective", {}) for e in experiments]
        names = [objective_label(o, objectives) for o in objectives]
        cells: dict[str, dict[tuple[int, int], Stat]] = {}
        columns: set[tuple[int, int]] = set()
        for name, e in zip(names, experiments):
            values: dict[tuple[int, int], list[float]] = {}
            for row in e.rows:
                v = score(row, what)
                if v is not None:
                    values.setdefault((int(row["rank"]), int(row["length"])), []).append(v)
            cells[name] = {c: Stat.of(v) for c, v in values.items()}
            columns |= set(values)
        out.append(Comparison(rest, what, names, sorted(columns, key=lambda c: (c[1], c[0])), cells))
    keys = differing([c.config for c in out])
    for c in out:
        f = flat(c.config)
        c.label = ", ".join(f"{k}={f.get(k)}" for k in keys) or _short(c.config)
    return out


__all__ = ["SCORE", "SCORE_LABEL", "LOWER_IS_BETTER", "config_of", "experiment_of", "flat", "differing", "Experiment",
           "group", "one_experiment", "without", "score", "Stat", "Comparison", "objective_label", "compare"]
