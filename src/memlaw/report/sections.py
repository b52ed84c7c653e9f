"""The report's sections: store rows -> `Section`s of paragraphs, tables and figures. Pure (no I/O)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from memlaw import analysis
from memlaw.errors import MemlawError
from memlaw.report import plots
from memlaw.report.document import Cell, FigureSpec, Section, Table, fmt
from memlaw.report.summary import HELD_OUT_LIMIT

MAX_GRIDS = 4
POOR_R2 = 0.9
"""R² below which the law's fit gets a warning beside it (the paper reports R² > 0.98)."""
"""Probability grids drawn: failed records first (latest failure), then the last records to certify."""


def _slug(*parts: Any) -> str:
    text = "-".join(str(p) for p in parts if p is not None)
    return "".join(c if c.isascii() and c.isalnum() else "-" for c in text.lower()).strip("-")[:80] or "x"


def _pm(value: float | None, se: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g} ± {se:.2g}" if se is not None else f"{value:.4g} ± ?"


def law_section(experiment, law_options: Mapping[str, Any] | None = None) -> tuple[Section, dict[str, Any]]:
    """The law fitted to one experiment (`experiments.Experiment`: cells differing only in rank, length, seed)."""
    from memlaw.plan import fit_rows, law_rows

    rows = experiment.rows
    digest = hashlib.sha256(json.dumps(experiment.config, sort_keys=True).encode()).hexdigest()[:8]
    group = (experiment.label[:40], digest)               # figure and table names: unique per experiment
    sec = Section(id=_slug("law", *group), title=f"Memory law: {experiment.label}")
    summary: dict[str, Any] = {"experiment": experiment.label, "config": experiment.config, "cells": len(rows)}
    try:
        lrows = law_rows(rows)
        fit = fit_rows(lrows, **(law_options or {}))
    except (MemlawError, ValueError, FloatingPointError) as e:
        sec.paragraphs.append(f"No law fit: {e}")
        lrows, fit = [], None
    params = None
    if fit is not None:
        law = fit["law"]
        params = law["params"] if law["converged"] else None
        summary["fit"] = {k: fit.get(k) for k in ("law", "held_out", "frontier", "notes", "warnings")}
        ho = fit.get("held_out")
        t = Table(id=_slug("fit", *group), caption=f"ΔL = C·r^α·ℓ^(−β) + b fitted to {len(lrows)} cells "
                                                   "(nonlinear least squares; ± standard error)",
                  columns=["quantity", "value"], rows=[])
        warned = list(dict.fromkeys(fit.get("warnings", [])))   # the held-out refits repeat the full fit's
        on_frontier = [w for w in warned if w.startswith("frontier")]
        on_law = [w for w in warned if w not in on_frontier]
        for key, label in (("C", "C"), ("alpha", "α"), ("beta", "β"), ("b", "b")):
            t.rows.append([label, _pm(law["params"][key], law["stderr"][key])])
        r2 = law["r2"]
        t.rows.append(["R²", Cell(fmt(r2, 4), warning=None if r2 is None or r2 >= POOR_R2 else
                                  f"below {POOR_R2}: the law explains little of how ΔL varies here")])
        t.rows.append(["MAPE", "-" if law["mape"] is None else f"{law['mape']:.2f}%"])
        if ho:
            ranks = ",".join(f"{x:g}" for x in ho["train_ranks"])
            test = ",".join(f"{x:g}" for x in ho["test_ranks"])
            bad = ho["mape"] is not None and ho["mape"] > HELD_OUT_LIMIT
            t.rows.append([f"held-out MAPE (fit on ranks {ranks}, predict {test})",
                           Cell("-" if ho["mape"] is None else f"{ho['mape']:.2f}%", warning=(
                               f"above {HELD_OUT_LIMIT:.0f}%: the law does not predict the larger ranks well; do "
                               "not extrapolate with it") if bad else None)])
        else:
            t.rows.append(["held-out MAPE", "- (needs ≥ 2 ranks)"])
        fr = fit.get("frontier")
        if fr:
            t.rows.append(["capacity frontier ℓ_max = K·r^γ",
                           Cell(f"K = {_pm(fr['K'], fr['K_stderr'])}, γ = {_pm(fr['gamma'], fr['gamma_stderr'])}",
                                warning="; ".join(on_frontier) or None)])
        t.rows.append(["paper", "R² > 0.98, MAPE 0.5–8%"])
        t.rows.append(["converged", Cell(fmt(law["converged"]), warning="; ".join(on_law) or None)])
        if fit.get("notes"):
            t.rows.append(["notes", "; ".join(fit["notes"])])
        sec.tables.append(t)
    if lrows:
        sec.figures.append(FigureSpec(_slug("law-panels", *group), "ΔL against rank (per length) and against "
                                      "length (per rank); points measured, lines the fitted law.",
                                      plots.law_panels(lrows, params)))
        if params is not None:
            sec.figures.append(FigureSpec(_slug("predicted", *group), "The law's prediction against measured ΔL.",
                                          plots.predicted_vs_true(lrows, params)))
    done = [r for r in rows if r.get("em_rate") is not None]
    if done:
        sec.figures.append(FigureSpec(_slug("heat-em", *group), "Exact match (greedy recall) over rank × length.",
                                      plots.heatmap(done, "em_rate", title="EM rate", fmt="{:.0%}")))
    with_loss = [r for r in rows if r.get("L_final") is not None]
    if with_loss:
        sec.figures.append(FigureSpec(_slug("heat-lfinal", *group), "Final mean value-token loss over rank × "
                                      "length.", plots.heatmap(with_loss, "L_final", title="L_final (nats)",
                                                               fmt="{:.3f}", cmap="magma_r")))
    return sec, summary


def cells_section(rows: list[Mapping[str, Any]], failed: list[Mapping[str, Any]], redact: bool) -> Section:
    sec = Section(id="cells", title="Cells")
    cols = ["key", "model", "kind", "objective", "r", "ℓ", "seed", "records", "steps", "L_base", "L_final", "ΔL",
            "EM", "certified", "TF acc", "free acc", "stubborn", "bits/param", "t certified (s)", "wall (s)"]
    t = Table(id="cells-table", caption=f"{len(rows)} finished cells (ΔL on value tokens; accuracies over ℓ)",
              columns=cols, rows=[])
    for r in analysis.cell_rows(rows):
        t.rows.append([r["key"][:10], str(r["model"]), str(r["kind"]), str(r["objective"]), fmt(r["rank"]),
                       fmt(r["length"]), fmt(r["seed"]), fmt(r["n_records"]), fmt(r["steps"]), fmt(r["L_base"]),
                       fmt(r["L_final"]), fmt(r["delta_loss"]), fmt(r["em_rate"], pct=True),
                       fmt(r["certified_rate"], pct=True), fmt(r["tf_acc"], pct=True), fmt(r["free_acc"], pct=True),
                       fmt(r["stubborn"]), fmt(r["bits_per_param"]), fmt(r["time_to_certified"], 1),
                       fmt(r["wall_s"], 1)])
    sec.tables.append(t)
    if failed:
        ft = Table(id="failed-table", caption=f"{len(failed)} failed cells (invalid cells, not crashes)",
                   columns=["key", "rank", "length", "error"], rows=[])
        for r in failed:
            ft.rows.append([r["key"][:10], fmt(r.get("rank")), fmt(r.get("length")),
                            "(redacted)" if redact else str(r.get("error") or "")])
        sec.tables.append(ft)
    return sec


def stubborn_section(rows, token_probs) -> tuple[Section, dict[str, Any]]:
    sec = Section(id="stubborn", title="Stubborn tokens and first failures")
    sf = analysis.stubborn_vs_failure(rows)
    curves = analysis.stubborn_curves(rows)
    sec.paragraphs.append(
        "A token is stubborn when its teacher-forced probability p_t ≤ 0.5. For every record whose greedy "
        "output failed, the earliest stubborn position is compared with the first position where greedy "
        "decoding went wrong (Spearman rank correlation over those records only).")
    t = Table(id="rho-table", caption="Earliest stubborn position vs first free-run failure",
              columns=["", "Spearman ρ", "n (failed records)", "p-value", "failure at the earliest stubborn",
                       "failures without a stubborn token"], rows=[])
    t.rows.append(["this report", fmt(sf.rho), str(sf.n), "-" if sf.p_value is None else f"{sf.p_value:.2g}",
                   f"{sf.exact}/{sf.n}" if sf.n else "-", str(sf.n_no_stubborn)])
    t.rows.append(["paper", f"{analysis.PAPER_RHO}", str(analysis.PAPER_N), "-", "-", "-"])
    sec.tables.append(t)
    if sf.note:
        sec.paragraphs.append(f"Note: {sf.note}.")
    if sf.cells_without_records:
        sec.paragraphs.append(f"{sf.cells_without_records} cell(s) carry no per-record verdicts (stored by an "
                              "older memlaw or without greedy recall) and are not counted.")
    sec.figures.append(FigureSpec("stubborn", "Left: stubborn tokens at each certificate check, one line per cell. "
                                  "Right: earliest stubborn vs first failure per failed record (jittered).",
                                  plots.stubborn_figure(curves, sf.points, rho=sf.rho, n=sf.n)))
    timeline = Table(id="timeline-table", caption="Stubborn tokens per record over training (cells with stored "
                     "p_t): certified since = first checked step from which a record stays certified",
                     columns=["key", "r", "ℓ", "records", "checks stored", "stubborn at first check",
                              "stubborn at last check", "certified at the end", "median certified since",
                              "last certified since"], rows=[])
    for r in rows:
        probs = token_probs.get(r["key"]) or []
        if not probs:
            continue
        over = analysis.stubborn_over_training(probs, margin=_margin(r))
        steps = sorted({x["step"] for x in over})
        since = analysis.certified_since(over)
        done = sorted(s for s in since.values() if s is not None)
        timeline.rows.append([
            r["key"][:10], fmt(r.get("rank")), fmt(r.get("length")), str(len(since)), str(len(steps)),
            str(sum(x["stubborn"] for x in over if x["step"] == steps[0])),
            str(sum(x["stubborn"] for x in over if x["step"] == steps[-1])), f"{len(done)}/{len(since)}",
            fmt(done[len(done) // 2]) if done else "-", fmt(done[-1]) if done else "-"])
    if timeline.rows:
        sec.tables.append(timeline)
    else:
        sec.paragraphs.append("No cell stored per-token p_t (sweep option `token_probs`): no per-record timelines "
                              "or probability grids.")
    return sec, sf.to_dict()


def _margin(row: Mapping[str, Any]) -> float:
    """The certificate margin the cell was trained with (0 for cells stored without one)."""
    return ((row.get("config") or {}).get("train") or {}).get("margin", 0.0)


def _grid_picks(rows, token_probs) -> list[tuple[Mapping[str, Any], dict[str, Any], str]]:
    """(row, record, why) for the probability grids: failed records first, then the last to certify."""
    failed, late = [], []
    for r in rows:
        probs = token_probs.get(r["key"]) or []
        if not probs:
            continue
        recs = {x["record"]: x for x in analysis.record_rows(r)}
        since = analysis.certified_since(analysis.stubborn_over_training(probs, margin=_margin(r)))
        for i, s in since.items():
            rec = recs.get(i, {"record": i})
            if rec.get("first_failure") is not None:
                failed.append((rec["first_failure"], r, rec, "greedy recall failed"))
            elif s is None:
                failed.append((-1, r, rec, "not certified at the end"))
            else:
                late.append((s, r, rec, "certified late"))
    failed.sort(key=lambda x: (-x[0], -(x[1].get("length") or 0)))
    late.sort(key=lambda x: (-x[0], -(x[1].get("length") or 0)))
    picks, seen = [], set()
    for _, r, rec, why in failed[: MAX_GRIDS // 2] + late + failed[MAX_GRIDS // 2:]:
        if (r["key"], rec["record"]) not in seen and len(picks) < MAX_GRIDS:
            seen.add((r["key"], rec["record"]))
            picks.append((r, rec, why))
    return picks


def grids_section(rows, token_probs) -> Section | None:
    picks = _grid_picks(rows, token_probs)
    if not picks:
        return None
    sec = Section(id="grids", title="Probability grids")
    sec.paragraphs.append("p_t of every answer token (rows) at every stored check (columns); blue above 0.5, red "
                          "at or below. The dotted line separates value tokens from the terminator; the arrow "
                          "marks the first free-run failure.")
    for r, rec, why in picks:
        steps, grid = analysis.probability_grid(token_probs[r["key"]], rec["record"])
        title = f"cell {r['key'][:10]} (r{r.get('rank')}, ℓ{r.get('length')}), record {rec['record']}: {why}"
        sec.figures.append(FigureSpec(_slug("grid", r["key"][:10], rec["record"]), title,
                                      plots.probability_grid(steps, grid, n_value=rec.get("n_value"), title=title,
                                                             first_failure=rec.get("first_failure"))))
    return sec


def phase_section(rows, token_probs) -> tuple[Section, dict[str, Any]]:
    sec = Section(id="phase", title="Phase picture: token probability and free-run correctness")
    points = [p for r in rows for p in analysis.phase_points(r, token_probs.get(r["key"]) or [])]
    summary = analysis.phase_summary(points)
    sec.paragraphs.append(
        "Position t is right under free-run when greedy decoding produced the target there and at every earlier "
        "position (t before the first failure); the first failure is wrong; later positions are off-path (greedy "
        "saw another prefix than the teacher-forced pass) and are left out. On the path, p_t > 0.5 forces the "
        "greedy token to be the target, and a wrong position has p_t ≤ 0.5: violations must be 0 (up to numerics "
        "between the teacher-forced pass and the cached decode). p_t ≤ 0.5 can still be right (argmax anyway).")
    t = Table(id="phase-table", caption="On-path answer positions by side of the boundary (final p_t)",
              columns=["", "p_t > 0.5", "p_t ≤ 0.5"], rows=[
                  ["right", str(summary["right_above"]), str(summary["right_below"])],
                  ["wrong (first failure)", Cell(str(summary["violations"]), strong=summary["violations"] > 0),
                   str(summary["wrong_below"])]])
    sec.tables.append(t)
    sec.paragraphs.append(f"{summary['on_path']} on-path positions; {summary['off_path']} off-path and "
                          f"{summary['not_decoded']} never decoded (after the first terminator token) left out.")
    if points:
        sec.figures.append(FigureSpec("phase", "Final p_t of every on-path answer position, right vs wrong; the "
                                      "shaded area (p_t > 0.5 and wrong) must stay empty.",
                                      plots.phase_figure([p for p in points if p["status"] in ("right", "wrong")],
                                                         summary)))
    else:
        sec.paragraphs.append("Needs cells with stored p_t (`token_probs`) and per-record verdicts.")
    return sec, summary


def misalignment_section(rows) -> tuple[Section, dict[str, Any]]:
    mis = analysis.misalignment(rows)
    sec = Section(id="misalignment", title="Loss vs recall")
    sec.paragraphs.append(
        f"Cells whose mean value-token loss L_final is below ln 2 = {analysis.LN2:.3f} nats (geometric-mean p_t "
        f"above 0.5) yet recall fewer than 100% of their records exactly: {mis.n_misaligned} of the {mis.n_low} "
        "low-loss cells. A low average loss hides the few stubborn tokens that break exact recall.")
    t = Table(id="misalignment-table", caption="Low loss, failed exact match (lowest L_final first)",
              columns=["key", "model", "r", "ℓ", "L_final", "ΔL", "EM", "certified", "stubborn tokens",
                       "failed records", "of which own loss < ln 2", "loss below a 100%-EM cell's"], rows=[])
    for r in mis.rows:
        t.rows.append([r["key"][:10], str(r["model"]), fmt(r["rank"]), fmt(r["length"]), fmt(r["L_final"], 4),
                       fmt(r["delta_loss"]), fmt(r["em_rate"], pct=True), fmt(r["certified_rate"], pct=True),
                       fmt(r["stubborn"]), fmt(r["failed_records"]), fmt(r["failed_low_loss"]),
                       fmt(r["below_recalled"])])
    sec.tables.append(t)
    return sec, mis.to_dict()


def methods_section(comparisons) -> Section:
    """MemFT vs SFT: each comparison (`experiments.compare`) as the paper's table, mean ± sd over seeds."""
    from memlaw.experiments import SCORE_LABEL

    sec = Section(id="methods", title="MemFT vs SFT")
    sec.paragraphs.append("Objectives compared on the same memories, rank and budget. A cell is the mean ± sd over "
                          "seeds (n seeds in brackets); it is bold where that objective's mean beats every other's "
                          "by more than the larger sd of the two (with one seed there is no spread: nothing is bold).")
    for c in comparisons:
        metric = SCORE_LABEL.get(c.metric, c.metric)
        labels = [f"r{r} ℓ{n}" for r, n in c.columns]
        t = Table(id=_slug("methods", c.label), caption=f"{c.label}: {metric}", columns=["objective", *labels], rows=[])
        for name in c.objectives:
            row: list[Any] = [name]
            for col in c.columns:
                st = c.cells[name].get(col)
                text = "-" if st is None else (f"{100 * st.mean:.1f}" + (f" ± {100 * st.sd:.1f}" if st.sd is not None
                                                                        else "") + f" [{st.n}]")
                row.append(Cell(text, strong=c.winner(col) == name))
            t.rows.append(row)
        sec.tables.append(t)
        sec.figures.append(FigureSpec(_slug("methods", c.label), f"{c.label}: {metric} per objective (mean ± sd "
                                      "over seeds).", plots.methods_figure(c, metric=metric)))
    return sec


__all__ = ["law_section", "cells_section", "stubborn_section", "grids_section", "phase_section",
           "misalignment_section", "methods_section", "MAX_GRIDS"]
