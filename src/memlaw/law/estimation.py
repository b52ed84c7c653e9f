"""What every law form's estimator shares: input checks, the weighted least-squares solve, standard
errors, and the goodness of fit (R², MAPE, AIC, BIC). Pure: arrays in, numbers out.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, astuple
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import least_squares

from memlaw.errors import ConfigError, NotFittedError
from memlaw.validation import nearest

logger = logging.getLogger(__name__)

LOSSES = ("linear", "soft_l1", "huber", "cauchy", "arctan")  # scipy.optimize.least_squares
_RCOND = 1e-10  # relative singular value below which the (column-scaled) Jacobian counts as singular

Model = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""θ -> (prediction, shape (n,); its Jacobian ∂prediction/∂θ, shape (n, len(θ)))."""


# ---------------------------------------------------------------- input checks


def as_positive(name: str, x: ArrayLike) -> np.ndarray:
    """`x` as a float array, every entry finite and > 0; ConfigError names the first that is not."""
    a = np.asarray(x, dtype=float)
    if not np.all(np.isfinite(a)):
        raise ConfigError(f"{name} contains NaN or inf (first at index {int(np.argmin(np.isfinite(a.ravel())))})")
    if np.any(a <= 0):
        i = int(np.argmax(a.ravel() <= 0))
        raise ConfigError(f"{name} must be > 0, got {a.ravel()[i]:g} at index {i}")
    return a


def check_data(r: ArrayLike, length: ArrayLike, **ys: ArrayLike) -> tuple[np.ndarray, ...]:
    """Flatten and validate rank, length and the response columns; ConfigError names the problem.

    A column named `l_base` must also be > 0 (a mean loss in nats).
    """
    try:
        cols = {"rank": np.ravel(np.asarray(r, dtype=float)), "length": np.ravel(np.asarray(length, dtype=float))}
        cols |= {k: np.ravel(np.asarray(v, dtype=float)) for k, v in ys.items()}
    except (TypeError, ValueError) as e:
        raise ConfigError(f"law data must be numeric: {e}") from None
    sizes = {k: v.size for k, v in cols.items()}
    if len(set(sizes.values())) > 1:
        raise ConfigError("rank, length and " + ", ".join(ys) + " must have the same length, got "
                          + ", ".join(f"{k}={n}" for k, n in sizes.items()))
    if not cols["rank"].size:
        raise ConfigError("law data is empty")
    for k in ys:
        if not np.all(np.isfinite(cols[k])):
            raise ConfigError(f"{k} contains NaN or inf (first at index {int(np.argmin(np.isfinite(cols[k])))})")
    if "l_base" in cols:
        as_positive("l_base", cols["l_base"])
    return as_positive("rank", cols["rank"]), as_positive("length", cols["length"]), *(cols[k] for k in ys)


def check_solver(loss: str, max_nfev: int | None) -> None:
    """Refuse a loss scipy does not know (naming the nearest) or a bad evaluation cap."""
    if loss not in LOSSES:
        raise ConfigError(f"loss must be one of {', '.join(LOSSES)}; got {loss!r}{nearest(loss, LOSSES)}")
    if max_nfev is not None and (not isinstance(max_nfev, int) or max_nfev < 1):
        raise ConfigError(f"max_nfev must be None or an integer >= 1, got {max_nfev!r}")


def check_fitted(obj: object, attr: str) -> None:
    if not hasattr(obj, attr):
        raise NotFittedError(f"{type(obj).__name__} is not fitted yet; call fit(...) first")


def finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def identifiable(r: np.ndarray, length: np.ndarray) -> tuple[bool, bool, list[str]]:
    """(α free, β free, problems): a single rank (length) says nothing about α (β), which is then fixed at 0."""
    free_alpha, free_beta = np.unique(r).size > 1, np.unique(length).size > 1
    problems = []
    for name, var, free, param in (("rank", r, free_alpha, "alpha"), ("length", length, free_beta, "beta")):
        if not free:
            problems.append(f"{name} takes one value ({var[0]:g}): {param} is not identifiable and is fixed at 0")
    return free_alpha, free_beta, problems


def log_centre(r: np.ndarray, length: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(log r0, log ℓ0, log r − log r0, log ℓ − log ℓ0) around the geometric centre of the grid.

    Optimising around the centre decorrelates the scale from α and β (C and β are nearly collinear
    over ℓ ∈ 1e3..3e4); the scale at the centre converts back as C = A · r0^(−α) · ℓ0^β.
    """
    log_r0, log_l0 = float(np.mean(np.log(r))), float(np.mean(np.log(length)))
    return log_r0, log_l0, np.log(r) - log_r0, np.log(length) - log_l0


# ---------------------------------------------------------------- the solve and its errors


def solve(model: Model, x0: np.ndarray, free: np.ndarray, y: np.ndarray, w: np.ndarray, *, loss: str,
          max_nfev: int | None):
    """Weighted nonlinear least squares, min Σ (w · (model(θ) − y))², over the `free` entries of θ.

    Entries of θ that are not free stay at their value in `x0`.

    Returns:
        (θ at the optimum, scipy's OptimizeResult).
    """
    def full(q: np.ndarray) -> np.ndarray:
        p = x0.copy()
        p[free] = q
        return p

    def resid(q: np.ndarray) -> np.ndarray:
        return (model(full(q))[0] - y) * w

    def jac(q: np.ndarray) -> np.ndarray:
        return (model(full(q))[1] * w[:, None])[:, free]

    with np.errstate(over="ignore", invalid="ignore"):  # a diverging fit ends non-finite, flagged by the caller
        res = least_squares(resid, x0[free], jac=jac, loss=loss, max_nfev=max_nfev,
                            x_scale="jac", ftol=1e-12, xtol=1e-12, gtol=1e-12)
    return full(res.x), res


def stderr(J: np.ndarray, w: np.ndarray, rss: float, held: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """Standard errors from cov = s²·(JᵀJ)⁻¹, s² = RSS/(n − k); returns (se, well_posed).

    Args:
        J: ∂prediction/∂(parameters) at the optimum, in the parameters reported, shape (n, p).
        w: residual weights of the fit, shape (n,); RSS = Σ (w · (y − prediction))².
        rss: the weighted residual sum of squares.
        held: parameters held at a value by the user (not estimated): se 0, not counted in k.

    Returns:
        se, shape (p,), all inf when the fit is not determined (n ≤ k, non-finite or singular J).
    """
    n, p = J.shape
    held = np.zeros(p, dtype=bool) if held is None else held
    Jw = J[:, ~held] * w[:, None]
    k = Jw.shape[1]
    # Scale columns to unit norm first: conditioning then reflects the design, not the units of C.
    norms = np.linalg.norm(Jw, axis=0) if np.all(np.isfinite(Jw)) else np.zeros(k)
    out = np.full(p, math.inf)
    if n <= k or np.any(norms == 0):
        return out, False
    _, s, Vt = np.linalg.svd(Jw / norms, full_matrices=False)
    if s[-1] < _RCOND * s[0]:
        return out, False
    cov = (Vt.T / s**2) @ Vt / np.outer(norms, norms) * (rss / (n - k))
    out[~held] = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    out[held] = 0.0
    return out, True


# ---------------------------------------------------------------- goodness of fit


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    """R² = 1 − RSS/TSS on ΔL (nan when every y is equal)."""
    tss = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(np.sum((y - pred) ** 2)) / tss if tss > 0 else math.nan


def mape(y: np.ndarray, pred: np.ndarray) -> float:
    """MAPE = mean |pred − y| / |y| · 100 over y ≠ 0 (points with y = 0 are skipped and logged)."""
    keep = y != 0
    if not keep.all():
        logger.info("MAPE skips %d point(s) with ΔL = 0", int((~keep).sum()))
    if not keep.any():
        return math.nan
    return float(np.mean(np.abs(pred[keep] - y[keep]) / np.abs(y[keep])) * 100.0)


def information(rss: float, n: int, k: int) -> tuple[float, float]:
    """(AIC, BIC) of a least-squares fit with Gaussian errors, up to a constant shared by every model of the same y.

        AIC = n·ln(RSS/n) + 2k,   BIC = n·ln(RSS/n) + k·ln n

    k counts the estimated parameters (the error variance, common to every form, is left out). Compare
    them only between fits of the same cells with the same weights: lower is better.
    """
    if n <= 0 or not math.isfinite(rss):
        return math.nan, math.nan
    fit = n * math.log(rss / n) if rss > 0 else -math.inf
    return fit + 2 * k, fit + k * math.log(n)


# ---------------------------------------------------------------- fitted state every form shares


def record_fit(model: Any, y: np.ndarray, pred: np.ndarray, w: np.ndarray, res: Any, free: np.ndarray,
               problems: list[str]) -> float:
    """Set `converged_`, `residuals_`, `n_`, `k_`, `r2_`, `mape_`, `aic_`, `bic_` on a form whose `params_` is
    set; a failed solve adds to `problems`. Returns the weighted RSS the standard errors need."""
    model.converged_ = bool(res.status > 0) and all(map(math.isfinite, astuple(model.params_)))
    if not model.converged_:
        problems.append(f"did not converge: {res.message}")
    model.residuals_ = y - pred
    model.n_, model.k_ = y.size, int(free.sum())
    rss = float(np.sum((model.residuals_ * w) ** 2))
    model.r2_, model.mape_ = r2(y, pred), mape(y, pred)
    model.aic_, model.bic_ = information(rss, model.n_, model.k_)
    return rss


def summary(model: Any, **extra: Any) -> dict[str, Any]:
    """JSON-ready fit report: form, params, stderr (None where undetermined), r2, mape (%), aic, bic, n, k,
    converged, relative, then `extra`."""
    check_fitted(model, "params_")
    return {
        "form": model.form,
        "params": asdict(model.params_),
        "stderr": {k: finite_or_none(v) for k, v in asdict(model.stderr_).items()},
        "r2": finite_or_none(model.r2_),
        "mape": finite_or_none(model.mape_),
        "aic": finite_or_none(model.aic_),
        "bic": finite_or_none(model.bic_),
        "n": model.n_,
        "k": model.k_,
        "converged": model.converged_,
        "relative": model.relative,
        **extra,
    }


__all__ = ["LOSSES", "as_positive", "check_data", "check_solver", "check_fitted", "finite_or_none", "identifiable",
           "log_centre", "solve", "stderr", "r2", "mape", "information", "record_fit", "summary"]
