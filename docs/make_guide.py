"""Run the commands of docs/guide.md and paste their outputs under them (and parse the guide for its test).

The guide's ```console blocks hold commands (lines starting with "$ ") and, under each, the output it
printed (stdout and stderr, in order; of a run of progress lines the first and last; "[exit N]" last when
N is not 0). This script runs every command in
order in one empty directory with bash, `memlaw` being `python -m memlaw.cli` of this checkout, and
rewrites the outputs. It also saves the run under results/guide/ (the numbers the guide shows).

    OMP_NUM_THREADS=1 python docs/make_guide.py [--workdir DIR] 2> LOG
    OMP_NUM_THREADS=1 python docs/make_guide.py --workdir DIR --resume LOG    # go on where that run stopped
    python docs/make_guide.py --resume results/guide/run.txt     # re-render from the saved run, running nothing

A run prints each command and its output to stderr as it goes (LOG above). Resumed, the leading commands
that LOG shows complete, with the same text, keep their outputs and the rest run in DIR, which holds
the files the earlier ones made; run from scratch after a change to memlaw, since the outputs shown
come from the code that ran.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "guide.md"
PROMPT = "$ "
EXIT = re.compile(r"^\[exit (\d+)\]$")


@dataclass
class Command:
    text: str                   # the command as bash runs it
    output: list[str] = field(default_factory=list)
    exit_code: int = 0


def parse(text: str) -> list[Command]:
    """The commands of the guide's console blocks, with the outputs written under them."""
    commands: list[Command] = []
    inside = False
    for line in text.splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```console"
            continue
        if not inside:
            continue
        if line.startswith(PROMPT):
            commands.append(Command(line[len(PROMPT):]))
        elif commands and (m := EXIT.match(line)):
            commands[-1].exit_code = int(m.group(1))
        elif commands:
            commands[-1].output.append(line)
    return commands


PROGRESS = re.compile(r"^(write|update|verify|demo): (training|step|L_base|certificate|recall) ")
CUT = re.compile(r"^… \(\d+ more progress lines\)$")


def shown(output: list[str]) -> list[str]:
    """A command's output as the guide shows it: of a run of progress lines, the first and the last."""
    out: list[str] = []
    run: list[str] = []
    for line in [*output, None]:
        if line is not None and PROGRESS.match(line):
            run.append(line)
            continue
        if len(run) > 3:
            run = [run[0], f"… ({len(run) - 2} more progress lines)", run[-1]]
        out += run
        run = []
        if line is not None:
            out.append(line)
    return out


def render(text: str, commands: list[Command]) -> str:
    """The guide with each command's output replaced by `commands`' (same commands, same order)."""
    out, it, inside = [], iter(commands), False
    for line in text.splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```console"
            out.append(line)
            continue
        if not inside:
            out.append(line)
        elif line.startswith(PROMPT):
            c = next(it)
            assert c.text == line[len(PROMPT):]
            out += [line, *shown(c.output)] + ([f"[exit {c.exit_code}]"] if c.exit_code else [])
    return "\n".join(out) + "\n"


def parse_run(text: str) -> list[Command]:
    """The completed commands of a saved run (results/guide/run.txt, or this script's log): "$ cmd",
    its output, "[exit N]"; a command without its exit line (the run was cut off there) is left out."""
    commands: list[Command] = []
    current: Command | None = None
    for line in text.splitlines():
        if line.startswith(PROMPT):
            current = Command(line[len(PROMPT):])
        elif current is not None and (m := EXIT.match(line)):
            current.exit_code = int(m.group(1))
            commands.append(current)
            current = None
        elif current is not None:
            current.output.append(line)
    return commands


def shell_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), COLUMNS="100", OMP_NUM_THREADS="1")
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def reuse(commands: list[Command], done: list[Command]) -> int:
    """Give the leading `commands` that `done` ran already (the same text, in the same order) its outputs;
    how many."""
    reused = 0
    for c, d in zip(commands, done):
        if c.text != d.text:
            break
        c.output, c.exit_code = d.output, d.exit_code
        reused += 1
    return reused


def run(commands: list[Command], workdir: Path, reused: int = 0) -> None:
    """Run `commands[reused:]` in order in `workdir` (the earlier ones ran there already)."""
    prelude = f'memlaw() {{ "{sys.executable}" -m memlaw.cli "$@"; }}\n'
    for c in commands[reused:]:
        print(f"$ {c.text}", file=sys.stderr, flush=True)
        p = subprocess.run(["bash", "-c", prelude + c.text + " 2>&1"], cwd=workdir, env=shell_env(),
                           stdout=subprocess.PIPE, text=True)
        c.output = [line.rstrip() for line in p.stdout.splitlines()]
        c.exit_code = p.returncode
        print("\n".join(c.output + [f"[exit {c.exit_code}]"]), file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, help="Run there (default: a fresh temp directory).")
    ap.add_argument("--resume", type=Path, help=(
        "A run interrupted in --workdir (its log): the commands it completed, unchanged since, are not rerun."))
    args = ap.parse_args()
    text = GUIDE.read_text(encoding="utf-8")
    commands = parse(text)
    reused = reuse(commands, parse_run(args.resume.read_text(encoding="utf-8"))) if args.resume else 0
    if args.resume and reused < len(commands) and args.workdir is None:
        sys.exit(f"make_guide: {args.resume} holds the first {reused} of the guide's {len(commands)} commands; "
                 f"the rest must run where those ran: give --workdir")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        run(commands, workdir, reused)
    new = render(text, commands)
    GUIDE.write_text(new, encoding="utf-8")
    saved = ROOT / "results" / "guide" / "run.txt"
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text("".join(f"$ {c.text}\n" + "".join(f"{x}\n" for x in c.output) + f"[exit {c.exit_code}]\n"
                             for c in commands), encoding="utf-8")


if __name__ == "__main__":
    main()
