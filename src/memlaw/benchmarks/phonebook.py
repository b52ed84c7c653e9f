"""PhoneBook (the paper's key → 10-digit phone number benchmark), shipped inside the package (MIT)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from memlaw.errors import ConfigError
from memlaw.records import Record, load_records

PHONEBOOK_SIZE = 32_000


def phonebook_path() -> Path:
    return Path(str(files("memlaw").joinpath("data/phonebook/phonebook_32000.jsonl")))


def phonebook(n: int) -> list[Record]:
    """The first `n` entries of the paper's list (its PB<N> files are nested prefixes of it)."""
    if not 1 <= n <= PHONEBOOK_SIZE:
        raise ConfigError(f"phonebook size must be in 1..{PHONEBOOK_SIZE}, got {n}")
    return load_records(phonebook_path())[:n]
