"""Progress for people who are not watching a terminal: a line on stderr at intervals.

On a terminal, `write`, `update` and `demo` draw a bar. When stderr is a log file, CI or `nohup`, a bar
would print nothing useful, so they print a line every `MEMLAW_PROGRESS_SECONDS` seconds (default 30)
instead: step, records certified, stubborn tokens, loss, elapsed time and an ETA. `verify` does the
same for its passes (L_base, certificate, greedy recall). Counts only: no line shows a value.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

from memlaw.errors import ConfigError

EVERY_ENV = "MEMLAW_PROGRESS_SECONDS"
DEFAULT_EVERY = 30.0


def every_seconds() -> float:
    """The interval between progress lines, from `MEMLAW_PROGRESS_SECONDS` (default 30).

    Raises:
        ConfigError: the variable is set but is not a number >= 0.
    """
    raw = os.environ.get(EVERY_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_EVERY
    try:
        every = float(raw)
    except ValueError:
        every = -1.0
    if not every >= 0:
        raise ConfigError(f"{EVERY_ENV}={raw[:40]!r} must be a number of seconds >= 0 (0: a line at every step)")
    return every


def duration(seconds: float | None) -> str:
    """'45s', '3m07s', '2h05m'; '?' when unknown."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Lines:
    """Print a line when `every` seconds have passed since the last one (the first after `every` too)."""

    def __init__(self, every: float, *, clock: Callable[[], float] = time.monotonic,
                 write: Callable[[str], None] | None = None):
        self.every, self.clock = every, clock
        self.write = write or (lambda text: print(text, file=sys.stderr, flush=True))
        self.last = clock()

    def due(self) -> bool:
        return self.clock() - self.last >= self.every

    def emit(self, text: str) -> None:
        self.write(text)
        self.last = self.clock()


def step_lines(what: str, until: str, *, tty: bool | None = None, every: float | None = None,
               lines: Lines | None = None):
    """An `on_step` callback printing progress lines, or None when stderr is a terminal (a bar is drawn there).

    Args:
        what: the command, first word of each line ("write", "update").
        until: the stop rule ("certified": the ETA is to the step budget, an upper bound).
    """
    if tty is None:
        tty = sys.stderr.isatty()
    if tty:
        return None
    lines = lines or Lines(every_seconds() if every is None else every)
    state: dict = {"started": False, "certified": None, "stubborn": None}

    def on_step(info) -> None:
        if not state["started"]:
            state["started"] = True
            rule = ", until every record certifies" if until == "certified" else ""
            lines.emit(f"{what}: training {info.n_records} records, at most {info.total} steps{rule}; "
                       f"a progress line every {duration(lines.every)}")
        if info.certified is not None:       # counts exist at check steps only: keep the last ones
            state["certified"], state["stubborn"] = info.certified, info.stubborn
        if not (lines.due() or info.step == info.total):
            return
        left = info.elapsed / info.step * (info.total - info.step) if info.step else None
        eta = f"ETA ≤ {duration(left)} (step budget)" if until == "certified" else f"ETA {duration(left)}"
        cert = "?" if state["certified"] is None else state["certified"]
        stub = "?" if state["stubborn"] is None else state["stubborn"]
        lines.emit(f"{what}: step {info.step}/{info.total}  certified {cert}/{info.n_records} records  "
                   f"stubborn {stub} tokens  loss {info.loss:.4f}  elapsed {duration(info.elapsed)}  {eta}")

    return on_step


def verify_lines(what: str = "verify", *, tty: bool | None = None, every: float | None = None,
                 lines: Lines | None = None, clock: Callable[[], float] = time.monotonic):
    """An `on_progress` callback for `verify` printing progress lines, or None on a terminal."""
    if tty is None:
        tty = sys.stderr.isatty()
    if tty:
        return None
    lines = lines or Lines(every_seconds() if every is None else every, clock=clock)
    t0 = clock()
    stage: dict = {"name": None, "t": t0}

    def on_progress(p) -> None:
        now = clock()
        if p.stage != stage["name"]:
            stage["name"], stage["t"] = p.stage, now
        if not lines.due():
            return
        spent = now - stage["t"]
        left = spent / p.done * (p.total - p.done) if p.done else None
        counts = "" if p.certified is None else f"  certified {p.certified}/{p.done}  stubborn {p.stubborn} tokens"
        lines.emit(f"{what}: {p.stage} {p.done}/{p.total} records{counts}  elapsed {duration(now - t0)}  "
                   f"ETA of this pass {duration(left)}")

    return on_progress


__all__ = ["EVERY_ENV", "every_seconds", "duration", "Lines", "step_lines", "verify_lines"]
