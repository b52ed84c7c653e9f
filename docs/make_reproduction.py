"""Regenerate the tables and figures of docs/reproduction.md from the law grids' exports, results/law-*.csv.

The prose of docs/reproduction.md is written by hand. What lies between `<!-- BEGIN generated: NAME -->`
and `<!-- END generated: NAME -->` is this script's: the sources read, the budgets, the paper's table
beside ours, the law table (`memlaw fit --csv FILE --markdown`, per experiment and combined across noise
ratios with `--pool benchmark.ratio`), the targets met or missed, bits per parameter at the frontier, and
the figures (drawn by `memlaw report`'s law section, written to docs/figures/reproduction/). A grid whose
CSV is not there yet is marked pending. Every number comes from the CSVs; the paper's come from `PAPER`.

    python docs/make_reproduction.py                    # from results/law-*.csv, the committed exports
    python docs/make_reproduction.py --results DIR --doc OUT.md --figures FIGDIR   # from other exports
    python docs/make_reproduction.py --check            # exit 1 if the doc's text is not what the CSVs give
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "reproduction.md"
FIGURES = ROOT / "docs" / "figures" / "reproduction"
POOL = ("benchmark.ratio",)
BLOCK = re.compile(r"(<!-- BEGIN generated: (?P<name>[a-z-]+) -->\n)(?P<body>.*?)(<!-- END generated: (?P=name) -->)",
                   re.S)


@dataclass(frozen=True)
class Grid:
    name: str                   # results/NAME.csv, configs/NAME.yaml
    paper: str                  # what the paper ran for this benchmark (reference_method.md)


GRIDS = (
    Grid("law-smollm2-longcontext", "Qwen3-8B / Llama-3.1-8B: ratios r0–r100, ℓ 50–10,000 tokens, ranks 1–16 "
                                    "(r100: 1–512), 2,000 steps at lr 1e-2 (linear to 0), one seed (42)"),
    Grid("law-smollm2-phonebook", "PB1k–PB32k (ℓ 1,000–32,000 value tokens), ranks 1–64, 200 epochs at lr 1e-2, "
                                  "one seed (42)"),
    Grid("law-gemma3-longcontext", "as the long-context row above (the paper has no Gemma model)"),
)
PAPER_SOURCE = ("the paper's law-fit table (\"Parametric-law fit validation\", arXiv 2605.30260), as transcribed in "
                "the project's paper digest (`paper/seed_digest.txt`, lines 46–53)")
PAPER_COLUMNS = ("r0", "r20", "r40", "r60", "r80", "r100", "Combined", "PhoneBook")
PAPER = {  # model -> (R² per column, MAPE % per column), PAPER_SOURCE
    "Llama3.1-8B-IT": ((0.992, 0.994, 0.996, 0.995, 0.996, 0.996, 0.987, 0.981),
                       (1.430, 2.493, 2.528, 2.755, 2.710, 2.563, 7.057, 1.606)),
    "Qwen3-8B-IT": ((0.996, 0.993, 0.996, 0.996, 0.995, 0.996, 0.983, 0.990),
                    (0.752, 2.553, 2.331, 2.862, 3.944, 3.472, 8.320, 0.476)),
}
FORMS = ("paper", "paper, b = 0", "bounded")


@dataclass
class Source:
    grid: Grid
    csv: Path
    rows: list            # `read_export` rows
    fits: list            # per experiment, then the pooled fit when the grid has several ratios


def load(grid: Grid, results: Path) -> Source | None:
    """The grid's CSV fitted per experiment (both forms, and the paper's with b = 0) and, with several
    noise ratios, combined across them; None when the CSV is not there."""
    from memlaw.exports import read_export
    from memlaw.fitting import fit_cells

    path = results / f"{grid.name}.csv"
    if not path.is_file():
        return None
    rows = read_export(path)
    fits = with_b0(fit_cells(csv=path)["fits"], fit_cells(csv=path, law="paper", fix_b=True)["fits"])
    if len({(r.get("config") or {}).get("benchmark", {}).get("ratio") for r in rows}) > 1:
        fits += with_b0(fit_cells(csv=path, pool=POOL)["fits"], fit_cells(csv=path, law="paper", fix_b=True,
                                                                          pool=POOL)["fits"])
    return Source(grid, path, rows, fits)


def with_b0(fits: list, fixed: list) -> list:
    """Each fit with the paper's form at b = 0 (`memlaw fit --fix-b`) added as the form "paper, b = 0"."""
    for fit, b0 in zip(fits, fixed):
        assert fit["config"] == b0["config"]
        fit["forms"] = {"paper": fit["forms"]["paper"], "paper, b = 0": b0["forms"]["paper"],
                        **{k: v for k, v in fit["forms"].items() if k != "paper"}}
    return fits


def pending(grid: Grid) -> str:
    return f"_Pending: `results/{grid.name}.csv` is not committed yet (the lead exports it when the grid finishes)._"


def sources_block(loaded: dict[str, Source | None]) -> str:
    lines = ["| grid | file | cells done | failed | sha256 (first 12) |", "|---|---|--:|--:|---|"]
    for name, src in loaded.items():
        if src is None:
            lines.append(f"| {name} | `results/{name}.csv` | pending | | |")
            continue
        digest = hashlib.sha256(src.csv.read_bytes()).hexdigest()[:12]
        done = sum(r["status"] == "done" for r in src.rows)
        lines.append(f"| {name} | `results/{name}.csv` | {done} | {len(src.rows) - done} | `{digest}` |")
    return "\n".join(lines)


def _values(v) -> str:
    return ", ".join(f"{x:g}" if isinstance(x, (int, float)) else str(x) for x in v)


def budgets_block(loaded: dict[str, Source | None]) -> str:
    """Per grid: the paper's design, the config's plan, and what the CSV holds (with the cells at the ceiling)."""
    from memlaw.sweep.grid import load_sweep

    lines = ["| grid | the paper | planned (configs/) | measured (results/) | cells with ΔL ≥ 95% of L_base |",
             "|---|---|---|---|--:|"]
    for name, src in loaded.items():
        grid = next(g for g in GRIDS if g.name == name)
        sweep = load_sweep(ROOT / "configs" / f"{name}.yaml")
        ratios = [b.ratio for b in sweep.benchmarks if getattr(b, "ratio", None)]
        budget = (f"{sweep.train.max_steps} steps" if sweep.train.max_steps else f"{sweep.train.epochs} epochs")
        n = len(sweep.benchmarks) * len(sweep.ranks) * len(sweep.lengths) * len(sweep.seeds) * len(sweep.objectives)
        planned = (f"{sweep.model}, {sweep.benchmarks[0].name}{' ' + _values(ratios) if ratios else ''}; "
                   f"ranks {_values(sweep.ranks)}; ℓ {_values(sweep.lengths)}; seeds {_values(sweep.seeds)}; "
                   f"{budget} at lr {sweep.train.lr:g}, batch {sweep.train.batch_size}; {n} cells")
        if src is None:
            lines.append(f"| {name} | {grid.paper} | {planned} | pending | |")
            continue
        done = [r for r in src.rows if r["status"] == "done"]
        measured = (f"{len(done)} cells: ranks {_values(sorted({r['rank'] for r in done}))}; "
                    f"ℓ {_values(sorted({r['length'] for r in done}))}; seeds {_values(sorted({r['seed'] for r in done}))}; "
                    f"{_values(sorted({r['steps'] for r in done if r.get('steps') is not None}))} steps")
        top = [r for r in done if r.get("L_base") and r.get("delta_loss") is not None]
        ceiling = sum(r["delta_loss"] >= 0.95 * r["L_base"] for r in top)
        lines.append(f"| {name} | {grid.paper} | {planned} | {measured} | {ceiling} of {len(top)} |")
    return "\n".join(lines)


def _paper_column(fit) -> str | None:
    """Which column of the paper's table a fit sits beside: the noise ratio, Combined, or PhoneBook."""
    from memlaw.experiments import flat

    f = flat(fit.get("config") or {})
    if fit.get("pooled_values"):
        return "Combined"
    if f.get("benchmark.name") == "phonebook":
        return "PhoneBook"
    return f.get("benchmark.ratio")


def planned_columns() -> set[str]:
    """The columns of the paper's table that configs/law-*.yaml plan to fill: their ratios, Combined, PhoneBook."""
    from memlaw.sweep.grid import load_sweep

    out = set()
    for grid in GRIDS:
        sweep = load_sweep(ROOT / "configs" / f"{grid.name}.yaml")
        ratios = {b.ratio for b in sweep.benchmarks if b.name == "long-context"}
        out |= ratios | ({"Combined"} if len(ratios) > 1 else set())
        out |= {"PhoneBook"} if any(b.name == "phonebook" for b in sweep.benchmarks) else set()
    return out


def comparison_block(loaded: dict[str, Source | None]) -> str:
    """The paper's R² and MAPE beside ours, per column of the paper's table (one row per setting)."""
    from memlaw.paper_table import labels

    fits = [fit for src in loaded.values() if src for fit in src.fits]
    names = labels(fits)
    head = ["setting", *(f"paper, {m}: R² / MAPE" for m in PAPER), *(f"ours, {form}: R² / MAPE" for form in FORMS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["--:"] * (len(head) - 1)) + "|"]
    for i, column in enumerate(PAPER_COLUMNS):
        ours = [(n, f) for n, f in zip(names, fits) if _paper_column(f) == column]
        theirs = [f"{r2[i]:.3f} / {mape[i]:.3f}%" for r2, mape in PAPER.values()]
        if not ours:
            state = "pending" if column in planned_columns() else "not run"
            lines.append(f"| {column} | " + " | ".join(theirs + [state] * len(FORMS)) + " |")
        for name, fit in ours:
            cells = [_r2_mape(fit, form) for form in FORMS]
            lines.append(f"| {column}: {name} | " + " | ".join(theirs + cells) + " |")
    return "\n".join(lines) + f"\n\nThe paper's numbers: {PAPER_SOURCE}; one seed, no standard errors."


def _r2_mape(fit, form: str) -> str:
    f = fit["forms"].get(form)
    if f is None:
        return "-"
    law = f["law"]
    r2 = "-" if law["r2"] is None else f"{law['r2']:.3f}"
    mape = "-" if law["mape"] is None else f"{law['mape']:.2f}%"
    return f"{r2} / {mape}" + ("" if law["converged"] else " (not converged)")


def targets_block(loaded: dict[str, Source | None]) -> str:
    """Each fit and form against the targets: ✓ met, ✗ missed (the cells that miss are in the law block)."""
    from memlaw.paper_table import TARGETS, checks, labels

    fits = [fit for src in loaded.values() if src for fit in src.fits]
    if not fits:
        return "_Pending: no grid's CSV is committed yet._"
    lines = ["| experiment | form | R² | MAPE | held-out MAPE by rank | held-out MAPE by length |",
             "|---|---|--:|--:|--:|--:|"]
    for name, fit in zip(labels(fits), fits):
        for form in FORMS:
            if form not in fit["forms"]:
                continue
            got = {c.name: c for c in checks(fit, form)}
            row = []
            for key in ("R²", "MAPE", "held-out MAPE by rank", "held-out MAPE by length"):
                c = got.get(key)
                if c is None or c.value is None:
                    row.append("-")
                else:
                    value = f"{c.value:.4f}" if key == "R²" else f"{c.value:.2f}%"
                    row.append(f"{value} {'✓' if c.met else '✗'}")
            lines.append(f"| {name} | {form} | " + " | ".join(row) + " |")
    return f"Targets: {TARGETS.describe()}.\n\n" + "\n".join(lines)


def law_block(loaded: dict[str, Source | None]) -> str:
    from memlaw.paper_table import markdown

    fits = [fit for src in loaded.values() if src for fit in src.fits]
    missing = [pending(src_grid) for src_grid in GRIDS if loaded.get(src_grid.name) is None]
    return ((markdown(fits) if fits else "") + ("\n" if fits and missing else "") + "\n\n".join(missing)).rstrip()


def capacity_block(loaded: dict[str, Source | None]) -> str:
    from memlaw.paper_table import capacity_table, labels

    fits = [fit for src in loaded.values() if src for fit in src.fits if not fit.get("pooled_values")]
    return capacity_table(fits, labels(fits)).rstrip() if fits else "_Pending: no grid's CSV is committed yet._"


def figures_block(loaded: dict[str, Source | None], figures: Path, doc: Path, write: bool) -> str:
    """Draw each experiment's law figures (and the combined fit's predicted-vs-measured) with the report's law
    section, write them under `figures` (when `write`), and return the Markdown that shows them."""
    from memlaw import experiments
    from memlaw.paper_table import row_label
    from memlaw.report import plots
    from memlaw.report.law_section import law_section

    if write:
        figures.mkdir(parents=True, exist_ok=True)
        for old in figures.glob("*.png"):
            old.unlink()
    out = []
    for name, src in loaded.items():
        if src is None:
            continue
        done = [r for r in src.rows if r["status"] == "done"]
        groups = [(g, ()) for g in experiments.group(done)]
        if len(groups) > 1:
            groups += [(g, POOL) for g in experiments.group(done, POOL)]
        for group, pool in groups:
            fit = {"config": group.config, "pooled_values": _pooled(group.rows, pool)}
            label = row_label(fit)
            sec, _ = law_section(group, {"law": "both", "pool": pool})
            for spec in sec.figures:
                kind = next((k for k in ("law-panels", "predicted") if spec.name.startswith(k)), None)
                if kind is None or (pool and kind == "law-panels"):
                    continue                  # heat maps are in `memlaw report`; panels of a pooled fit mix ratios
                form = spec.name[len(kind) + 1:].split("-")[0]
                file = figures / f"{_file_name(name, label, kind, form)}.png"
                if write:
                    file.write_bytes(plots.render(spec.figure, "png"))
                out.append(f"![{label}, {kind}, {form}]({os.path.relpath(file, doc.parent)})  \n*{label}*: {spec.caption}")
    return "\n\n".join(out) if out else "_Pending: no grid's CSV is committed yet._"


def _file_name(*parts: str) -> str:
    return "-".join(re.sub(r"[^a-z0-9]+", "-", p.lower()).strip("-") for p in parts)


def _pooled(rows, pool) -> dict:
    from memlaw.fitting import pooled_values

    return pooled_values(rows, pool) if pool else {}


def commands_block(loaded: dict[str, Source | None]) -> str:
    lines = ["```console"]
    for name, src in loaded.items():
        csv = f"results/{name}.csv"
        lines.append(f"$ memlaw fit --csv {csv} --markdown")
        lines.append(f"$ memlaw fit --csv {csv} --law paper --fix-b --markdown")
        if pooled := src is not None and any(f.get("pooled_values") for f in src.fits):
            lines.append(f"$ memlaw fit --csv {csv} --pool benchmark.ratio --markdown")
            lines.append(f"$ memlaw fit --csv {csv} --pool benchmark.ratio --law paper --fix-b --markdown")
        lines.append(f"$ memlaw report --csv {csv} --out report-{name}")
        if pooled:
            lines.append(f"$ memlaw report --csv {csv} --pool benchmark.ratio --out report-{name}-combined")
    lines.append("```")
    return "\n".join(lines)


def render(text: str, blocks: dict[str, str]) -> str:
    """`text` with each generated block's body replaced by `blocks[name]`.

    Raises:
        SystemExit: a block the doc lacks or one this script does not make.
    """
    found = [m.group("name") for m in BLOCK.finditer(text)]
    if sorted(found) != sorted(blocks):
        sys.exit(f"make_reproduction: the doc's generated blocks are {found}, expected {sorted(blocks)}")
    return BLOCK.sub(lambda m: m.group(1) + blocks[m.group("name")].rstrip() + "\n" + m.group(4), text)


def generate(results: Path, template: Path, doc: Path, figures: Path, *, write_figures: bool = True) -> str:
    """The text of `template` (the doc's prose) with its blocks regenerated from the CSVs in `results`, for a doc
    at `doc` (image links are relative to it); figures are written under `figures` when `write_figures`."""
    loaded = {g.name: load(g, results) for g in GRIDS}
    blocks = {"sources": sources_block(loaded), "budgets": budgets_block(loaded),
              "comparison": comparison_block(loaded), "targets": targets_block(loaded), "law": law_block(loaded),
              "capacity": capacity_block(loaded), "figures": figures_block(loaded, figures, doc, write_figures),
              "commands": commands_block(loaded)}
    return render(template.read_text(encoding="utf-8"), blocks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=ROOT / "results", help="Where the law-*.csv exports are.")
    ap.add_argument("--doc", type=Path, default=DOC, help="The doc to regenerate (read, then rewritten).")
    ap.add_argument("--template", type=Path, help="Read the prose from here instead of --doc.")
    ap.add_argument("--figures", type=Path, default=FIGURES, help="Where the figures go.")
    ap.add_argument("--check", action="store_true", help="Write nothing; exit 1 if the doc's text would change.")
    args = ap.parse_args()
    new = generate(args.results, args.template or args.doc, args.doc, args.figures, write_figures=not args.check)
    if args.check:
        if new != args.doc.read_text(encoding="utf-8"):
            sys.exit(f"make_reproduction: {args.doc} is not what {args.results}/law-*.csv give; run "
                     "python docs/make_reproduction.py")
        return
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.doc.with_name(f".{args.doc.name}.tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, args.doc)


if __name__ == "__main__":
    main()
