"""The law forms by name: `paper` (ΔL = C·r^α·ℓ^(−β) + b) and `bounded`
(ΔL = L_base·(1 − exp(−C·r^α·ℓ^(−β)))).

Each is an estimator with the same contract: `fit(r, length, delta_loss, l_base=None)`,
`predict(r, length, l_base=None)`, `rank_for(target, length, l_base=None)`, `summary()`, and the
class attributes `form`, `formula` and `needs_l_base`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike

from memlaw.errors import ConfigError
from memlaw.law.bounded import BoundedLaw, bounded_law
from memlaw.law.paper import MemoryLaw, law
from memlaw.law_names import FORM_NAMES
from memlaw.validation import nearest

FORMS: dict[str, type] = {cls.form: cls for cls in (MemoryLaw, BoundedLaw)}
"""Law forms by name (the `--law` choices): the estimators of `memlaw.law_names.FORM_NAMES`."""
assert tuple(FORMS) == FORM_NAMES, f"memlaw.law_names.FORM_NAMES {FORM_NAMES} must name the forms {tuple(FORMS)}"


def check_form(form: str) -> str:
    """`form` if it names a law form; ConfigError with the choices (and the nearest) otherwise."""
    if form not in FORMS:
        raise ConfigError(f"law form must be one of {', '.join(FORMS)}, got {form!r}{nearest(form, FORMS)}")
    return form


def make_law(form: str, *, relative: bool = False, fix_b: bool = False, **solver):
    """An unfitted estimator of `form`; `fix_b` applies to the paper's form only (the bounded one has no b)."""
    check_form(form)
    if form == "paper":
        return MemoryLaw(relative=relative, fix_b=fix_b, **solver)
    return BoundedLaw(relative=relative, **solver)


def predict_with(form: str, params: Mapping[str, float], r: ArrayLike, length: ArrayLike,
                 l_base: ArrayLike | None = None) -> np.ndarray:
    """ΔL of `form` at `params` (a summary's "params"); the bounded form needs `l_base`."""
    if check_form(form) == "paper":
        return law(r, length, **params)
    if l_base is None:
        raise ConfigError("the bounded law predicts ΔL for a given L_base; pass l_base")
    return bounded_law(r, length, l_base, **params)


__all__ = ["FORMS", "check_form", "make_law", "predict_with"]
