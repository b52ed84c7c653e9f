"""memlaw's command line: parse, call the Python API, print. Errors: one line on stderr, exit 2.

Each submodule registers its commands on the one Typer `app`.
"""

from memlaw.cli._common import app
from memlaw.cli import memory  # noqa: F401  (write, verify, demo)
from memlaw.cli import recall  # noqa: F401  (recall)
from memlaw.cli import update  # noqa: F401  (update)
from memlaw.cli import sweep  # noqa: F401  (sweep, runs)
from memlaw.cli import phase  # noqa: F401  (runs records, runs phase)
from memlaw.cli import fit  # noqa: F401  (fit)
from memlaw.cli import plan  # noqa: F401  (plan)
from memlaw.cli import report  # noqa: F401  (report)


def main() -> None:
    import sys

    from memlaw.cli._common import argv_problem

    if (problem := argv_problem(sys.argv[1:])) is not None:   # before Typer: its errors would show raw bytes
        print(f"memlaw: error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    app()


__all__ = ["app", "main"]
