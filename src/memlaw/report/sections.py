"""The report's sections: store rows -> `Section`s of paragraphs, tables and figures. Pure (no I/O)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from memlaw import analysis, phase
from memlaw.errors import MemlawError
from memlaw.report import plots
from memlaw.report.document import Cell, FigureSpec, Section, Table, fmt
from memlaw.report.summary import HELD_OUT_LIMIT
from memlaw.rho import PAPER_N, PAPER_RHO

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


SYMBOL = {"C": "C", "alpha": "α", "beta": "β", "b": "b"}
MAX_EXCLUDED = 12
"""Cells left out of a fit that the report lists one by one (`memlaw fit --json` lists them all)."""
NAMES = {"paper": "the paper's form", "bounded": "the bounded form"}


def law_section(experiment, law_options: Mapping[str, Any] | None = None) -> tuple[Section, dict[str, Any]]:
    """The law fitted to one experiment (`experiments.Experiment`: cells differing only in rank, length, seed):
    every form asked for (`law_options["law"]`, both by default) side by side on the same cells."""
    from memlaw.fitting import fit_rows, law_rows

    rows = experiment.rows
    digest = hashlib.sha256(json.dumps(experiment.config, sort_keys=True).encode()).hexdigest()[:8]
    group = (experiment.label[:40], digest)               # figure and table names: unique per experiment
    sec = Section(id=_slug("law", *group), title=f"Memory law: {experiment.label}")
    summary: dict[str, Any] = {"experiment": experiment.label, "config": experiment.config, "cells": len(rows)}
    try:
        lrows = law_rows(rows)
        fit = fit_rows(lrows, **{"law": "both", **(law_options or {})})
    except (MemlawError, ValueError, FloatingPointError) as e:
        sec.paragraphs.append(f"No law fit: {e}")
        lrows, fit = [], None
    forms: dict[str, Any] = {}
    if fit is not None:
        forms = fit["forms"]
        summary["fit"] = {k: fit.get(k) for k in ("law", "held_out", "forms", "best", "frontier", "cells",
                                                  "seed_spread", "excluded", "notes", "warnings")}
        sec.tables.append(_law_table(fit, len(lrows), group))
        sec.paragraphs += _law_paragraphs(fit)
    for name, form in forms.items():
        params = form["law"]["params"] if form["law"]["converged"] else None
        sec.figures.append(FigureSpec(_slug("law-panels", name, *group), f"ΔL against rank (per length) and against "
                                      f"length (per rank); points measured, lines {NAMES[name]} of the law"
                                      + (" at each line's mean L_base." if name == "bounded" else "."),
                                      plots.law_panels(lrows, params, form=name)))
        if params is not None:
            sec.figures.append(FigureSpec(_slug("predicted", name, *group), f"The prediction of {NAMES[name]} "
                                          "against measured ΔL.", plots.predicted_vs_true(lrows, params, form=name)))
    if lrows and not forms:
        sec.figures.append(FigureSpec(_slug("law-panels", *group), "ΔL against rank (per length) and against length "
                                      "(per rank), measured.", plots.law_panels(lrows, None)))
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


def _law_table(fit: Mapping[str, Any], n: int, group: tuple) -> Table:
    """The forms side by side: parameters ± se, R², MAPE, AIC/BIC, held-out MAPE by rank and by length."""
    forms = fit["forms"]
    t = Table(id=_slug("fit", *group), caption=f"The law fitted to {n} cells, each form on the same cells "
              "(nonlinear least squares on ΔL; ± standard error)", columns=["quantity", *forms], rows=[])
    warned = list(dict.fromkeys(fit.get("warnings", [])))   # the held-out refits repeat the full fit's
    t.rows.append(["form", *(f["formula"] for f in forms.values())])
    for key, label in SYMBOL.items():
        if any(key in f["law"]["params"] for f in forms.values()):
            t.rows.append([label, *(_pm(f["law"]["params"][key], f["law"]["stderr"][key])
                                    if key in f["law"]["params"] else "-" for f in forms.values())])
    t.rows.append(["R²", *(Cell(fmt(f["law"]["r2"], 4), warning=None if f["law"]["r2"] is None or f["law"]["r2"] >= POOR_R2
                                else f"below {POOR_R2}: the law explains little of how ΔL varies here")
                           for f in forms.values())])
    t.rows.append(["MAPE", *("-" if f["law"]["mape"] is None else f"{f['law']['mape']:.2f}%" for f in forms.values())])
    t.rows.append(["AIC / BIC (lower is better)", *(f"{fmt(f['law']['aic'], 1)} / {fmt(f['law']['bic'], 1)}"
                                                    for f in forms.values())])
    for split, larger in (("rank", "the larger ranks"), ("length", "the longer lengths")):
        ho = next((f["held_out"][split] for f in forms.values() if f["held_out"][split]), None)
        if ho is None:
            t.rows.append([f"held-out MAPE by {split}", *(f"- (needs ≥ 2 {split}s)" for _ in forms)])
            continue
        train, test = ((ho["train_ranks"], ho["test_ranks"]) if split == "rank" else
                       (ho["train_lengths"], ho["test_lengths"]))
        label = (f"held-out MAPE (fit on {split}s {','.join(f'{x:g}' for x in train)}, predict "
                 f"{','.join(f'{x:g}' for x in test)})")
        cells = []
        for f in forms.values():
            mape = (f["held_out"][split] or {}).get("mape")
            bad = mape is not None and mape > HELD_OUT_LIMIT
            cells.append(Cell("-" if mape is None else f"{mape:.2f}%", warning=(
                f"above {HELD_OUT_LIMIT:.0f}%: the law does not predict {larger} well; do not extrapolate with it")
                if bad else None))
        t.rows.append([label, *cells])
    fr = fit.get("frontier")
    on_frontier = [w for w in warned if w.startswith("frontier")]
    if fr:
        t.rows.append(["capacity frontier ℓ_max = K·r^γ (every form)",
                       *[Cell(f"K = {_pm(fr['K'], fr['K_stderr'])}, γ = {_pm(fr['gamma'], fr['gamma_stderr'])}",
                              warning="; ".join(on_frontier) or None)] * len(forms)])
    t.rows.append(["paper", *("R² > 0.98, MAPE 0.5–8%" if name == "paper" else "-" for name in forms)])
    t.rows.append(["converged", *(Cell(fmt(f["law"]["converged"]), warning="; ".join(
        w for w in warned if w.startswith(_PREFIX[name])) or None) for name, f in forms.items())])
    return t


_PREFIX = {"paper": "memory-law fit", "bounded": "bounded-law fit"}


def _law_paragraphs(fit: Mapping[str, Any]) -> list[str]:
    """Which form predicts held-out cells better, the cells and seeds behind the fit, the spread, the exclusions."""
    out = []
    forms, best = fit["forms"], fit.get("best")
    if best and len(forms) > 1:
        scores = ", ".join(f"{NAMES[n]} {f['held_out_mape']:.2f}%" for n, f in forms.items()
                           if f["held_out_mape"] is not None)
        out.append(f"{NAMES[best].capitalize()} predicts held-out cells better (mean held-out MAPE by rank and by "
                   f"length: {scores}); `memlaw plan` uses it.")
    c = fit["cells"]
    seeds = f" and seeds {', '.join(f'{s:g}' for s in c['seeds'])}" if c.get("seeds") else ""
    ceiling = f"; {c['saturated']} of them reach 95% of L_base" if c.get("saturated") is not None else ""
    out.append(f"Fitted on {c['n']} cells: ranks {', '.join(f'{x:g}' for x in c['ranks'])}, lengths "
               f"{', '.join(f'{x:g}' for x in c['lengths'])}{seeds}{ceiling}.")
    spread = fit.get("seed_spread")
    if spread:
        out.append(f"Across seeds, {spread['pairs']} (rank, length) hold two cells or more: the sd of ΔL has median "
                   f"{spread['sd_median']:.3g} nats and maximum {spread['sd_max']:.3g}; R² of their (rank, length) "
                   f"means {fmt(spread['r2_means'], 4)}, the most a law of rank and length alone can reach there.")
    excluded = fit.get("excluded", [])
    if excluded:
        listed = "; ".join(f"rank {e['rank']}, length {e['length']}" + (f", seed {e['seed']}" if e.get("seed")
                                                                          is not None else "") + f": {e['reason']}"
                           for e in excluded[:MAX_EXCLUDED])
        more = f"; and {len(excluded) - MAX_EXCLUDED} more" if len(excluded) > MAX_EXCLUDED else ""
        out.append(f"Left out of the fit ({len(excluded)} cells): {listed}{more}.")
    for note in fit.get("notes", []):
        out.append(f"Note: {note}.")
    return out


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


def stubborn_section(rows, token_probs, groups: Sequence[phase.PhaseGroup]) -> tuple[Section, dict[str, Any]]:
    """Earliest stubborn vs first failure per group (`phase.study`), stubborn counts and timelines."""
    sec = Section(id="stubborn", title="Stubborn tokens and first failures")
    curves = analysis.stubborn_curves(rows)
    sec.paragraphs.append(
        "A token is stubborn when its teacher-forced probability p_t ≤ 0.5. ρ is Spearman's rank correlation "
        "(tied positions get their average rank) between the earliest stubborn position and the first position "
        "where greedy decoding went wrong, over the records whose greedy output failed and that have a stubborn "
        "token (n); recalled records, failures without a stubborn token (numerics) and cells without per-record "
        "verdicts are counted apart. Each group is the cells of one model and benchmark; the interval resamples "
        "whole cells (their records share an adapter).")
    sec.paragraphs.append(
        "Part of ρ is structure: greedy decoding is right wherever p_t > 0.5 on its path, so the first failure is "
        "always a stubborn position, at or after the earliest one. ρ_null is the ρ the same records give when the "
        "failure is put at a random one of their stubborn positions that decoding reaches (measured ones where "
        "p_t was stored, otherwise the stubborn tokens after the earliest placed at random): what the certificate "
        "alone explains. ρ − ρ_null is what the earliest stubborn token adds; p (null) is the share of null draws "
        "with a ρ at least as large. ρ_bound uses only first failure ≥ earliest stubborn and the records' lengths.")
    t = Table(id="rho-table", caption="Earliest stubborn position vs first free-run failure, per group, with the "
              "null baseline", columns=["group", "n (failed records in ρ)", "cells", "Spearman ρ", "interval",
                                        "ρ_null (range of draws)", "ρ − ρ_null", "p (null)", "ρ_bound",
                                        "failure at the earliest stubborn (null: expected)",
                                        "failure before the earliest stubborn (must be 0)", "left out"], rows=[])
    for g in groups:
        c = g.correlation
        pct = f"{100 * c.options['level']:.0f}%"
        left = {k: v for k, v in c.counts.items() if k not in ("rho", "recalled") and v}
        t.rows.append([
            g.label, str(c.n), str(c.cells_in_rho),
            Cell(fmt(c.rho), warning=c.note if c.rho is None else (
                f"only {c.n} failed records (the paper has {PAPER_N})" if c.n < 150 else None)),
            Cell(f"{_range(c.ci)} ({pct}, {c.options['unit']} bootstrap)" if c.ci else "-",
                 warning=c.note if c.rho is not None else None),
            f"{fmt(c.rho_null)} {_range(c.null_interval)}" if c.rho_null is not None else "-", fmt(c.excess),
            "-" if c.p_null is None else f"{c.p_null:.2g}", fmt(c.rho_bound),
            f"{c.exact}/{c.n} ({fmt(c.exact_null, 1)})" if c.n else "-",
            Cell(str(c.order_violations), strong=c.order_violations > 0),
            ", ".join(f"{v} {k}" for k, v in left.items()) + (f"; {g.cells_without_records} cells without "
                                                              "verdicts" if g.cells_without_records else "") or "-"])
    t.rows.append(["paper", str(PAPER_N), "-", f"{PAPER_RHO}", "-", "-", "-", "-", "-", "-", "-", "-"])
    sec.tables.append(t)
    points = [r for r in phase.record_table(rows) if r["inclusion"] == "rho"]
    sec.figures.append(FigureSpec("stubborn", "Left: stubborn tokens at each certificate check, one line per cell. "
                                  "Right: earliest stubborn vs first failure per failed record (jittered), every "
                                  "group; ρ per group in the table above.",
                                  plots.stubborn_figure(curves, points, rho=groups[0].correlation.rho if len(groups)
                                                        == 1 else None, n=len(points),
                                                        note=None if len(groups) == 1 else f"{len(groups)} groups")))
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
    return sec, {"by": list(phase.DEFAULT_BY), "paper": {"rho": PAPER_RHO, "n": PAPER_N},
                 "groups": [g.to_dict() for g in groups]}


def _range(pair: Sequence[float] | None) -> str:
    return "-" if pair is None else f"[{pair[0]:.3f}, {pair[1]:.3f}]"


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


def phase_section(rows, token_probs, groups: Sequence[phase.PhaseGroup]) -> tuple[Section, dict[str, Any]]:
    sec = Section(id="phase", title="Phase picture: token probability and free-run correctness")
    points = [p for r in rows for p in phase.phase_points(r, token_probs.get(r["key"]) or [])]
    summary = phase.phase_summary(points)
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
    with_probs = [g for g in groups if g.phase is not None]
    if len(groups) > 1 and with_probs:
        gt = Table(id="phase-groups-table", caption="The same counts per group (cells with final p_t)",
                   columns=["group", "cells with p_t", "right, p_t > 0.5", "right, p_t ≤ 0.5", "wrong, p_t ≤ 0.5",
                            "wrong, p_t > 0.5 (must be 0)", "off-path", "never decoded"], rows=[])
        for g in with_probs:
            c = g.phase
            gt.rows.append([g.label, f"{g.cells_with_probs}/{g.cells}", str(c["right_above"]), str(c["right_below"]),
                            str(c["wrong_below"]), Cell(str(c["violations"]), strong=c["violations"] > 0),
                            str(c["off_path"]), str(c["not_decoded"])])
        sec.tables.append(gt)
    sec.paragraphs.append(f"{summary['on_path']} on-path positions; {summary['off_path']} off-path and "
                          f"{summary['not_decoded']} never decoded (after the first terminator token) left out.")
    if points:
        sec.figures.append(FigureSpec("phase", "Final p_t of every on-path answer position, right vs wrong; the "
                                      "shaded area (p_t > 0.5 and wrong) must stay empty.",
                                      plots.phase_figure([p for p in points if p["status"] in ("right", "wrong")],
                                                         summary)))
    else:
        sec.paragraphs.append("Needs cells whose final p_t is stored: set `token_probs: true` (or an interval N; "
                              "the final check is always kept) in the sweep YAML.")
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
