"""The paper's form of the Parametric Memory Law (DESIGN.md §7).

    ΔL(r, ℓ) = C · r^α · ℓ^(−β) + b

ΔL is the loss reduction an adapter of rank r buys on answers of length ℓ; α is the capacity
exponent, β the length penalty, b an offset. It grows without bound in r, so it describes the
regime away from the ceiling ΔL = L_base (`memlaw.law.bounded` knows the ceiling).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import astuple, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from memlaw.errors import ConfigError, FitWarning
from memlaw.law import estimation as est

FORMULA = "ΔL = C·r^α·ℓ^(−β) + b"


def law(r: ArrayLike, length: ArrayLike, C: float, alpha: float, beta: float, b: float) -> np.ndarray:
    """The Parametric Memory Law, ΔL = C · r^α · ℓ^(−β) + b (broadcasting over r and length).

    Args:
        r: Adapter rank(s), > 0.
        length: Answer length(s) ℓ in tokens, > 0.
        C: Scale.
        alpha: Capacity exponent α.
        beta: Length penalty exponent β.
        b: Offset.

    Returns:
        ΔL in nats, with the broadcast shape of `r` and `length`.
    """
    r, length = np.asarray(r, dtype=float), np.asarray(length, dtype=float)
    return C * r**alpha * length ** (-beta) + b


@dataclass(frozen=True)
class LawParams:
    """The four parameters of ΔL = C · r^α · ℓ^(−β) + b (or their standard errors)."""

    C: float
    alpha: float
    beta: float
    b: float


def _log_linear_start(lu: np.ndarray, lv: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Start (A, α, β, b=0) for ΔL = A·e^(α·lu − β·lv) + b: OLS of log ΔL on lu, lv over ΔL > 0."""
    pos = y > 0
    if pos.sum() < 3:  # too few points for three coefficients: a flat-ish law at the mean level
        level = float(np.mean(y)) or 1.0
        return np.array([level, 0.5, 0.5, 0.0])
    X = np.column_stack([np.ones(pos.sum()), lu[pos], -lv[pos]])
    (log_A, alpha, beta), *_ = np.linalg.lstsq(X, np.log(y[pos]), rcond=None)  # min-norm if degenerate
    return np.array([math.exp(log_A), alpha, beta, 0.0])


def _jacobian(r: np.ndarray, length: np.ndarray, p: LawParams) -> np.ndarray:
    """∂ΔL/∂(C, α, β, b), shape (n, 4)."""
    g = r**p.alpha * length ** (-p.beta)
    return np.column_stack([g, p.C * g * np.log(r), -p.C * g * np.log(length), np.ones(r.size)])


class MemoryLaw:
    """ΔL(r, ℓ) = C · r^α · ℓ^(−β) + b, fitted by nonlinear least squares.

    Fitted attributes (after `fit`): `params_`, `stderr_` (both `LawParams`), `r2_`, `mape_` (%),
    `aic_`, `bic_`, `k_` (parameters estimated), `n_`, `residuals_` (observed − predicted ΔL,
    unweighted), `converged_`.

    Args:
        loss: `scipy.optimize.least_squares` loss; robust ones use its default f_scale = 1 (in the
            units of the residual), and the standard errors stay the Gauss–Newton ones (approximate).
        max_nfev: Cap on function evaluations (None: scipy's default).
        relative: Minimise relative residuals (pred − ΔL)/ΔL instead of absolute ones. Use it when the
            noise scales with ΔL (multiplicative): the unweighted fit's standard errors then come out
            about 2x too small for α and β, the relative fit's are calibrated. Needs every ΔL ≠ 0.
        fix_b: hold b = 0 (a pure power law). On small grids whose ΔL is nearly log-linear in r and ℓ
            the free fit slides along C → ∞, α, β → 0, b → −∞ (C·r^α·ℓ^−β + b ≈ C + b + Cα·ln r −
            Cβ·ln ℓ) and never converges; b = 0 removes that direction.
    """

    form = "paper"
    formula = FORMULA
    needs_l_base = False

    def __init__(self, *, loss: str = "linear", max_nfev: int | None = None, relative: bool = False,
                 fix_b: bool = False):
        self.loss, self.max_nfev, self.relative, self.fix_b = loss, max_nfev, relative, fix_b

    def fit(self, r: ArrayLike, length: ArrayLike, delta_loss: ArrayLike, l_base: ArrayLike | None = None) -> MemoryLaw:
        """Fit ΔL = C · r^α · ℓ^(−β) + b to observed loss reductions.

        Args:
            r: Ranks, shape (n,), > 0.
            length: Answer lengths ℓ, shape (n,), > 0.
            delta_loss: Observed ΔL, shape (n,), finite.
            l_base: Ignored: this form does not know the ceiling (accepted so that every form is called alike).

        Returns:
            self, fitted.

        Raises:
            ConfigError: Bad `loss`/`max_nfev`, non-positive rank or length, NaN, length mismatch, or a
                zero ΔL with `relative=True`.

        Warns:
            FitWarning: The optimizer did not converge, n < 5, or the covariance is singular (stderr inf).
        """
        est.check_solver(self.loss, self.max_nfev)
        r, length, y = est.check_data(r, length, delta_loss=delta_loss)
        n = y.size
        if self.relative and np.any(y == 0):
            raise ConfigError(f"relative fit needs delta_loss != 0, got 0 at index {int(np.argmax(y == 0))}")
        w = 1.0 / np.abs(y) if self.relative else np.ones(n)
        k = 3 if self.fix_b else 4
        problems = [f"only n={n} points: {k} parameters need n >= {k + 1} for an error estimate"] if n <= k else []
        free_alpha, free_beta, unidentified = est.identifiable(r, length)
        problems += unidentified
        free = np.array([True, free_alpha, free_beta, not self.fix_b])

        # ΔL = A·(r/r0)^α·(ℓ/ℓ0)^(−β) + b around the grid's geometric centre; then C = A · r0^(−α) · ℓ0^β.
        log_r0, log_l0, lu, lv = est.log_centre(r, length)
        x0 = _log_linear_start(lu, lv, y)
        x0[~free] = 0.0

        def model(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            A, alpha, beta, b = theta
            g = np.exp(alpha * lu - beta * lv)
            return A * g + b, np.column_stack([g, A * g * lu, -A * g * lv, np.ones_like(g)])

        theta, res = est.solve(model, x0, free, y, w, loss=self.loss, max_nfev=self.max_nfev)
        A, alpha, beta, b = (float(x) for x in theta)
        with np.errstate(over="ignore", invalid="ignore"):
            C = float(A * np.exp(-alpha * log_r0 + beta * log_l0))
        self.params_ = LawParams(C=C, alpha=alpha, beta=beta, b=b)
        rss = est.record_fit(self, y, law(r, length, *astuple(self.params_)), w, res, free, problems)
        with np.errstate(over="ignore", invalid="ignore"):
            se, well_posed = est.stderr(_jacobian(r, length, self.params_), w, rss,
                                        held=np.array([False, False, False, self.fix_b]))
        self.stderr_ = LawParams(*map(float, se))
        if not well_posed and n > k:
            problems.append("the covariance is singular or ill-conditioned (does the grid vary both rank and "
                            "length?); stderr set to inf")
        if problems:
            warnings.warn("memory-law fit: " + "; ".join(problems), FitWarning, stacklevel=2)
        return self

    def predict(self, r: ArrayLike, length: ArrayLike, l_base: ArrayLike | None = None) -> np.ndarray:
        """ΔL = C · r^α · ℓ^(−β) + b at the fitted parameters (broadcasting over r and length; `l_base` ignored).

        Raises:
            NotFittedError: Before `fit`.
            ConfigError: Non-positive or non-finite rank or length.
        """
        est.check_fitted(self, "params_")
        return law(est.as_positive("rank", r), est.as_positive("length", length), *astuple(self.params_))

    def rank_for(self, target_delta_loss: float, length: float, l_base: float | None = None) -> float:
        """The rank at which the law predicts `target_delta_loss` at `length` (the law inverted in r).

            r = ((ΔL − b) / (C · ℓ^(−β)))^(1/α)

        The rank is continuous; round it up to a rank you can train. `l_base` is ignored.

        Returns:
            r > 0, or inf when the fitted law does not depend on rank (α = 0 or C = 0).

        Raises:
            NotFittedError: Before `fit`.
            ConfigError: Non-finite target, non-positive length, or a target on the far side of the
                asymptote b, which no rank reaches (e.g. ΔL ≤ b while ΔL grows with rank).
        """
        est.check_fitted(self, "params_")
        if not math.isfinite(target_delta_loss):
            raise ConfigError(f"target_delta_loss must be finite, got {target_delta_loss}")
        (length,) = est.as_positive("length", [length])
        p = self.params_
        scale = p.C * length ** (-p.beta)
        if p.alpha == 0 or scale == 0:
            return math.inf
        ratio = (target_delta_loss - p.b) / scale
        if ratio <= 0:
            side = "above" if scale > 0 else "below"
            raise ConfigError(f"target ΔL={target_delta_loss:g} is unreachable at length {length:g}: the fitted law "
                              f"stays {side} its asymptote b={p.b:g} at every rank")
        return float(ratio ** (1.0 / p.alpha))

    def summary(self) -> dict[str, Any]:
        """JSON-ready fit report: form, params, stderr (None where undetermined), r2, mape (%), aic, bic, n, k,
        converged, relative, fix_b."""
        return est.summary(self, fix_b=self.fix_b)


__all__ = ["law", "LawParams", "MemoryLaw", "FORMULA"]
