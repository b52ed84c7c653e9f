"""CLI: `memlaw report` writes one static HTML page (figures and tables) from a results store or its CSV export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from memlaw.cli._common import VerboseOpt, app, flag, out, run, setup_logging
from memlaw.cli.fit import FitLaw


@app.command()
def report(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for index.html, report.json and figures/.")],
    store: Annotated[Optional[Path], typer.Option("--store", help="SQLite results store (read only).",
                                                  show_default="none: give --store or --csv")] = None,
    csv_file: Annotated[Optional[Path], typer.Option("--csv", help=(
        "Or a `memlaw runs export` CSV (results/law-*.csv): the same report from the file, without the "
        "sections that need per-token probabilities (they are not exported)."), show_default="none")] = None,
    where: Annotated[Optional[str], typer.Option(
        help="Filter on store columns or config keys, e.g. model=smollm2-135m,kind=probe,benchmark.ratio=r100 "
             "(ops = != < <= > >=).",
        show_default="every cell")] = None,
    redact: Annotated[bool, typer.Option(
        help="Leave out free text that could quote input (error messages, memory notes). Record values are "
             "never stored, so no report shows them.")] = False,
    svg: Annotated[bool, typer.Option(help="Also write every figure as SVG.")] = True,
    law: Annotated[FitLaw, typer.Option(help=(
        "Law form in the law tables and figures: both side by side on the same cells (as memlaw fit), paper or "
        "bounded."))] = FitLaw.both,
    fix_b: Annotated[bool, flag("--fix-b", help="Law fit with b = 0 (as memlaw fit --fix-b).")] = False,
    saturated_below: Annotated[Optional[float], typer.Option(
        help="Fit the law on cells with L_final at least this (as memlaw fit).", show_default="every cell")] = None,
    pool: Annotated[Optional[list[str]], typer.Option(
        "--pool", help="A config key to fit the law across (repeatable), as memlaw fit --pool: e.g. "
                       "--pool benchmark.ratio draws the law combined across noise ratios.", show_default="none")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Write DIR/index.html: law fits, scaling panels, heat maps, MemFT vs SFT, stubborn tokens, ρ, phase picture.

    The page opens offline (figures embedded, no CDN, no server); every file is written atomically.
    """
    setup_logging(verbose)

    def go():
        from memlaw.errors import ConfigError
        from memlaw.report import build_report, write_report
        from memlaw.store import open_store

        if (store is None) == (csv_file is None):
            raise ConfigError("give exactly one of --store or --csv")
        if csv_file is not None:
            if where:
                raise ConfigError("--where filters a store; it does not apply to --csv")
            from memlaw.exports import read_export

            every, probs = read_export(csv_file), {}
            rows = [r for r in every if r["status"] == "done"]
            failed = [r for r in every if r["status"] == "failed"]
            source = f"CSV {csv_file}"
        else:
            with open_store(store, create=False) as db:
                rows = db.load_cells(where)
                failed = db.load_cells(where, status="failed")
                probs = {r["key"]: p for r in rows if (p := db.token_probs(r["key"]))}
            source = f"store {store}" + (f" where {where}" if where else "")
        if not rows:
            raise ConfigError(f"{store or csv_file}: no finished cells" + (f" match --where {where}" if where else ""))
        from memlaw.recount import with_bits_all

        rows = with_bits_all(rows)          # cells stored before bits were kept: recounted from their config
        rep = build_report(rows, probs, failed=failed, redact=redact, source=source,
                           law_options={"law": law.value, "fix_b": fix_b, "saturated_below": saturated_below,
                                        "pool": tuple(pool or ())})
        page = write_report(rep, out_dir, svg=svg)
        out.print(f"wrote {page} ({len(rep.figures)} figures, {len(rows)} cells)", markup=False, soft_wrap=True)

    run(go)


__all__ = ["report"]
