"""The certificate's two rules, defined once (DESIGN §2), for torch tensors and numpy arrays alike.

- a token is **stubborn** when its teacher-forced probability p_t <= 0.5 (loss >= ln 2);
- a record is **certified** when every answer token, terminator included, has p_t > 0.5 + margin.

p_t > 0.5 means no other token can out-score the target, so greedy decoding follows it. train
(the stop rule), verify (verdicts) and analysis (stored p_t) all call these; nothing else
compares a probability with 0.5.
"""

from __future__ import annotations

THRESHOLD = 0.5
"""p_t above it: the target is the argmax, whatever the other tokens."""


def stubborn(p):
    """Elementwise p_t <= 0.5 (a bool tensor or array shaped like `p`)."""
    return p <= THRESHOLD


def certified_tokens(p, margin: float = 0.0):
    """Elementwise p_t > 0.5 + margin."""
    return p > THRESHOLD + margin


def certified(p, margin: float = 0.0) -> bool:
    """A record with answer-token probabilities `p` (shape (n_answer,)) is certified."""
    return bool(certified_tokens(p, margin).all())


__all__ = ["THRESHOLD", "stubborn", "certified_tokens", "certified"]
