"""`build_report`: store rows in, a `Report` of sections, tables and matplotlib Figures out. Pure."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from memlaw import experiments, phase
from memlaw.report.document import Report, Section
from memlaw.report.locality import locality_section
from memlaw.report.summary import summary_section, symbols_section
from memlaw.report.law_section import law_section
from memlaw.report.sections import (cells_section, grids_section, methods_section, misalignment_section, phase_section,
                                    stubborn_section)

logger = logging.getLogger(__name__)

def build_report(rows: Sequence[Mapping[str, Any]], token_probs: Mapping[str, Sequence] | None = None, *,
                 failed: Sequence[Mapping[str, Any]] = (),
                 redact: bool = False, source: str = "", title: str = "memlaw report",
                 law_options: Mapping[str, Any] | None = None) -> Report:
    """Sections, tables and figures for finished cells `rows` (store rows). Pure: writes nothing.

    Args:
        rows: `Store.load_cells()` rows (status done).
        token_probs: {cell key: `Store.token_probs(key)`} for the cells that stored p_t.
        failed: failed cells (`load_cells(status="failed")`), listed with their errors unless `redact`.
        redact: leave out free text that could quote input (values themselves are never stored).
        source: where the rows came from, for the page header.
        law_options: passed to the law fit (`law`: "both" forms by default, `fix_b`, `saturated_below`,
            `relative`, `pool`: config keys to fit across, the paper's "combined" row), as `memlaw fit`.
    """
    token_probs = dict(token_probs or {})
    rows = [r for r in rows if r.get("status", "done") == "done"]
    sections: list[Section] = []
    summary: dict[str, Any] = {"cells": len(rows), "failed": len(failed), "laws": []}
    pool = tuple((law_options or {}).get("pool") or ())
    for experiment in experiments.group(rows, pool):   # one law per experiment, never across ratios unless pooled
        sec, fit = law_section(experiment, law_options or {})
        sections.append(sec)
        summary["laws"].append(fit)
    if rows:
        groups = phase.study(rows, token_probs)    # per model and benchmark: ρ, its interval and null, phase table
        sec, summary["phase_transition"] = stubborn_section(rows, token_probs, groups)
        sections.append(sec)
        grids = grids_section(rows, token_probs)
        if grids is not None:
            sections.append(grids)
        sec, summary["phase"] = phase_section(rows, token_probs, groups)
        sections.append(sec)
        sec, summary["misalignment"] = misalignment_section(rows)
        sections.append(sec)
    comparisons = [c for c in experiments.compare(rows) if len(c.objectives) > 1]
    if comparisons:                             # objectives compared on the same memories: MemFT vs SFT
        sections.append(methods_section(comparisons))
    local = locality_section(rows)              # what the adapters cost the base model, if cells measured it
    if local is not None:
        sections.append(local[0])
        summary["locality"] = local[1]
    sections.append(cells_section(rows, list(failed), redact))
    intro = [summary_section(rows, summary["laws"]), symbols_section()]
    return Report(title=title, source=source, redact=redact, sections=sections, summary=summary, intro=intro)


__all__ = ["build_report"]
