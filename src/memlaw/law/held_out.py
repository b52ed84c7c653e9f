"""Held-out error: fit a law on the smaller ranks (or the shorter lengths), predict the rest.

A law that only describes its grid is of little use for planning; this is the check that it
extrapolates, to larger adapters (split by rank) and to longer memories (split by length).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from memlaw.errors import ConfigError
from memlaw.law import estimation as est
from memlaw.law.forms import make_law

SPLITS = ("rank", "length")


def held_out_mape(
    r: ArrayLike, length: ArrayLike, delta_loss: ArrayLike, *, split: str = "rank", relative: bool = False,
    fix_b: bool = False, form: str = "paper", l_base: ArrayLike | None = None,
) -> dict[str, Any]:
    """Extrapolation check: fit the law on the smaller half of the distinct ranks (or lengths), predict the rest.

    With an odd number of distinct values the middle one goes to the training half.

    Args:
        r: Ranks, shape (n,).
        length: Answer lengths, shape (n,).
        delta_loss: Observed ΔL, shape (n,).
        split: "rank" or "length": which variable to extrapolate in.
        relative: Passed to the estimator.
        fix_b: Passed to the paper's form.
        form: The law form (`memlaw.law.FORMS`).
        l_base: The cells' L_base, shape (n,) (the bounded form needs it).

    Returns:
        {"form", "split", "train_ranks", "test_ranks", "train_lengths", "test_lengths", "mape", "r2",
        "n_train", "n_test", "params", "test_index", "predicted"}: the distinct values on each side, MAPE
        (%) and R² on the held-out points, the parameters fitted on the training half, and the held-out
        points (their positions in the input) with the prediction for each.

    Raises:
        ConfigError: Unknown `split` or form, bad data, or fewer than 2 distinct values to split.
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be 'rank' or 'length', got {split!r}")
    model = make_law(form, relative=relative, fix_b=fix_b)
    extra = {} if l_base is None else {"l_base": l_base}
    r, length, y, *rest = est.check_data(r, length, delta_loss=delta_loss, **extra)
    L = rest[0] if rest else None
    key = r if split == "rank" else length
    values = np.unique(key)
    if values.size < 2:
        raise ConfigError(f"held-out split by {split} needs >= 2 distinct {split}s, got {values.size}")
    train = key <= values[(values.size + 1) // 2 - 1]
    model.fit(r[train], length[train], y[train], None if L is None else L[train])
    pred = model.predict(r[~train], length[~train], None if L is None else L[~train])
    return {
        "form": form,
        "split": split,
        "train_ranks": np.unique(r[train]).tolist(),
        "test_ranks": np.unique(r[~train]).tolist(),
        "train_lengths": np.unique(length[train]).tolist(),
        "test_lengths": np.unique(length[~train]).tolist(),
        "mape": est.finite_or_none(est.mape(y[~train], pred)),
        "r2": est.finite_or_none(est.r2(y[~train], pred)),
        "n_train": int(train.sum()),
        "n_test": int((~train).sum()),
        "params": asdict(model.params_),
        "test_index": np.flatnonzero(~train).tolist(),
        "predicted": pred.tolist(),
    }


__all__ = ["held_out_mape", "SPLITS"]
