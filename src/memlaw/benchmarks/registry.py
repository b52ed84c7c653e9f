"""One registry of benchmarks: `build(name, tokenizer, length, **options) -> (records, held_out)`.

Every benchmark is a data builder (records out, no special code path) that returns the memory holding
exactly ℓ = `length` value tokens under `tokenizer` (terminators excluded), plus held-out records
where the benchmark measures generalization (the linear rule), else []. The names and their options
are `BenchmarkConfig`'s; a new benchmark is a `build` function in its module and one entry here.

A benchmark knows the generator of its values, so it also counts their information:
`value_bits(name, tokenizer, records, **options) -> memlaw.bits.ValueBits`, exact where the
generator is known (PhoneBook, long-context noise, the linear rule) and an upper bound, labelled
as one, for a records file.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from pathlib import Path

from memlaw import bits
from memlaw.bits import ValueBits
from memlaw.config import BenchmarkConfig
from memlaw.errors import ConfigError
from memlaw.records import Record, load_records

BUILDERS = {
    "phonebook": "memlaw.benchmarks.phonebook:build",
    "long-context": "memlaw.benchmarks.long_context:build",
    "linear-rule": "memlaw.benchmarks.linear_rule:build",
    "records": "memlaw.benchmarks.registry:build_records",
}
"""Benchmark name (`BenchmarkConfig.name`'s values) -> "module:function" building its records, imported
when first used; the function takes (tokenizer, length, **options) and returns (records, held_out)."""
BITS = {
    "phonebook": "memlaw.benchmarks.phonebook:value_bits",
    "long-context": "memlaw.benchmarks.long_context:value_bits",
    "linear-rule": "memlaw.benchmarks.linear_rule:value_bits",
    "records": "memlaw.benchmarks.registry:records_bits",
}
"""Benchmark name -> "module:function" counting the bits of its records: (tokenizer, records, **options) -> ValueBits."""


def build(name: str, tokenizer, length: int, **options) -> tuple[list[Record], list[Record]]:
    """(records to write, held-out records) of benchmark `name` holding ℓ = `length` value tokens.

    `options` are the benchmark's own (`BenchmarkConfig.OPTIONS[name]`); unset ones take their defaults.

    Raises:
        ConfigError: an unknown benchmark or option, or a length the benchmark cannot reach exactly.
    """
    cfg = BenchmarkConfig(name=name, **options)          # validates the name and which options it takes
    module, function = BUILDERS[name].split(":")
    return getattr(importlib.import_module(module), function)(tokenizer, length, **cfg.options())


def build_cell(benchmark: BenchmarkConfig, tokenizer, length: int) -> tuple[list[Record], list[Record]]:
    """`build` for a cell's `BenchmarkConfig`."""
    return build(benchmark.name, tokenizer, length, **benchmark.options())


def value_bits(name: str, tokenizer, records: list[Record], **options) -> ValueBits:
    """The information in each of `records` (as `build(name, ...)` made them) under the benchmark's generator."""
    cfg = BenchmarkConfig(name=name, **options)
    module, function = BITS[name].split(":")
    return getattr(importlib.import_module(module), function)(tokenizer, records, **cfg.options())


def value_bits_cell(benchmark: BenchmarkConfig, tokenizer, records: list[Record]) -> ValueBits:
    """`value_bits` for a cell's `BenchmarkConfig`."""
    return value_bits(benchmark.name, tokenizer, records, **benchmark.options())


def records_bits(tokenizer, records: list[Record], *, path: str, sha256: str | None) -> ValueBits:
    """A records file has no known generator: an upper bound per value (`memlaw.bits.upper`)."""
    return bits.upper(records)


def prefix_by_length(records: list[Record], length: int, tokenizer, *, source: str) -> list[Record]:
    """The first records whose value tokens add up to exactly `length` (ℓ, terminator excluded).

    Raises:
        ConfigError: the records run out first, or the running total jumps over `length` (say
            which lengths are reachable nearby).
    """
    total = 0
    for n, rec in enumerate(records, 1):
        below = total
        total += len(tokenizer(rec.value, add_special_tokens=False).input_ids)
        if total == length:
            return records[:n]
        if total > length:
            raise ConfigError(f"{source}: no prefix has exactly {length} value tokens under this tokenizer; "
                              f"the nearest are {below} ({n - 1} records) and {total} ({n} records)")
    raise ConfigError(f"{source}: only {total} value tokens in {len(records)} records, fewer than length {length}")


def build_records(tokenizer, length: int, *, path: str, sha256: str | None) -> tuple[list[Record], list[Record]]:
    """The `records` benchmark: the first records of a JSONL/CSV file holding ℓ value tokens.

    Raises:
        ConfigError: the file's bytes no longer hash to `sha256` (edited since the grid was loaded).
    """
    from memlaw.adapters.directory import sha256_file

    if sha256 is not None and sha256_file(Path(path)) != sha256:
        raise ConfigError(f"{path}: changed since the grid was loaded (its sha256 differs); load the grid again")
    return prefix_by_length(list(_records_file(path, sha256)), length, tokenizer, source=path), []


@lru_cache(maxsize=4)
def _records_file(path: str, sha256: str | None) -> tuple[Record, ...]:
    return tuple(load_records(path))


__all__ = ["BUILDERS", "BITS", "build", "build_cell", "build_records", "prefix_by_length", "value_bits",
           "value_bits_cell", "records_bits"]
