"""Linear rule: memorise pairs of f(x, y) = 3x + 5y + 7, then answer pairs never seen.

The paper's auxiliary benchmark (seed digest, "Linear rule learning generalization", Qwen3-8B):
*memory accuracy* is EM on the training pairs, *generalization accuracy* EM of greedy decoding on
held-out pairs. The digest gives neither the operand range nor the split sizes; its percentages are
whole numbers at every rank, consistent with 100 held-out pairs. Our defaults: x, y ∈ {0, …, 99}
(10,000 pairs, f ∈ [7, 802], one to three digits), 100 training pairs and 100 held-out pairs, drawn
from one seeded shuffle of the whole grid so the two sets are disjoint.

A record is key "x, y" → value "f(x, y)", e.g. "12, 7" → "78".
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from memlaw import bits
from memlaw.bits import ValueBits
from memlaw.errors import ConfigError
from memlaw.records import Record


def rule(x: int, y: int) -> int:
    """f(x, y) = 3x + 5y + 7."""
    return 3 * x + 5 * y + 7


def rule_record(x: int, y: int) -> Record:
    return Record(f"{x}, {y}", str(rule(x, y)))


@dataclass(frozen=True)
class LinearRule:
    """A seeded split of the (x, y) grid: records to memorise and records held out."""

    train: list[Record]
    held_out: list[Record]
    low: int
    high: int
    seed: int


GRID = 100 * 100
"""Pairs (x, y) in the default range {0, …, 99}²."""


def linear_rule(n_train: int = 100, n_held_out: int = 100, *, seed: int = 0, low: int = 0,
                high: int = 99) -> LinearRule:
    """Training and held-out pairs (x, y) ∈ [low, high]², disjoint, from one shuffle seeded by `seed`.

    The training set for (n, seed) is a prefix of the one for (n + k, seed); the held-out set does
    not depend on `n_train` (it is taken from the end of the shuffle), so growing the training set
    never changes what generalization is measured on.
    """
    if low > high:
        raise ConfigError(f"linear rule range is empty: low {low} > high {high}")
    pairs = [(x, y) for x in range(low, high + 1) for y in range(low, high + 1)]
    if n_train < 1 or n_held_out < 0 or n_train + n_held_out > len(pairs):
        raise ConfigError(f"linear rule: need 1 <= n_train and n_train + n_held_out <= {len(pairs)} pairs "
                          f"in [{low}, {high}]², got n_train={n_train}, n_held_out={n_held_out}")
    random.Random(seed).shuffle(pairs)
    held = pairs[len(pairs) - n_held_out:] if n_held_out else []
    return LinearRule([rule_record(*p) for p in pairs[:n_train]], [rule_record(*p) for p in held], low, high, seed)


def build(tokenizer, length: int, *, held_out: int = 100, data_seed: int = 0) -> tuple[list[Record], list[Record]]:
    """The registry's `linear-rule`: the first training pairs holding ℓ = `length` value tokens, and
    `held_out` pairs from the end of the same shuffle (the same pairs whatever ℓ)."""
    from memlaw.benchmarks.registry import prefix_by_length

    split = linear_rule(GRID - held_out, held_out, seed=data_seed)
    return prefix_by_length(split.train, length, tokenizer, source=f"linear-rule (length {length})"), split.held_out


def value_bits(tokenizer, records: list[Record], *, held_out: int = 100, data_seed: int = 0) -> ValueBits:
    """0 bits a value, exactly: the value is f(x, y) of the x, y its key shows, so a model that knows the
    rule needs nothing more to answer (H(value | key, rule) = 0). The linear rule measures whether
    the rule is learnt (held-out EM), not capacity; its memories add no bits to a frontier."""
    return bits.exact([0.0] * len(records), "linear rule: the value is 3x + 5y + 7 of its key, 0 bits given the rule")


__all__ = ["rule", "rule_record", "LinearRule", "linear_rule", "build", "value_bits", "GRID"]
