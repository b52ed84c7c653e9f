"""The bounded form of the memory law: it knows that ΔL cannot exceed L_base.

    ΔL(r, ℓ) = L_base · (1 − exp(−C · r^α · ℓ^(−β)))

Why this form. ΔL = L_base − L_final, and L_final ≥ 0, so ΔL ≤ L_base: a memory stored completely
sits on that ceiling whatever its rank. The paper's C·r^α·ℓ^(−β) + b grows without bound in r, so
it fits only cells away from the ceiling, and on grids that touch it the free fit drifts
(C → ∞, b → −∞). What a law of ΔL must do at the edges:
- r → 0 (no adapter): ΔL → 0, so no offset b;
- ℓ → ∞ (a fixed capacity spread over ever more tokens): ΔL → 0;
- r → ∞ or ℓ → 0: ΔL → L_base, the ceiling, reached smoothly.
Write x = C·r^α·ℓ^(−β), the capacity per token, and let each further unit of it remove the same
share of the loss still left, dL_final/dx = −L_final. Then L_final = L_base·e^(−x) and ΔL is the
form above. Another reading: capacity spread at random over the tokens holds each with
probability 1 − e^(−x) (Poisson coverage); a held token's loss drops to about 0, the others keep
theirs. Far from the ceiling (x ≪ 1) it is the paper's law with b = 0 and scale L_base·C, so α and
β keep the paper's meaning; near it, the remaining loss decays exponentially instead of ΔL
overshooting L_base. In log space it is linear,

    ln(−ln(L_final / L_base)) = ln C + α·ln r − β·ln ℓ,

which gives the start of the fit (a complementary log-log regression). A logistic in log space,
ΔL = L_base·x/(1 + x), has the same edges but approaches the ceiling as 1/x instead of e^(−x); the
exponential is the one that follows from "a fixed share of what is left", and the held-out columns
of `memlaw fit` are how a grid tells such forms apart.

The fit is least squares on ΔL itself, like the paper's form, so R², MAPE, AIC and BIC compare the
two on the same cells. L_base is known per cell (the store records it; a CSV gives an l_base
column), so the form has three parameters, C, α and β, against the paper's four.
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

FORMULA = "ΔL = L_base·(1 − exp(−C·r^α·ℓ^(−β)))"
SATURATED = 0.95
"""A cell with ΔL ≥ SATURATED·L_base is on the ceiling: it says that the memory is stored, not how much more
rank or less length would buy."""


def bounded_law(r: ArrayLike, length: ArrayLike, l_base: ArrayLike, C: float, alpha: float,
                beta: float) -> np.ndarray:
    """ΔL = L_base · (1 − exp(−C · r^α · ℓ^(−β))) (broadcasting over r, length and l_base).

    Args:
        r: Adapter rank(s), > 0.
        length: Answer length(s) ℓ in tokens, > 0.
        l_base: The base model's mean loss on the answers (nats), the ceiling of ΔL.
        C: Scale (per nat of L_base: far from the ceiling ΔL ≈ L_base·C·r^α·ℓ^(−β)).
        alpha: Capacity exponent α.
        beta: Length penalty exponent β.

    Returns:
        ΔL in nats, in [0, L_base) for C ≥ 0.
    """
    r, length, l_base = (np.asarray(a, dtype=float) for a in (r, length, l_base))
    return -l_base * np.expm1(-C * r**alpha * length ** (-beta))


@dataclass(frozen=True)
class BoundedParams:
    """The three parameters of ΔL = L_base · (1 − exp(−C · r^α · ℓ^(−β))) (or their standard errors)."""

    C: float
    alpha: float
    beta: float


def _cloglog_start(lu: np.ndarray, lv: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Start (a = ln A, α, β) by OLS of ln(−ln(1 − f)) on lu, −lv over the cells with 0 < f = ΔL/L_base < 1."""
    inside = (f > 0) & (f < 1)
    if inside.sum() < 3:  # too few cells off the floor and the ceiling: a flat law at the mean share
        share = float(np.clip(np.mean(f), 0.05, 0.95))
        return np.array([math.log(-math.log1p(-share)), 0.5, 0.5])
    X = np.column_stack([np.ones(inside.sum()), lu[inside], -lv[inside]])
    z = np.log(-np.log1p(-f[inside]))
    return np.linalg.lstsq(X, z, rcond=None)[0]  # min-norm if degenerate


class BoundedLaw:
    """ΔL = L_base · (1 − exp(−C · r^α · ℓ^(−β))), fitted by nonlinear least squares on ΔL.

    The same contract as `MemoryLaw` (fit, predict, rank_for, summary), with the cells' L_base as one
    more input. Fitted attributes: `params_`, `stderr_` (both `BoundedParams`), `r2_`, `mape_` (%),
    `aic_`, `bic_`, `k_`, `n_`, `residuals_`, `converged_`, `saturated_` (cells with ΔL ≥ 95% of L_base).

    Args:
        loss: `scipy.optimize.least_squares` loss (see `MemoryLaw`).
        max_nfev: Cap on function evaluations (None: scipy's default).
        relative: Minimise relative residuals (pred − ΔL)/ΔL (noise that scales with ΔL). Needs ΔL ≠ 0.
    """

    form = "bounded"
    formula = FORMULA
    needs_l_base = True

    def __init__(self, *, loss: str = "linear", max_nfev: int | None = None, relative: bool = False):
        self.loss, self.max_nfev, self.relative = loss, max_nfev, relative

    def fit(self, r: ArrayLike, length: ArrayLike, delta_loss: ArrayLike, l_base: ArrayLike | None = None) -> BoundedLaw:
        """Fit the bounded law to observed loss reductions and each cell's L_base.

        Args:
            r: Ranks, shape (n,), > 0.
            length: Answer lengths ℓ, shape (n,), > 0.
            delta_loss: Observed ΔL = L_base − L_final, shape (n,), finite.
            l_base: The cells' L_base (nats), shape (n,), > 0.

        Returns:
            self, fitted.

        Raises:
            ConfigError: No or bad `l_base`, bad `loss`/`max_nfev`, non-positive rank or length, NaN,
                length mismatch, or a zero ΔL with `relative=True`.

        Warns:
            FitWarning: The optimizer did not converge, n < 4, fewer than 4 cells below 95% of
                L_base (the ceiling hides α and β), or the covariance is singular (stderr inf).
        """
        est.check_solver(self.loss, self.max_nfev)
        if l_base is None:
            raise ConfigError("the bounded law needs each cell's L_base (a CSV column l_base, or L_base as "
                              "`memlaw runs export` writes it)")
        r, length, y, L = est.check_data(r, length, delta_loss=delta_loss, l_base=l_base)
        n = y.size
        if self.relative and np.any(y == 0):
            raise ConfigError(f"relative fit needs delta_loss != 0, got 0 at index {int(np.argmax(y == 0))}")
        w = 1.0 / np.abs(y) if self.relative else np.ones(n)
        problems = [f"only n={n} points: 3 parameters need n >= 4 for an error estimate"] if n <= 3 else []
        free_alpha, free_beta, unidentified = est.identifiable(r, length)
        problems += unidentified
        free = np.array([True, free_alpha, free_beta])
        f = y / L
        self.saturated_ = int(np.sum(f >= SATURATED))
        below = n - self.saturated_
        if n > 3 and below < 4:
            problems.append(f"only {below} of {n} cells lie below {SATURATED:.0%} of L_base: on the ceiling ΔL "
                            "does not show how it grows with rank and falls with length, so α and β are poorly "
                            "determined")

        # x = A·(r/r0)^α·(ℓ/ℓ0)^(−β) = e^z, z = a + α·lu − β·lv; C = e^a · r0^(−α) · ℓ0^β.
        log_r0, log_l0, lu, lv = est.log_centre(r, length)
        x0 = _cloglog_start(lu, lv, f)
        x0[~free] = 0.0

        def model(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            a, alpha, beta = theta
            z = a + alpha * lu - beta * lv
            slope = L * np.exp(z - np.exp(z))               # ∂ΔL/∂z = L·x·e^(−x), finite for any z
            return -L * np.expm1(-np.exp(z)), np.column_stack([slope, slope * lu, -slope * lv])

        theta, res = est.solve(model, x0, free, y, w, loss=self.loss, max_nfev=self.max_nfev)
        a, alpha, beta = (float(v) for v in theta)
        with np.errstate(over="ignore", invalid="ignore"):
            C = float(np.exp(a - alpha * log_r0 + beta * log_l0))
        self.params_ = BoundedParams(C=C, alpha=alpha, beta=beta)
        rss = est.record_fit(self, y, bounded_law(r, length, L, *astuple(self.params_)), w, res, free, problems)
        with np.errstate(over="ignore", invalid="ignore"):
            x = C * r**alpha * length ** (-beta)
            slope = L * x * np.exp(-x)
            J = np.column_stack([slope / C, slope * np.log(r), -slope * np.log(length)])
            se, well_posed = est.stderr(J, w, rss)
        self.stderr_ = BoundedParams(*map(float, se))
        if not well_posed and n > 3:
            problems.append("the covariance is singular or ill-conditioned (does the grid vary both rank and "
                            "length?); stderr set to inf")
        if problems:
            warnings.warn("bounded-law fit: " + "; ".join(problems), FitWarning, stacklevel=2)
        return self

    def predict(self, r: ArrayLike, length: ArrayLike, l_base: ArrayLike | None = None) -> np.ndarray:
        """ΔL at the fitted parameters for cells (or records) of base loss `l_base` (broadcasting).

        Raises:
            NotFittedError: Before `fit`.
            ConfigError: `l_base` missing or not > 0; non-positive or non-finite rank or length.
        """
        est.check_fitted(self, "params_")
        if l_base is None:
            raise ConfigError("the bounded law predicts ΔL for a given L_base; pass l_base")
        return bounded_law(est.as_positive("rank", r), est.as_positive("length", length),
                           est.as_positive("l_base", l_base), *astuple(self.params_))

    def rank_for(self, target_delta_loss: float, length: float, l_base: float | None = None) -> float:
        """The rank at which the law predicts `target_delta_loss` at `length` for records of base loss `l_base`.

            r = (−ln(1 − ΔL/L_base) / (C · ℓ^(−β)))^(1/α)

        Returns:
            r > 0 (continuous; round it up), or inf when the fitted law does not depend on rank.

        Raises:
            NotFittedError: Before `fit`.
            ConfigError: No `l_base`, a non-finite target, a non-positive length, or a target outside
                (0, L_base): no adapter lowers the loss below zero, and any rank reaches ΔL ≤ 0.
        """
        est.check_fitted(self, "params_")
        if not math.isfinite(target_delta_loss):
            raise ConfigError(f"target_delta_loss must be finite, got {target_delta_loss}")
        if l_base is None:
            raise ConfigError("the bounded law needs the records' L_base to invert; pass l_base")
        (length,) = est.as_positive("length", [length])
        (l_base,) = est.as_positive("l_base", [l_base])
        if not 0 < target_delta_loss < l_base:
            raise ConfigError(f"target ΔL={target_delta_loss:g} is unreachable: the bounded law's ΔL lies in "
                              f"(0, L_base={l_base:g})")
        p = self.params_
        scale = p.C * length ** (-p.beta)
        if p.alpha == 0 or scale == 0:
            return math.inf
        return float((-math.log1p(-target_delta_loss / l_base) / scale) ** (1.0 / p.alpha))

    def summary(self) -> dict[str, Any]:
        """JSON-ready fit report: form, params, stderr (None where undetermined), r2, mape (%), aic, bic, n, k,
        converged, relative, saturated."""
        return est.summary(self, saturated=self.saturated_)


__all__ = ["bounded_law", "BoundedParams", "BoundedLaw", "FORMULA", "SATURATED"]
