"""The certificate's two rules, defined once (DESIGN §2), for torch tensors and numpy arrays alike.

- a token is **stubborn** when its teacher-forced probability p_t <= 0.5 (loss >= ln 2);
- a record is **certified** when every answer token, terminator included, has p_t > 0.5 + margin.

p_t > 0.5 means no other token can out-score the target, so greedy decoding follows it. train
(the stop rule), verify (verdicts) and analysis (stored p_t) all call these; nothing else
compares a probability with 0.5.

That holds for the numerics the certificate was computed in. In bfloat16, p_t moves with the shape of
the batch it is computed in (kernels block a batch of 64 differently from a batch of 1), so a margin of
0 proves nothing about greedy decoding, which batches otherwise: `margin="auto"` (the default of
`write`, `update`, `verify` and the Python API) covers the measured shift (`BF16_SHIFT`).
"""

from __future__ import annotations

from typing import Any, Literal

from memlaw.errors import ConfigError
from memlaw.validation import margin_problem

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


BF16_SHIFT = 0.063
"""The largest change of a token's p_t between batch shapes measured in bfloat16: docs/performance.md,
"How large the shift is, on a certified memory" (`bench/batch_shift.py` on the demo memory, SmolLM2
bf16, CPU: the certificate's batched pass against a plain full-model pass one record at a time)."""

AUTO_MARGIN = {"bfloat16": 0.07, "float32": 0.0}
"""`margin="auto"` by the dtype the base model runs in: above `BF16_SHIFT` in bfloat16; 0 in float32,
where a batch shape moves p_t by rounding error only."""

Margin = float | Literal["auto"]


def dtype_name(dtype: Any) -> str:
    """'bfloat16' or 'float32' for a torch dtype or its name ('torch.bfloat16', 'bf16', ...)."""
    name = str(dtype).removeprefix("torch.")
    return {"bf16": "bfloat16", "fp32": "float32"}.get(name, name)


def auto_margin(dtype: Any) -> float:
    """The safety margin of `dtype` (`AUTO_MARGIN`; an unknown dtype gets the bfloat16 one)."""
    return AUTO_MARGIN.get(dtype_name(dtype), AUTO_MARGIN["bfloat16"])


def parse_margin(value: Any, name: str = "margin") -> Margin:
    """'auto', or a number in [0, 0.5) (a string such as '0.07' is read as one).

    Raises:
        ConfigError: anything else, naming `name` and what it accepts.
    """
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return "auto"
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{name} must be 'auto' or a number in [0, 0.5), got {value!r}") from None
    if (problem := margin_problem(value)) is not None:
        raise ConfigError(f"{problem} (or 'auto')".replace("margin", name, 1))
    return float(value)


def resolve_margin(margin: Margin, dtype: Any, at_least: float = 0.0) -> float:
    """The margin a certificate is checked at: a number as given; "auto": the dtype's safety margin
    (`auto_margin`), or `at_least` (the margin a memory was written with, a `TrainConfig`'s) if larger."""
    margin = parse_margin(margin)
    return max(auto_margin(dtype), at_least) if margin == "auto" else margin


def margin_note(margin: Margin, dtype: Any, value: float) -> dict[str, Any]:
    """What memlaw.json states about a margin: its value, how it was chosen, and (auto) why."""
    note: dict[str, Any] = {"value": value, "chosen": "auto" if margin == "auto" else "given",
                            "dtype": dtype_name(dtype)}
    if margin == "auto":
        note["why"] = (f"auto: {auto_margin(dtype):g} in {dtype_name(dtype)}; in bfloat16 p_t moved by up to "
                       f"{BF16_SHIFT} between batch shapes (docs/performance.md, bench/batch_shift.py)")
    return note


def not_confirmed_advice(margin: float, dtype: Any) -> str:
    """Why a certificate greedy decoding contradicted may have failed, and what to do (no values)."""
    dtype = dtype_name(dtype)
    if dtype == "bfloat16" and margin < BF16_SHIFT:
        return (f"in bfloat16 p_t moves with the batch shape by up to {BF16_SHIFT} (docs/performance.md), more "
                f"than margin {margin:g}: use margin {AUTO_MARGIN['bfloat16']:g} or more (--margin auto) or float32")
    if dtype == "bfloat16":
        return (f"p_t moved by more than margin {margin:g} between the certificate's pass and greedy decoding "
                f"in bfloat16: raise --margin, or use float32")
    return (f"greedy decoding's kernels moved p_t by more than margin {margin:g} in {dtype}: raise --margin")


__all__ = ["THRESHOLD", "stubborn", "certified_tokens", "certified", "BF16_SHIFT", "AUTO_MARGIN", "Margin",
           "dtype_name", "auto_margin", "parse_margin", "resolve_margin", "margin_note", "not_confirmed_advice"]
