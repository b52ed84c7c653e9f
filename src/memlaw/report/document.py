"""The report as data: a `Report` of `Section`s holding paragraphs, `Table`s and figures. No I/O.

`build.build_report` fills these in, `html.page` renders them, `files.write_report` writes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Cell:
    """One table cell: its text, whether it is the best of its column (bold), and a warning that
    qualifies this number, shown beside it."""

    text: str
    strong: bool = False
    warning: str | None = None


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
    intro: list[Section] = field(default_factory=list)
    """What the page opens with, before its table of contents: the plain summary and the symbols."""

    @property
    def figures(self) -> list[FigureSpec]:
        return [f for s in [*self.intro, *self.sections] for f in s.figures]


def slug(*parts: Any) -> str:
    """An id for a table or figure: the parts joined by '-', lower-case ASCII letters and digits, ≤ 80 characters."""
    text = "-".join(str(p) for p in parts if p is not None)
    return "".join(c if c.isascii() and c.isalnum() else "-" for c in text.lower()).strip("-")[:80] or "x"


def pm(value: float | None, se: float | None) -> str:
    """value ± standard error for a table ('± ?' when the error is undetermined, '-' without a value)."""
    if value is None:
        return "-"
    return f"{value:.4g} ± {se:.2g}" if se is not None else f"{value:.4g} ± ?"


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




__all__ = ["Report", "Section", "Table", "Cell", "FigureSpec", "fmt"]
