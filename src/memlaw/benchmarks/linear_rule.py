"""Linear rule: memorise pairs of f(x, y) = 3x + 5y + 7, then answer pairs never seen.

The rule's coefficients are an option (`RULE`, the paper's, by default): f(x, y) = a·x + b·y + c for
`rule = (a, b, c)`, so a simpler rule (x + y is (1, 1, 0)) can be tried where the paper's is not
learnt from the training pairs.

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


RULE = (3, 5, 7)
"""The paper's rule's (a, b, c): f(x, y) = 3x + 5y + 7."""


def rule(x: int, y: int, coefficients: tuple[int, int, int] = RULE) -> int:
    """f(x, y) = a·x + b·y + c for `coefficients` (a, b, c); 3x + 5y + 7 by default."""
    a, b, c = coefficients
    return a * x + b * y + c


def rule_record(x: int, y: int, coefficients: tuple[int, int, int] = RULE) -> Record:
    return Record(f"{x}, {y}", str(rule(x, y, coefficients)))


@dataclass(frozen=True)
class LinearRule:
    """A seeded split of the (x, y) grid: records to memorise and records held out."""

    train: list[Record]
    held_out: list[Record]
    low: int
    high: int
    seed: int
    coefficients: tuple[int, int, int] = RULE


GRID = 100 * 100
"""Pairs (x, y) in the default range {0, …, 99}²."""


def linear_rule(n_train: int = 100, n_held_out: int = 100, *, seed: int = 0, low: int = 0,
                high: int = 99, coefficients: tuple[int, int, int] = RULE) -> LinearRule:
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
    return LinearRule([rule_record(*p, tuple(coefficients)) for p in pairs[:n_train]],
                      [rule_record(*p, tuple(coefficients)) for p in held], low, high, seed, tuple(coefficients))


def build(tokenizer, length: int, *, held_out: int = 100, data_seed: int = 0,
          rule: tuple[int, int, int] = RULE) -> tuple[list[Record], list[Record]]:
    """The registry's `linear-rule`: the first training pairs holding ℓ = `length` value tokens, and
    `held_out` pairs from the end of the same shuffle (the same pairs whatever ℓ), under `rule`'s (a, b, c)."""
    from memlaw.benchmarks.registry import prefix_by_length

    split = linear_rule(GRID - held_out, held_out, seed=data_seed, coefficients=rule)
    return prefix_by_length(split.train, length, tokenizer, source=f"linear-rule (length {length})"), split.held_out


def value_bits(tokenizer, records: list[Record], *, held_out: int = 100, data_seed: int = 0,
               rule: tuple[int, int, int] = RULE) -> ValueBits:
    """0 bits a value, exactly: the value is f(x, y) of the x, y its key shows, so a model that knows the
    rule needs nothing more to answer (H(value | key, rule) = 0). The linear rule measures whether
    the rule is learnt (held-out EM), not capacity; its memories add no bits to a frontier."""
    a, b, c = rule
    return bits.exact([0.0] * len(records), f"linear rule: the value is {a}x + {b}y + {c} of its key, 0 bits given the rule")


__all__ = ["RULE", "rule", "rule_record", "LinearRule", "linear_rule", "build", "value_bits", "GRID"]
