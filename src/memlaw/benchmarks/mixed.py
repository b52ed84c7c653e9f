"""A mixed real-world record set: URLs, API-key-like strings, ICD-10 codes, statute and legal text,
multi-line text, LaTeX, SQL, a regex, Chinese, Japanese and Korean.

24 records, all invented for memlaw (no real secret, person, address or law; ICD-10 codes are real
codes attached to invented charts). The values are what PhoneBook is not: long, irregular, and
tokenized into many byte-level pieces, so defaults tuned on PhoneBook are checked against them.
Provenance and licence: `data/mixed/README.md`.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files
from pathlib import Path

from memlaw.errors import ConfigError
from memlaw.records import Record, load_records

MIXED_SIZE = 24


def mixed_path() -> Path:
    return Path(str(files("memlaw").joinpath("data/mixed/mixed_24.jsonl")))


@lru_cache(maxsize=1)
def _mixed() -> tuple[Record, ...]:
    return tuple(load_records(mixed_path()))


def mixed(n: int = MIXED_SIZE) -> list[Record]:
    """The first `n` records of the mixed set (all 24 by default)."""
    if not 1 <= n <= MIXED_SIZE:
        raise ConfigError(f"mixed set size must be in 1..{MIXED_SIZE}, got {n}")
    return list(_mixed()[:n])
