"""The report's sections: store rows -> `Section`s of paragraphs, tables and figures. Pure (no I/O)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from memlaw import analysis, bits, phase
from memlaw.report import plots
from memlaw.report.document import Cell, FigureSpec, Section, Table, fmt
from memlaw.report.document import slug as _slug
from memlaw.report.law_section import law_section  # noqa: F401  (the law's section lives in its own module)
from memlaw.rho import PAPER_N, PAPER_RHO

MAX_GRIDS = 4
"""Probability grids drawn: failed records first (latest failure), then the last records to certify."""


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
    again = sum(1 for r in rows if bits.recounted(r))
    if again:
        sec.paragraphs.append(f"bits/param marked (recounted): {again} cell{'s' if again != 1 else ''} stored before bits "
                              "were kept per cell; their bits were recounted from the cell's config (benchmark, its "
                              "options, ℓ, the model's tokenizer), exact or an upper bound as a fresh cell's.")
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
