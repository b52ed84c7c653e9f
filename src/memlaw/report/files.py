"""`write_report`: the only part of the report that writes (figures, report.json, index.html), atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

from memlaw.atomic import atomic_write_bytes, atomic_write_text
from memlaw.errors import ConfigError
from memlaw.fileio import json_ready
from memlaw.report import html, plots
from memlaw.report.document import Report


def write_report(report: Report, out_dir: str | os.PathLike, *, svg: bool = True) -> Path:
    """Write `out_dir/figures/NAME.png` (+ `.svg`), `report.json` and, last, `out_dir/index.html`.

    Every file is written atomically; index.html (the page, images embedded) goes last, so a reader
    sees the previous complete page or the new one. Returns the page's path.
    """
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
    summary = json.dumps(json_ready(report.summary), indent=1, ensure_ascii=False, allow_nan=False)
    atomic_write_text(out / "report.json", summary + "\n")
    atomic_write_text(out / "index.html", html.page(report, images, svg=svg))
    for path in written:
        os.chmod(path, 0o644)                  # temp files are created 0600; a report is for reading
    return out / "index.html"


__all__ = ["write_report"]
