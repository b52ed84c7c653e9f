"""The report's locality section: what the adapters cost the base model, by adapter, objective and rank.

Rows in (store rows whose cells measured `metrics.locality`), a `Section` out. Cells are grouped into
setups that share everything but the adapter (kind and options), the objective, rank, length and seed,
so a table sets the probe against LoRA and SFT against MemFT on the same memories and budget (each
adapter kind at its own learning rate). A line is one adapter and objective; a column one (rank, ℓ);
a cell the mean ± sd over seeds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from memlaw.experiments import Stat, differing, experiment_of, flat, objective_label
from memlaw.report import plots
from memlaw.report.document import FigureSpec, Section, Table, slug

METRICS = (("kl_mean", "mean KL(base || adapted), nats", False), ("identical", "greedy continuations unchanged %", True))
"""(locality field, caption, shown as a percentage) of the section's tables."""


@dataclass
class LocalitySetup:
    """Cells on one memory setup: `cells[line][(rank, length)][metric]` = Stat over seeds."""

    config: dict[str, Any]
    lines: list[str] = field(default_factory=list)            # "probe · sft", "lora · memft-ot", ...
    columns: list[tuple[int, int]] = field(default_factory=list)
    cells: dict[str, dict[tuple[int, int], dict[str, Stat]]] = field(default_factory=dict)
    label: str = ""


def locality_setups(rows: Sequence[Mapping[str, Any]]) -> list[LocalitySetup]:
    """Rows with a locality measurement, grouped by setup: everything but the adapter, the objective, the
    learning rate (each adapter kind has its own default), rank, ℓ and seed. A line names the learning
    rate where the setup's cells differ in it."""
    found: dict[str, tuple[dict, list[tuple[dict, dict, Mapping]]]] = {}
    for row in rows:
        local = _locality(row)
        if local is None:
            continue
        exp = experiment_of(row)
        rest = {k: v for k, v in exp.items() if k not in ("adapter", "objective")}
        lr = (rest.get("train") or {}).get("lr")
        rest["train"] = {k: v for k, v in (rest.get("train") or {}).items() if k != "lr"}   # each kind has its own
        entry = found.setdefault(json.dumps(rest, sort_keys=True), (rest, []))
        entry[1].append((exp.get("adapter", {}), exp.get("objective", {}), lr, row))
    out = []
    for rest, members in found.values():
        adapters = [a for a, _, _, _ in members]
        objectives = [o for _, o, _, _ in members]
        keys = differing(adapters)
        lrs = {json.dumps(lr) for _, _, lr, _ in members}
        setup = LocalitySetup(rest)
        values: dict[str, dict[tuple[int, int], dict[str, list[float]]]] = {}
        for adapter, objective, lr, row in members:
            kind = adapter.get("kind", "?") + "".join(f" {k}={adapter.get(k)}" for k in keys if k != "kind")
            line = f"{kind} · {objective_label(objective, objectives)}" + (f" · lr {lr:g}" if len(lrs) > 1 else "")
            col = (int(row["rank"]), int(row["length"]))
            for name, _, _ in METRICS:
                if (v := _locality(row).get(name)) is not None:
                    values.setdefault(line, {}).setdefault(col, {}).setdefault(name, []).append(float(v))
        setup.lines = sorted(values)
        setup.columns = sorted({c for per in values.values() for c in per}, key=lambda c: (c[1], c[0]))
        setup.cells = {line: {c: {m: Stat.of(v) for m, v in per.items()} for c, per in cols.items()}
                       for line, cols in values.items()}
        out.append(setup)
    keys = differing([s.config for s in out])
    for s in out:
        f = flat(s.config)
        s.label = ", ".join(f"{k}={f.get(k)}" for k in keys) or ", ".join(
            str(x) for x in (f.get("model"), f.get("benchmark.name")) if x is not None)
    return out


def _locality(row: Mapping[str, Any]) -> dict | None:
    m = row.get("metrics") or {}
    if isinstance(m, str):
        m = json.loads(m) if m else {}
    local = m.get("locality")
    return local if isinstance(local, dict) else None


def locality_section(rows: Sequence[Mapping[str, Any]]) -> tuple[Section, list[dict[str, Any]]] | None:
    """The section and its numbers for report.json; None when no cell measured locality."""
    setups = locality_setups(rows)
    if not setups:
        return None
    sec = Section(id="locality", title="What the adapters cost the base model")
    sec.paragraphs.append(
        "Locality (DESIGN §2, `memlaw.locality`): on 48 neutral prompts in the memory's prompt format, the "
        "base model's greedy continuation (up to 32 tokens) is teacher-forced through the base model and "
        "through base + adapter. KL is the mean over those positions of KL(base || adapted) of the "
        "next-token distributions, in nats (0: the adapter changes nothing); \"unchanged\" is the share of "
        "prompts whose greedy continuation the adapter leaves exactly as it was. Lines set the probe "
        "against LoRA and SFT against MemFT on the same memories and budget; a cell is the mean ± sd over "
        "seeds, n seeds in brackets.")
    numbers = []
    for s in setups:
        for metric, caption, pct in METRICS:
            t = Table(id=slug("locality", metric, s.label), caption=f"{s.label}: {caption}",
                      columns=["adapter · objective", *[f"r{r} ℓ{n}" for r, n in s.columns]], rows=[])
            for line in s.lines:
                t.rows.append([line, *[_text(s.cells[line].get(c, {}).get(metric), pct) for c in s.columns]])
            sec.tables.append(t)
        sec.figures.append(FigureSpec(slug("locality", s.label), f"{s.label}: mean KL(base || adapted) against "
                                      "rank, one line per adapter, objective and ℓ (error bars: sd over seeds).",
                                      plots.locality_figure(s)))
        numbers.append({"setup": s.label, "lines": {line: [
            {"rank": r, "length": n, **{m: vars(st) for m, st in s.cells[line].get((r, n), {}).items()}}
            for r, n in s.columns if (r, n) in s.cells[line]] for line in s.lines}})
    return sec, numbers


def _text(st: Stat | None, pct: bool) -> str:
    if st is None:
        return "-"
    scale, fmt = (100.0, ".1f") if pct else (1.0, ".3g")
    sd = "" if st.sd is None else f" ± {scale * st.sd:{fmt}}"
    return f"{scale * st.mean:{fmt}}{sd} [{st.n}]"


__all__ = ["LocalitySetup", "locality_setups", "locality_section", "METRICS"]
