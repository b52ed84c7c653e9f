"""PhoneBook: keys "First Last:" → 10-digit phone numbers (the paper's main key-value benchmark).

Three ways to get one (reference_method §8.1, data README):

- `phonebook(n)`: the first n entries of the paper's 32,000-entry list, shipped in the package (MIT).
- `phonebook_length(tokenizer, N)`: the paper's PB<N>. N counts *value* tokens under the tokenizer
  in use (terminators excluded), and PB<N> is the shortest prefix of the one list whose values sum
  to exactly N tokens: N / tokens_per_value entries when every value has the same token count
  (SmolLM2 and Qwen3 split digits: 10 a value; Llama-3 groups them in threes: 4).
- `generate_phonebook(n, seed)`: a fresh book in the same format, seeded, whose exact entropy is
  `phonebook_bits(n)`.
"""

from __future__ import annotations

import bisect
import math
import random
from functools import lru_cache
from importlib.resources import files
from itertools import accumulate
from pathlib import Path

from memlaw import bits
from memlaw.bits import ValueBits
from memlaw.errors import ConfigError
from memlaw.records import Record, load_records

PHONEBOOK_SIZE = 32_000
FIRST_DIGITS = "6789"
"""The paper's numbers start with 6-9 (no leading zero); the other nine digits are uniform."""
PHONE_CHOICES = len(FIRST_DIGITS) * 10**9
"""Distinct 10-digit numbers the generator draws from: 4·10^9 (≈ 31.9 bits each)."""
PHONE_BITS = math.log2(PHONE_CHOICES)
"""Entropy of one number: log2 4 = 2 bits for the first digit (6-9) + 9·log2 10 for the others ≈ 31.897."""


def phonebook_path() -> Path:
    return Path(str(files("memlaw").joinpath("data/phonebook/phonebook_32000.jsonl")))


@lru_cache(maxsize=1)
def _paper_list() -> tuple[Record, ...]:
    return tuple(load_records(phonebook_path()))


def phonebook(n: int) -> list[Record]:
    """The first `n` entries of the paper's list (its PB<N> files are nested prefixes of it)."""
    if not 1 <= n <= PHONEBOOK_SIZE:
        raise ConfigError(f"phonebook size must be in 1..{PHONEBOOK_SIZE}, got {n}")
    return list(_paper_list()[:n])


def phonebook_length(tokenizer, length: int) -> list[Record]:
    """The paper's PB<N>: the prefix of the list holding exactly N = `length` value tokens.

    Args:
        tokenizer: the model's tokenizer; values are counted as `encode` counts them (no special tokens).
        length: N, value tokens summed over the entries (terminators excluded).

    Raises:
        ConfigError: no prefix sums to exactly N (e.g. N is not a multiple of the tokens per value);
            the message names the nearest valid N below and above.
    """
    if length < 1:
        raise ConfigError(f"PB<N> needs N >= 1 value tokens, got {length}")
    cumulative = _cumulative_value_tokens(tokenizer, length)
    n = bisect.bisect_left(cumulative, length)
    if n < len(cumulative) and cumulative[n] == length:
        return phonebook(n + 1)
    below = cumulative[n - 1] if n > 0 else None
    above = cumulative[n] if n < len(cumulative) else None
    per = {b - a for a, b in zip([0, *cumulative[:-1]], cumulative)}
    cause = (f"N must be a multiple of {per.pop()} value tokens per entry under this tokenizer" if len(per) == 1
             else "no prefix of the phone book holds exactly that many value tokens under this tokenizer")
    nearby = " or ".join(f"PB{x}" for x in (below, above) if x is not None)
    limit = "" if above is not None else f" (the whole list holds {cumulative[-1]} value tokens)"
    raise ConfigError(f"PB{length}: {cause}; nearest valid: {nearby}{limit}")


def build(tokenizer, length: int) -> tuple[list[Record], list[Record]]:
    """The registry's `phonebook`: PB<ℓ>, nothing held out."""
    return phonebook_length(tokenizer, length), []


def value_bits(tokenizer, records: list[Record]) -> ValueBits:
    """Exact bits of PhoneBook values: `PHONE_BITS` a number (the generator the paper's list follows,
    reference_method §8.1: first digit 6-9, the other nine uniform). A value of another shape (not
    10 digits starting 6-9) makes the whole count an upper bound (`memlaw.bits.upper`).

    Per record, as if drawn independently: the list's numbers are distinct, which takes less than
    n²/(2·4·10^9·ln 2) bits off the joint entropy of n of them (0.18 bits at n = 32,000; `phonebook_bits`).
    """
    if all(len(v) == 10 and v.isascii() and v.isdigit() and v[0] in FIRST_DIGITS for v in (r.value for r in records)):
        return bits.exact([PHONE_BITS] * len(records), "PhoneBook: log2(4·10^9) ≈ 31.90 bits a number "
                          "(first digit 6-9, nine uniform digits)")
    return bits.upper(records, "upper bound: a value is not a PhoneBook number (10 digits, the first 6-9)")


def _cumulative_value_tokens(tokenizer, length: int, chunk: int = 1024) -> list[int]:
    """Running value-token totals of the paper's list, tokenised chunk by chunk until they pass `length`."""
    records = _paper_list()
    totals: list[int] = []
    for lo in range(0, len(records), chunk):
        values = [r.value for r in records[lo: lo + chunk]]
        counts = [len(ids) for ids in tokenizer(values, add_special_tokens=False).input_ids]
        totals.extend(list(accumulate(counts, initial=totals[-1] if totals else 0))[1:])
        if totals[-1] > length:
            break
    return totals


@lru_cache(maxsize=1)
def name_pools() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Sorted distinct first and last names of the paper's list (3,309 and 14,786)."""
    first, last = set(), set()
    for r in _paper_list():
        a, b = r.key.removesuffix(":").split(" ")
        first.add(a)
        last.add(b)
    return tuple(sorted(first)), tuple(sorted(last))


def generate_phonebook(n: int, seed: int = 0) -> list[Record]:
    """A fresh phone book of `n` entries in the paper's format, the same for the same (n, seed).

    Keys are "First Last:" with names drawn uniformly from the paper's name pools, all distinct.
    Values are 10 digits, the first uniform in 6-9 and the rest uniform, all distinct (drawn
    without replacement), so their joint entropy is exactly `phonebook_bits(n)`.
    The book for (n, seed) is a prefix of the book for (n + k, seed).
    """
    first, last = name_pools()
    if not 1 <= n <= min(PHONE_CHOICES, len(first) * len(last)):
        raise ConfigError(f"generated phone book size must be >= 1 (and below the name/number space), got {n}")
    rng = random.Random(seed)
    keys: set[str] = set()
    values: set[str] = set()
    out = []
    while len(out) < n:
        key = f"{first[rng.randrange(len(first))]} {last[rng.randrange(len(last))]}:"
        value = f"{FIRST_DIGITS[rng.randrange(len(FIRST_DIGITS))]}{rng.randrange(10**9):09d}"
        if key in keys or value in values:  # rejection keeps each draw uniform over what is left
            continue
        keys.add(key)
        values.add(value)
        out.append(Record(key, value))
    return out


def phonebook_bits(n: int) -> float:
    """Exact entropy in bits of the values of `generate_phonebook(n, ·)`: log2(K·(K−1)···(K−n+1)), K = 4·10^9.

    Distinct values drawn uniformly without replacement; the keys are given at recall and carry
    no stored information. Per value that is log2(4·10^9) ≈ 31.897 bits, less a sliver for distinctness.
    """
    if n < 0:
        raise ConfigError(f"n must be >= 0, got {n}")
    return math.fsum(math.log2(PHONE_CHOICES - i) for i in range(n))


__all__ = ["phonebook", "phonebook_length", "generate_phonebook", "phonebook_bits", "name_pools", "value_bits",
           "PHONEBOOK_SIZE", "PHONE_CHOICES", "PHONE_BITS"]
