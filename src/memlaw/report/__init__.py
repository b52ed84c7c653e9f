"""`memlaw report`: one static HTML page (figures and tables) from a results store. DESIGN §8.

    from memlaw.report import build_report, write_report
    from memlaw.store import open_store

    with open_store("runs.db", create=False) as store:
        report = build_report(store.load_cells(), {k: store.token_probs(k) for k in ...})
    write_report(report, "report/")            # report/index.html + report/figures/*.png|svg

The package, in the order data flows through it:
- `document`: the report as data (`Report`, `Section`, `Table`, `Cell`, `FigureSpec`, `fmt`);
- `sections`: store rows -> one `Section` each (law fit, stubborn tokens, phases, cells, ...);
- `plots`: rows -> matplotlib Figures (no I/O);
- `build`: `build_report`, rows -> the whole `Report` (pure);
- `html`: a `Report` -> one HTML string (no I/O);
- `files`: `write_report`, the only part that writes.

Values (record values, which may be secrets) never reach the report: the store keeps positions,
counts, losses and p_t, not values or greedy outputs. `redact=True` also leaves out free text that
could quote input (failed cells' error messages, the methods rows' memory notes).
"""

from memlaw.report.build import build_report
from memlaw.report.document import Cell, FigureSpec, Report, Section, Table, fmt
from memlaw.report.files import write_report

__all__ = ["build_report", "write_report", "Report", "Section", "Table", "Cell", "FigureSpec", "fmt"]
