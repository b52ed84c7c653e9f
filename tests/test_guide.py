"""docs/guide.md cannot go stale: its commands run, in order, on the tiny model, and print what the guide shows.

Each command of the guide runs in one temp directory (memlaw commands in this process, the others with
bash), with the model swapped for `tiny` (`TINY`). Then for every command: the exit code is the one the
guide shows (for a leakage check, 0 or 1: whether a value leaks depends on the model), and the kinds of
line (a line's text up to the first number or colon: labels, table rules and headers, messages) of the
guide's output and of this run's are the same: a line the guide shows that the command no longer
prints, or one it prints now that the guide does not show, fails.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import docs_script
from memlaw.cli import app

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
TINY = {  # what the tiny model needs to certify the guide's phone book quickly; the rest of each command stays
    "write": ["--model", "tiny", "--template", "plain", "--rank", "8", "--layer", "1", "--lr", "0.03",
              "--batch-size", "8", "--dtype", "float32", "--max-steps", "600"],
    "plan": ["--model", "tiny"],
}
SMALLER = {"phonebook(16)": "phonebook(4)", "model: smollm2-135m": "model: tiny",
           "'ranks: [1, 4]'": "'ranks: [8, 16]'", "'lengths: [20, 40]'": "'lengths: [10, 20]'",
           "'train: {lr: 0.04, batch_size: 16, epochs: 100, until: budget,":
               "'prompt: {template: plain}' 'train: {lr: 0.03, batch_size: 16, epochs: 300, until: certified,"}
"""Text swapped in the guide's commands: 4 of its 16 records (the ones it names), the tiny model, and a
short sweep it learns (ranks that hold the lengths, stopped once certified)."""
HEADER_ONLY = {"memlaw fit": 3, "memlaw plan": 3}
"""Commands whose verdicts are the law's (a frontier or not, extrapolating or not, which notes): only their
first lines (the header: what was fitted, on which settings, which law) are compared."""
DEPENDS_ON_THE_MODEL = ("--leakage",)
"""Commands whose exit code says what the model did (0: no leak found, 1: some): either is a run, 2 is not."""


def guide():
    """docs/make_guide.py, which parses the guide (and, run, writes its outputs)."""
    return docs_script("make_guide")


def labels(lines: list[str]) -> set[str]:
    """What each output line is, without what it says: its text up to the first digit, "(" or ":" (progress
    lines left out). The numbers, notes and verdicts depend on the model; which lines there are does not."""
    kept = [line.replace("smollm2-135m", "tiny") for line in lines
            if not (guide().PROGRESS.match(line) or guide().CUT.match(line))]
    kept = [re.sub(r"([━─])\1+", r"\1", line) for line in kept]     # table rules: columns, not their widths
    kept = [line.replace(" (best)", "") for line in kept]              # which law form fits best: the model's verdict
    return {" ".join(re.match(r"[^\d(:]*:?", line.strip()).group().split()) for line in kept}


def run_tiny(command: str, workdir: Path) -> tuple[list[str], int]:
    for a, b in SMALLER.items():
        command = command.replace(a, b)
    if command.startswith("memlaw "):
        args = shlex.split(command)[1:]
        args += TINY.get(args[0], [])
        res = runner.invoke(app, args)
        return (res.stdout + res.stderr).splitlines(), res.exit_code
    p = subprocess.run(["bash", "-c", command + " 2>&1"], cwd=workdir, env=guide().shell_env(),
                       stdout=subprocess.PIPE, text=True)
    return p.stdout.splitlines(), p.returncode


def test_the_guide_covers_the_commands_a_newcomer_needs():
    commands = [c.text for c in guide().parse((ROOT / "docs" / "guide.md").read_text(encoding="utf-8"))]
    used = {shlex.split(c)[1] for c in commands if c.startswith("memlaw ")}
    assert {"write", "verify", "recall", "update", "sweep", "fit", "plan"} <= used
    assert any("--delete" in c for c in commands) and any("--leakage" in c for c in commands)
    assert all(c.output or c.exit_code == 0 for c in guide().parse((ROOT / "docs" / "guide.md").read_text())
               if c.text.startswith("memlaw ")), "every memlaw command of the guide shows its output"


def test_the_guide_runs_on_the_tiny_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "100")
    failures = []
    for c in guide().parse((ROOT / "docs" / "guide.md").read_text(encoding="utf-8")):
        output, code = run_tiny(c.text, tmp_path)
        allowed = {0, 1} if c.exit_code in (0, 1) and any(d in c.text for d in DEPENDS_ON_THE_MODEL) else {c.exit_code}
        if code not in allowed:
            failures.append(f"{c.text}: exit {code}, the guide shows {c.exit_code}\n" + "\n".join(output[-15:]))
            continue
        head = next((n for prefix, n in HEADER_ONLY.items() if c.text.startswith(prefix)), None)
        shown, printed = labels(c.output[:head]), labels(output[:head])
        if shown != printed:
            failures.append(f"{c.text}: lines only in the guide {sorted(shown - printed)}, only in this run "
                            f"{sorted(printed - shown)}\n" + "\n".join(output[-15:]))
    assert not failures, "\n\n".join(failures)


def test_make_guide_renders_a_saved_run_and_resumes_only_where_it_ran(tmp_path, monkeypatch):
    g = guide()
    text = "intro\n```console\n$ one\nstale\n$ two\n$ three\n```\nend\n"
    log = "$ one\nwrite: step 1/9\nwrite: step 2/9\nwrite: step 3/9\nwrite: step 4/9\ndone\n[exit 0]\n$ two\n[exit 2]\n$ three\nhalf"
    done = g.parse_run(log)
    assert [(c.text, c.exit_code) for c in done] == [("one", 0), ("two", 2)]     # "three" was cut off
    commands = g.parse(text)
    assert g.reuse(commands, done) == 2 and commands[2].output == []
    assert g.reuse(g.parse(text.replace("$ two", "$ changed")), done) == 1
    commands[2].output = ["out"]
    assert g.render(text, commands) == ("intro\n```console\n$ one\nwrite: step 1/9\n… (2 more progress lines)\n"
                                        "write: step 4/9\ndone\n$ two\n[exit 2]\n$ three\nout\n```\nend\n")
    (tmp_path / "log").write_text(log, encoding="utf-8")
    before = (ROOT / "docs" / "guide.md").read_bytes()
    monkeypatch.setattr(sys, "argv", ["make_guide.py", "--resume", str(tmp_path / "log")])
    with pytest.raises(SystemExit, match="give --workdir"):       # the rest would run without the earlier files
        g.main()
    assert (ROOT / "docs" / "guide.md").read_bytes() == before
