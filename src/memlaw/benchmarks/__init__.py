"""Benchmarks are data builders: data in, `Record`s out (no special code paths).

- `phonebook`: the paper's PhoneBook (`phonebook`, PB<N> by `phonebook_length`) and fresh seeded
  books (`generate_phonebook`, exact entropy `phonebook_bits`);
- `long_context`: the paper's r0…r100 documents and a builder of them in any model's token space;
- `linear_rule`: f(x, y) = 3x + 5y + 7, a seeded train / held-out split of pairs;
- `mixed`: 24 invented real-world records (URLs, API-key-like strings, ICD-10, statutes, LaTeX, CJK);
- `registry`: `build(name, tokenizer, length, **options) -> (records, held_out)`, the one entry point
  sweeps, the Python API and bench scripts use (names and options: `config.BenchmarkConfig`), and
  `value_bits(name, tokenizer, records, **options)`, the bits of those records under their generator.
"""

from memlaw.benchmarks.linear_rule import LinearRule, linear_rule, rule
from memlaw.benchmarks.long_context import (QUESTION, RATIOS, Document, build_document, long_context,
                                            noise_positions, paper_document, prefix_value)
from memlaw.benchmarks.mixed import MIXED_SIZE, mixed
from memlaw.benchmarks.registry import BITS, BUILDERS, build, prefix_by_length, value_bits
from memlaw.benchmarks.phonebook import generate_phonebook, phonebook, phonebook_bits, phonebook_length

__all__ = [
    "phonebook", "phonebook_length", "generate_phonebook", "phonebook_bits",
    "QUESTION", "RATIOS", "Document", "paper_document", "build_document", "noise_positions", "prefix_value",
    "long_context", "LinearRule", "linear_rule", "rule", "mixed", "MIXED_SIZE", "BUILDERS", "build",
    "prefix_by_length", "BITS", "value_bits",
]  # fmt: skip
