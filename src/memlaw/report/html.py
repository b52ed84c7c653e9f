"""One static HTML page from a `Report`: rows and figures in, one string out. No I/O.

The page is self-contained: figures are embedded as PNG `data:` URIs (the SVG and PNG files beside
it are links for download), the style sheet and a short script are inline, and a Content Security
Policy forbids loading anything else, so it opens offline from a file, with no CDN and no server.
On load the script writes how many images decoded into `<body data-images=N data-images-loaded=K>`,
how many tables are wider than their box and scroll inside it (`data-tables-scrolling`, shaded at
their right edge) and by how many pixels the page is wider than the window (`data-page-overflow`:
0 or less when nothing is cut off); headless browsers and tests read them.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping

from memlaw.report.document import Cell, Report, Section, Table

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

STYLE = """
body { font-family: "DejaVu Sans", system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 1em 2em;
       color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em;
     margin-top: 2em; }
.meta { color: #666; font-size: 0.9em; } .redacted { background: #fff3cd; padding: 0.4em 0.8em; }
nav ul { columns: 2; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.8em 0 1.2em; font-size: 0.85em; }
caption { caption-side: top; text-align: left; font-weight: bold; padding-bottom: 0.3em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.scroll { overflow-x: auto; max-width: 100%; }
.scroll td:first-child, .scroll th:first-child { position: sticky; left: 0; background: #fff; }
.scroll th:first-child { background: #f3f3f3; }
td.warn { background: #fff3cd; } .warning { display: block; white-space: normal; max-width: 28em; color: #7a4b00;
  font-size: 0.9em; text-align: left; }
.scrolls { box-shadow: inset -10px 0 8px -8px rgba(0, 0, 0, 0.35); }
#summary { background: #f6f8fa; border: 1px solid #d0d7de; padding: 0 1em 0.5em; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #444; }
"""

SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images", String(imgs.length));
  document.body.setAttribute("data-images-loaded", String(ok));
  var boxes = Array.prototype.slice.call(document.querySelectorAll(".scroll"));
  var wide = boxes.filter(function (b) { return b.scrollWidth > b.clientWidth; });
  wide.forEach(function (b) { b.classList.add("scrolls"); b.title = "scroll sideways for more columns"; });
  document.body.setAttribute("data-tables-scrolling", String(wide.length));
  document.body.setAttribute("data-page-overflow", String(document.documentElement.scrollWidth - window.innerWidth));
});
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def table_html(t: Table) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in t.columns)
    body = []
    for row in t.rows:
        cells = []
        for c in row:
            if isinstance(c, Cell):
                text = f"<strong>{_e(c.text)}</strong>" if c.strong else _e(c.text)
                if c.warning:
                    cells.append(f'<td class="warn">{text} <span class="warning">⚠ {_e(c.warning)}</span></td>')
                else:
                    cells.append(f"<td>{text}</td>")
            else:
                cells.append(f"<td>{_e(c)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table id="{_e(t.id)}"><caption>{_e(t.caption)}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")


def section_html(s: Section, images: Mapping[str, bytes], svg: bool) -> str:
    parts = [f'<section id="{_e(s.id)}"><h2>{_e(s.title)}</h2>']
    parts += [f"<p>{_e(p)}</p>" for p in s.paragraphs]
    parts += [table_html(t) for t in s.tables]
    for f in s.figures:
        data = base64.b64encode(images[f.name]).decode("ascii")
        links = f' <a href="figures/{_e(f.name)}.png">PNG</a>' + (f' <a href="figures/{_e(f.name)}.svg">SVG</a>'
                                                                 if svg else "")
        parts.append(f'<figure id="fig-{_e(f.name)}"><img src="data:image/png;base64,{data}" alt="{_e(f.caption)}">'
                     f"<figcaption>{_e(f.caption)}{links}</figcaption></figure>")
    parts.append("</section>")
    return "\n".join(parts)


def page(report: Report, images: Mapping[str, bytes], *, svg: bool = True) -> str:
    """The whole page. `images`: PNG bytes by figure name (every figure of the report)."""
    missing = [f.name for f in report.figures if f.name not in images]
    if missing:
        raise KeyError(f"no image for figure(s) {', '.join(missing)}")
    nav = "".join(f'<li><a href="#{_e(s.id)}">{_e(s.title)}</a></li>' for s in [*report.intro, *report.sections])
    intro = "\n".join(section_html(s, images, svg) for s in report.intro)
    banner = ('<p class="redacted">Redacted: free text that could quote input (error messages, memory notes) is '
              "left out. Record values are never stored, so no report shows them.</p>" if report.redact else "")
    body = "\n".join(section_html(s, images, svg) for s in report.sections)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(report.title)}</title>
<style>{STYLE}</style>
<script>{SCRIPT}</script>
</head>
<body data-images="0" data-images-loaded="0">
<h1>{_e(report.title)}</h1>
<p class="meta">{_e(report.source)} · {report.summary.get("cells", 0)} cells · {len(report.figures)} figures</p>
{banner}
{intro}
<nav><ul>{nav}</ul></nav>
{body}
</body>
</html>
"""


__all__ = ["page", "table_html", "section_html", "CSP"]
