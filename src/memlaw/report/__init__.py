"""`memlaw report`: one static HTML page (figures and tables) from a results store. DESIGN §8.

    from memlaw.report import build_report, write_report
    from memlaw.store import open_store

    with open_store("runs.db", create=False) as store:
        report = build_report(store.load_cells(), {k: store.token_probs(k) for k in ...})
    write_report(report, "report/")            # report/index.html + report/figures/*.png|svg

`build_report` is pure (rows in, a `Report` of sections, tables and matplotlib Figures out);
`html.page` turns a Report into one HTML string; `write_report` is the only function that writes.

Values (record values, which may be secrets) never reach the report: the store keeps positions,
counts, losses and p_t, not values or greedy outputs. `redact=True` also leaves out free text that
could quote input (failed cells' error messages, the methods rows' memory notes).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memlaw import analysis
from memlaw.errors import ConfigError
from memlaw.fileio import atomic_write_bytes, atomic_write_text

logger = logging.getLogger(__name__)


@dataclass
class Cell:
    """One table cell: its text, and whether it is the best of its column (bold)."""

    text: str
    strong: bool = False


@dataclass
class Table:
    id: str
    caption: str
    columns: list[str]
    rows: list[list[str | Cell]]


@dataclass
class FigureSpec:
    name: str            # file stem under figures/ (letters, digits, '-')
    caption: str
    figure: Any          # matplotlib.figure.Figure


@dataclass
class Section:
    id: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[FigureSpec] = field(default_factory=list)


@dataclass
class Report:
    title: str
    source: str
    redact: bool
    sections: list[Section]
    summary: dict[str, Any] = field(default_factory=dict)
    """Machine-readable numbers: law fits, ρ, misalignment, phase counts (also written as report.json)."""

    @property
    def figures(self) -> list[FigureSpec]:
        return [f for s in self.sections for f in s.figures]


def fmt(x: Any, digits: int = 3, pct: bool = False) -> str:
    """A number for a table: '-' for None, a percentage with `pct`, else `digits` significant-ish places."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if pct:
            return f"{100 * x:.1f}%"
        if x != 0 and (abs(x) >= 1e5 or abs(x) < 10 ** -digits):
            return f"{x:.{digits}g}"
        return f"{x:.{digits}f}"
    return str(x)


# ---------------------------------------------------------------- the report


def build_report(rows: Sequence[Mapping[str, Any]], token_probs: Mapping[str, Sequence] | None = None, *,
                 failed: Sequence[Mapping[str, Any]] = (), methods: Sequence[Mapping[str, Any]] | None = None,
                 redact: bool = False, source: str = "", title: str = "memlaw report",
                 law_options: Mapping[str, Any] | None = None) -> Report:
    """Sections, tables and figures for finished cells `rows` (store rows). Pure: writes nothing.

    Args:
        rows: `Store.load_cells()` rows (status done).
        token_probs: {cell key: `Store.token_probs(key)`} for the cells that stored p_t.
        failed: failed cells (`load_cells(status="failed")`), listed with their errors unless `redact`.
        methods: rows of `memlaw bench methods --out FILE.jsonl` (MemFT vs SFT), if any.
        redact: leave out free text that could quote input (values themselves are never stored).
        source: where the rows came from, for the page header.
        law_options: passed to the law fit (`fix_b`, `saturated_below`, `relative`), as `memlaw fit`.
    """
    from memlaw.report import plots
    from memlaw.report.sections import (cells_section, grids_section, law_section, methods_section,
                                        misalignment_section, phase_section, stubborn_section)

    token_probs = dict(token_probs or {})
    rows = [r for r in rows if r.get("status", "done") == "done"]
    sections: list[Section] = []
    summary: dict[str, Any] = {"cells": len(rows), "failed": len(failed), "laws": []}
    for group, grows in analysis.groups(rows).items():
        sec, fit = law_section(group, grows, plots, law_options or {})
        sections.append(sec)
        summary["laws"].append(fit)
    if rows:
        sec, summary["stubborn_vs_failure"] = stubborn_section(rows, token_probs, plots)
        sections.append(sec)
        grids = grids_section(rows, token_probs, plots)
        if grids is not None:
            sections.append(grids)
        sec, summary["phase"] = phase_section(rows, token_probs, plots)
        sections.append(sec)
        sec, summary["misalignment"] = misalignment_section(rows)
        sections.append(sec)
    if methods:
        sections.append(methods_section(methods, plots, redact))
    sections.append(cells_section(rows, list(failed), redact))
    return Report(title=title, source=source, redact=redact, sections=sections, summary=summary)


def write_report(report: Report, out_dir: str | os.PathLike, *, svg: bool = True) -> Path:
    """Write `out_dir/figures/NAME.png` (+ `.svg`), `report.json` and, last, `out_dir/index.html`.

    Every file is written atomically; index.html (the page, images embedded) goes last, so a reader
    sees the previous complete page or the new one. Returns the page's path.
    """
    import json

    from memlaw.report import html, plots

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a directory; give a directory for the report")
    images: dict[str, bytes] = {}
    written = [out / "report.json", out / "index.html"]
    for spec in report.figures:
        images[spec.name] = plots.render(spec.figure, "png")
        files = {"png": images[spec.name], **({"svg": plots.render(spec.figure, "svg")} if svg else {})}
        for ext, data in files.items():
            atomic_write_bytes(out / "figures" / f"{spec.name}.{ext}", data)
            written.append(out / "figures" / f"{spec.name}.{ext}")
    summary = json.dumps(_jsonable(report.summary), indent=1, ensure_ascii=False, allow_nan=False)
    atomic_write_text(out / "report.json", summary + "\n")
    atomic_write_text(out / "index.html", html.page(report, images, svg=svg))
    for path in written:
        os.chmod(path, 0o644)                  # temp files are created 0600; a report is for reading
    return out / "index.html"


def _jsonable(x: Any) -> Any:
    """JSON-ready: numpy scalars to Python, tuples to lists, NaN and inf to None."""
    import math

    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    return None if isinstance(x, float) and not math.isfinite(x) else x


__all__ = ["build_report", "write_report", "Report", "Section", "Table", "Cell", "FigureSpec", "fmt"]
