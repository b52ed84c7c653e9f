"""The capacity frontier: the largest fully recalled length per rank, fitted as ℓ_max = K · r^γ.

"How big an adapter for these records" (DESIGN.md §7) without going through ΔL: a length counts as
held when its cell recalled every record (EM, or the certified fraction, at the threshold).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from memlaw.errors import ConfigError, FitWarning
from memlaw.law import estimation as est


@dataclass
class Frontier:
    """Capacity frontier: the largest fully recalled length per rank, fitted as ℓ_max = K · r^γ.

    Fitted attributes (after `fit`): `K_`, `gamma_`, `K_stderr_`, `gamma_stderr_`, `r2_` (on log ℓ_max),
    `points_` (list of (rank, ℓ_max)), `missing_ranks_` (ranks with no length at `threshold`).
    """

    threshold: float = 1.0
    """A length counts as recalled when em >= threshold (EM fraction, or certified fraction)."""

    def fit(self, r: ArrayLike, length: ArrayLike, em: ArrayLike) -> Frontier:
        """Fit log ℓ_max = log K + γ · log r by OLS over the ranks that recall at least one length.

        Args:
            r: Ranks, shape (n,).
            length: Answer lengths, shape (n,).
            em: Exact-match (or certified) fraction per (rank, length), shape (n,), in [0, 1].

        Returns:
            self, fitted.

        Raises:
            ConfigError: Bad data, or fewer than 2 distinct ranks with a recalled length.

        Warns:
            FitWarning: Only 2 ranks on the frontier (no error estimate; stderr inf).
        """
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"threshold must be in (0, 1], got {self.threshold}")
        r, length, em = est.check_data(r, length, em=em)
        points, missing = [], []
        for rank in np.unique(r):
            ok = (r == rank) & (em >= self.threshold)
            if ok.any():
                points.append((float(rank), float(length[ok].max())))
            else:
                missing.append(float(rank))
        if len(points) < 2:
            raise ConfigError(f"frontier needs >= 2 ranks with em >= {self.threshold:g} at some length, "
                              f"got {len(points)} (ranks without one: {missing})")
        x, z = np.log([p[0] for p in points]), np.log([p[1] for p in points])
        X = np.column_stack([np.ones_like(x), x])
        (log_K, gamma), *_ = np.linalg.lstsq(X, z, rcond=None)
        resid = z - X @ np.array([log_K, gamma])
        m = len(points)
        if m > 2:
            cov = np.linalg.inv(X.T @ X) * float(resid @ resid) / (m - 2)
            se_log_K, se_gamma = np.sqrt(np.diag(cov))
        else:
            warnings.warn("frontier fitted through 2 points: no error estimate (stderr inf)", FitWarning, stacklevel=2)
            se_log_K = se_gamma = math.inf
        self.K_, self.gamma_ = math.exp(log_K), float(gamma)
        self.K_stderr_, self.gamma_stderr_ = self.K_ * float(se_log_K), float(se_gamma)  # delta method for K
        self.r2_ = est.r2(z, X @ np.array([log_K, gamma]))
        self.points_, self.missing_ranks_ = points, missing
        return self

    def max_length(self, r: ArrayLike) -> np.ndarray:
        """Predicted largest fully recalled length ℓ_max = K · r^γ."""
        est.check_fitted(self, "K_")
        return self.K_ * est.as_positive("rank", r) ** self.gamma_

    def rank_for(self, length: float) -> float:
        """Smallest (continuous) rank whose predicted ℓ_max ≥ length: r = (ℓ / K)^(1/γ); inf when γ ≤ 0."""
        est.check_fitted(self, "K_")
        (length,) = est.as_positive("length", [length])
        if self.gamma_ <= 0:
            return math.inf
        return float((length / self.K_) ** (1.0 / self.gamma_))

    def summary(self) -> dict[str, Any]:
        """JSON-ready: K, gamma, their stderr (None where undetermined), r2, points, missing_ranks."""
        est.check_fitted(self, "K_")
        return {"K": self.K_, "gamma": self.gamma_, "K_stderr": est.finite_or_none(self.K_stderr_),
                "gamma_stderr": est.finite_or_none(self.gamma_stderr_), "r2": est.finite_or_none(self.r2_),
                "points": [list(p) for p in self.points_], "missing_ranks": self.missing_ranks_}


__all__ = ["Frontier"]
