"""Why a value cannot be a setting: the checks every config field goes through, and how messages quote values.

Each `*_problem` function returns the message for a bad value, or None: the config dataclasses
collect every problem (`collect`) and raise one `ConfigError` for all of them (`refuse`).

- `int_problem`: the right type (a bool or a float such as 2.5 is not an integer) and in range.
- `float_problem`: a number (ints are; bools are not), finite (NaN or infinity would train an
  all-NaN adapter) and in range.
- `shown` quotes a value in a message, bounded in size; `nearest` suggests the closest valid name.
"""

from __future__ import annotations

import difflib
import math
import reprlib
import string
from collections.abc import Iterable
from typing import Any

from memlaw.errors import ConfigError

_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxlevel = 60, 60, 6, 6, 6, 3


def shown(value: Any) -> str:
    """A config value as a message quotes it: its repr, bounded in size (a huge or deeply aliased
    YAML value is never expanded in full)."""
    return _REPR.repr(value)


def nearest(name: Any, options: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the valid name closest to `name`, or '' when none is close."""
    close = difflib.get_close_matches(str(name), list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def int_problem(name: str, value: Any, *, lo: int | None = None, hi: int | None = None,
                optional: bool = False) -> str | None:
    """Why `value` cannot be integer setting `name` (a bool or a float is not an integer), or None."""
    if value is None and optional:
        return None
    wrong_type = not isinstance(value, int) or isinstance(value, bool)
    if wrong_type or (lo is not None and value < lo) or (hi is not None and value > hi):
        return f"{name} must be an integer {_range(lo, hi, False, False)}, got {shown(value)}".replace(" ,", ",")
    return None


def float_problem(name: str, value: Any, *, lo: float | None = None, hi: float | None = None,
                  lo_open: bool = False, hi_open: bool = False, optional: bool = False) -> str | None:
    """Why `value` cannot be number setting `name` (not a number, a bool, NaN, infinite, out of range), or None."""
    if value is None and optional:
        return None
    where = _range(lo, hi, lo_open, hi_open)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return f"{name} must be a finite number {where}, got {shown(value)}".replace(" ,", ",")
    if (lo is not None and (value <= lo if lo_open else value < lo)) or \
            (hi is not None and (value >= hi if hi_open else value > hi)):
        return f"{name} must be {where}, got {shown(value)}"
    return None


def _range(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    """'>= 1', '> 0', 'in [0, 0.5)', '<= 1' or '' (no bound)."""
    lo, hi = (f"{x:g}" if isinstance(x, float) else x for x in (lo, hi))
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi}"
    return ""


def margin_problem(margin: Any) -> str | None:
    """What is wrong with a certificate margin (certified: every p_t > 0.5 + margin), or None."""
    return float_problem("margin", margin, lo=0.0, hi=0.5, hi_open=True)


def format_problem(fmt: Any) -> str | None:
    """Why `fmt` cannot show a key: not a string, stray braces, or a field other than a plain `{key}`."""
    if not isinstance(fmt, str):
        return f"format must be a string containing '{{key}}', got {shown(fmt)}"
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(fmt) if name is not None]
    except ValueError as e:              # "Single '}' encountered in format string", ...
        return f"format {shown(fmt)} is not a valid format string ({e}); write literal braces as {{{{ and }}}}"
    if not fields or any(f != ("key", "", None) for f in fields):
        return f"format must contain '{{key}}' and no other field (literal braces are {{{{ and }}}}), got {shown(fmt)}"
    return None


def collect(*found: str | None) -> list[str]:
    """The problems among `found` (the Nones dropped)."""
    return [p for p in found if p is not None]


def refuse(problems: list[str], what: str) -> None:
    """Raise one `ConfigError` naming every problem of section `what`, if there is any."""
    if problems:
        raise ConfigError(f"{what}: " + "; ".join(problems))


__all__ = ["shown", "nearest", "int_problem", "float_problem", "margin_problem", "format_problem", "collect",
           "refuse"]
