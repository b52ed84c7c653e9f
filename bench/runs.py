"""The run log of the timing scripts that resume (write_speed.py, converge.py): one JSON line per run
in `--out`, runs already there not run again, `--table` printing saved runs again, and the table head."""

from __future__ import annotations

import json
import os
import subprocess


def git_commit() -> str:
    """The short hash of the checkout's HEAD: the code a run measured."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()


def saved(paths: list[str]) -> list[dict]:
    """The runs saved in these JSON-lines files, in order (blank lines skipped)."""
    runs = []
    for path in paths:
        with open(path) as f:
            runs += [json.loads(line) for line in f if line.strip()]
    return runs


def resumed(out: str | None) -> list[dict]:
    """The runs already in `out` (none when it is not given or not there yet), which are not run again."""
    return saved([out]) if out and os.path.exists(out) else []


def keep(run: dict, runs: list[dict], out: str | None, progress: str) -> None:
    """Add `run` to `runs`, print its `progress` line at once, and append it to `out` as one JSON line."""
    runs.append(run)
    print(progress, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(json.dumps(run) + "\n")


def print_head(head: str) -> None:
    """A table's column heads and a rule as wide."""
    print(head)
    print("-" * len(head))
