"""The Parametric Memory Law and the capacity frontier (DESIGN.md §7).

    ΔL(r, ℓ) = C · r^α · ℓ^(−β) + b                                  (the paper's law)

ΔL is the loss reduction an adapter of rank r buys on answers of length ℓ; α is the capacity
exponent, β the length penalty, b an offset. `MemoryLaw` fits it by nonlinear least squares
(started from a log-linear OLS), reports R², MAPE and standard errors, and inverts it in r.
`Frontier` fits the largest fully recalled length per rank as ℓ_max = K · r^γ.

Everything here is pure (arrays in, numbers out) except `read_law_csv`.
"""

from __future__ import annotations

import csv
import difflib
import logging
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, astuple, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import least_squares

from memlaw.errors import ConfigError, FitWarning, NotFittedError

logger = logging.getLogger(__name__)

LOSSES = ("linear", "soft_l1", "huber", "cauchy", "arctan")  # scipy.optimize.least_squares
_RCOND = 1e-10  # relative singular value below which the (column-scaled) Jacobian counts as singular


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


# ---------------------------------------------------------------- input checks


def _as_positive(name: str, x: ArrayLike) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if not np.all(np.isfinite(a)):
        raise ConfigError(f"{name} contains NaN or inf (first at index {int(np.argmin(np.isfinite(a.ravel())))})")
    if np.any(a <= 0):
        i = int(np.argmax(a.ravel() <= 0))
        raise ConfigError(f"{name} must be > 0, got {a.ravel()[i]:g} at index {i}")
    return a


def _check_data(r: ArrayLike, length: ArrayLike, **ys: ArrayLike) -> tuple[np.ndarray, ...]:
    """Flatten and validate rank, length and the response columns; ConfigError names the problem."""
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
    return _as_positive("rank", cols["rank"]), _as_positive("length", cols["length"]), *(cols[k] for k in ys)


def _check_fitted(obj: object, attr: str) -> None:
    if not hasattr(obj, attr):
        raise NotFittedError(f"{type(obj).__name__} is not fitted yet; call fit(...) first")


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


# ---------------------------------------------------------------- the law, fitted


def _log_linear_start(lu: np.ndarray, lv: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Start (A, α, β, b=0) for ΔL = A·e^(α·lu − β·lv) + b: OLS of log ΔL on lu, lv over ΔL > 0."""
    pos = y > 0
    if pos.sum() < 3:  # too few points for three coefficients: a flat-ish law at the mean level
        level = float(np.mean(y)) or 1.0
        return np.array([level, 0.5, 0.5, 0.0])
    X = np.column_stack([np.ones(pos.sum()), lu[pos], -lv[pos]])
    (log_A, alpha, beta), *_ = np.linalg.lstsq(X, np.log(y[pos]), rcond=None)  # min-norm if degenerate
    return np.array([math.exp(log_A), alpha, beta, 0.0])


def _stderr(r: np.ndarray, length: np.ndarray, p: LawParams, w: np.ndarray, rss: float,
            free: np.ndarray | None = None) -> tuple[LawParams, bool]:
    """Standard errors from cov = s²·(JᵀJ)⁻¹, s² = RSS/(n−4); (se, well_posed).

    J = w · ∂ΔL/∂(C, α, β, b) and RSS = Σ (w · (ΔL − pred))², with w the residual weights of the fit.
    """
    n = r.size
    g = r**p.alpha * length ** (-p.beta)
    J = np.column_stack([g, p.C * g * np.log(r), -p.C * g * np.log(length), np.ones(n)]) * w[:, None]
    fixed_b = free is not None and not free[3]
    if fixed_b:                                           # b held at 0: three parameters
        J = J[:, :3]
    k = J.shape[1]
    # Scale columns to unit norm first: conditioning then reflects the design, not the units of C.
    norms = np.linalg.norm(J, axis=0)
    if n <= k or not np.all(np.isfinite(J)) or np.any(norms == 0):
        return LawParams(*[math.inf] * 4), False
    _, s, Vt = np.linalg.svd(J / norms, full_matrices=False)
    if s[-1] < _RCOND * s[0]:
        return LawParams(*[math.inf] * 4), False
    cov = (Vt.T / s**2) @ Vt / np.outer(norms, norms) * (rss / (n - k))
    se = list(np.sqrt(np.clip(np.diag(cov), 0.0, None)))
    return LawParams(*(se + [0.0] if fixed_b else se)), True


def _solve(r: np.ndarray, length: np.ndarray, y: np.ndarray, w: np.ndarray, free: np.ndarray, *,
           loss: str, max_nfev: int | None) -> tuple[LawParams, Any]:
    """Weighted nonlinear least squares for the law over the `free` parameters of (C, α, β, b)."""
    # Optimise around the geometric centre, ΔL = A·(r/r0)^α·(ℓ/ℓ0)^(−β) + b: that decorrelates A from
    # α and β (C and β are nearly collinear over ℓ ∈ 1e3..3e4). Then C = A · r0^(−α) · ℓ0^β.
    log_r0, log_l0 = float(np.mean(np.log(r))), float(np.mean(np.log(length)))
    lu, lv = np.log(r) - log_r0, np.log(length) - log_l0
    x0 = _log_linear_start(lu, lv, y)
    x0[~free] = 0.0

    def full(q: np.ndarray) -> np.ndarray:
        p = x0.copy()
        p[free] = q
        return p

    def resid(q: np.ndarray) -> np.ndarray:
        A, alpha, beta, b = full(q)
        return (A * np.exp(alpha * lu - beta * lv) + b - y) * w

    def jac(q: np.ndarray) -> np.ndarray:
        A, alpha, beta, _ = full(q)
        g = np.exp(alpha * lu - beta * lv)
        return (np.column_stack([g, A * g * lu, -A * g * lv, np.ones_like(g)]) * w[:, None])[:, free]

    with np.errstate(over="ignore", invalid="ignore"):  # a diverging fit ends non-finite, flagged by the caller
        res = least_squares(resid, x0[free], jac=jac, loss=loss, max_nfev=max_nfev,
                            x_scale="jac", ftol=1e-12, xtol=1e-12, gtol=1e-12)
        A, alpha, beta, b = (float(x) for x in full(res.x))
        C = float(A * np.exp(-alpha * log_r0 + beta * log_l0))
    return LawParams(C=C, alpha=alpha, beta=beta, b=b), res


class MemoryLaw:
    """ΔL(r, ℓ) = C · r^α · ℓ^(−β) + b, fitted by nonlinear least squares.

    Fitted attributes (after `fit`): `params_`, `stderr_` (both `LawParams`), `r2_`, `mape_` (%),
    `n_`, `residuals_` (observed − predicted ΔL, unweighted), `converged_`.

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

    def __init__(self, *, loss: str = "linear", max_nfev: int | None = None, relative: bool = False,
                 fix_b: bool = False):
        self.loss, self.max_nfev, self.relative, self.fix_b = loss, max_nfev, relative, fix_b

    def fit(self, r: ArrayLike, length: ArrayLike, delta_loss: ArrayLike) -> MemoryLaw:
        """Fit ΔL = C · r^α · ℓ^(−β) + b to observed loss reductions.

        Args:
            r: Ranks, shape (n,), > 0.
            length: Answer lengths ℓ, shape (n,), > 0.
            delta_loss: Observed ΔL, shape (n,), finite.

        Returns:
            self, fitted.

        Raises:
            ConfigError: Bad `loss`/`max_nfev`, non-positive rank or length, NaN, length mismatch, or a
                zero ΔL with `relative=True`.

        Warns:
            FitWarning: The optimizer did not converge, n < 5, or the covariance is singular (stderr inf).
        """
        if self.loss not in LOSSES:
            close = difflib.get_close_matches(str(self.loss), LOSSES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"loss must be one of {', '.join(LOSSES)}; got {self.loss!r}{hint}")
        if self.max_nfev is not None and (not isinstance(self.max_nfev, int) or self.max_nfev < 1):
            raise ConfigError(f"max_nfev must be None or an integer >= 1, got {self.max_nfev!r}")
        r, length, y = _check_data(r, length, delta_loss=delta_loss)
        n = y.size
        if self.relative and np.any(y == 0):
            raise ConfigError(f"relative fit needs delta_loss != 0, got 0 at index {int(np.argmax(y == 0))}")
        w = 1.0 / np.abs(y) if self.relative else np.ones(n)
        k = 3 if self.fix_b else 4
        problems = [f"only n={n} points: {k} parameters need n >= {k + 1} for an error estimate"] if n <= k else []
        # A single rank (length) says nothing about α (β): fix it at 0 instead of letting it drift.
        free = np.array([True, np.unique(r).size > 1, np.unique(length).size > 1, not self.fix_b])
        for name, var, i, param in (("rank", r, 1, "alpha"), ("length", length, 2, "beta")):
            if not free[i]:
                problems.append(f"{name} takes one value ({var[0]:g}): {param} is not identifiable and is fixed at 0")

        self.params_, res = _solve(r, length, y, w, free, loss=self.loss, max_nfev=self.max_nfev)
        self.converged_ = bool(res.status > 0) and all(map(math.isfinite, astuple(self.params_)))
        if not self.converged_:
            problems.append(f"did not converge: {res.message}")
        pred = law(r, length, *astuple(self.params_))
        self.residuals_ = y - pred
        self.n_ = n
        rss = float(np.sum((self.residuals_ * w) ** 2))
        self.stderr_, well_posed = _stderr(r, length, self.params_, w, rss, free)
        if not well_posed and n > k:
            problems.append("the covariance is singular or ill-conditioned (does the grid vary both rank and "
                            "length?); stderr set to inf")
        if problems:
            warnings.warn("memory-law fit: " + "; ".join(problems), FitWarning, stacklevel=2)
        self.r2_ = _r2(y, pred)
        self.mape_ = _mape(y, pred)
        return self

    def predict(self, r: ArrayLike, length: ArrayLike) -> np.ndarray:
        """ΔL = C · r^α · ℓ^(−β) + b at the fitted parameters (broadcasting over r and length).

        Raises:
            NotFittedError: Before `fit`.
            ConfigError: Non-positive or non-finite rank or length.
        """
        _check_fitted(self, "params_")
        return law(_as_positive("rank", r), _as_positive("length", length), *astuple(self.params_))

    def rank_for(self, target_delta_loss: float, length: float) -> float:
        """The rank at which the law predicts `target_delta_loss` at `length` (the law inverted in r).

            r = ((ΔL − b) / (C · ℓ^(−β)))^(1/α)

        The rank is continuous; round it up to a rank you can train.

        Returns:
            r > 0, or inf when the fitted law does not depend on rank (α = 0 or C = 0).

        Raises:
            NotFittedError: Before `fit`.
            ConfigError: Non-finite target, non-positive length, or a target on the far side of the
                asymptote b, which no rank reaches (e.g. ΔL ≤ b while ΔL grows with rank).
        """
        _check_fitted(self, "params_")
        if not math.isfinite(target_delta_loss):
            raise ConfigError(f"target_delta_loss must be finite, got {target_delta_loss}")
        (length,) = _as_positive("length", [length])
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
        """JSON-ready fit report: params, stderr (None where undetermined), r2, mape (%), n, converged, relative."""
        _check_fitted(self, "params_")
        return {
            "params": asdict(self.params_),
            "stderr": {k: _finite_or_none(v) for k, v in asdict(self.stderr_).items()},
            "r2": _finite_or_none(self.r2_),
            "mape": _finite_or_none(self.mape_),
            "n": self.n_,
            "converged": self.converged_,
            "relative": self.relative,
            "fix_b": self.fix_b,
        }


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    """R² = 1 − RSS/TSS on ΔL (nan when every y is equal)."""
    tss = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(np.sum((y - pred) ** 2)) / tss if tss > 0 else math.nan


def _mape(y: np.ndarray, pred: np.ndarray) -> float:
    """MAPE = mean |pred − y| / |y| · 100 over y ≠ 0 (points with y = 0 are skipped and logged)."""
    keep = y != 0
    if not keep.all():
        logger.info("MAPE skips %d point(s) with ΔL = 0", int((~keep).sum()))
    if not keep.any():
        return math.nan
    return float(np.mean(np.abs(pred[keep] - y[keep]) / np.abs(y[keep])) * 100.0)


def held_out_mape(
    r: ArrayLike, length: ArrayLike, delta_loss: ArrayLike, *, split: str = "rank", relative: bool = False,
    fix_b: bool = False,
) -> dict[str, Any]:
    """Extrapolation check: fit the law on the smaller half of the distinct ranks (or lengths), predict the rest.

    With an odd number of distinct values the middle one goes to the training half.

    Args:
        r: Ranks, shape (n,).
        length: Answer lengths, shape (n,).
        delta_loss: Observed ΔL, shape (n,).
        split: "rank" or "length": which variable to extrapolate in.
        relative: Passed to `MemoryLaw`.

    Returns:
        {"split", "train_ranks", "test_ranks", "train_lengths", "test_lengths", "mape", "r2",
        "n_train", "n_test", "params"}: the distinct values on each side, MAPE (%) and R² on the
        held-out points, and the parameters fitted on the training half.

    Raises:
        ConfigError: Unknown `split`, bad data, or fewer than 2 distinct values to split.
    """
    if split not in ("rank", "length"):
        raise ConfigError(f"split must be 'rank' or 'length', got {split!r}")
    r, length, y = _check_data(r, length, delta_loss=delta_loss)
    key = r if split == "rank" else length
    values = np.unique(key)
    if values.size < 2:
        raise ConfigError(f"held-out split by {split} needs >= 2 distinct {split}s, got {values.size}")
    train = key <= values[(values.size + 1) // 2 - 1]
    model = MemoryLaw(relative=relative, fix_b=fix_b).fit(r[train], length[train], y[train])
    pred = model.predict(r[~train], length[~train])
    return {
        "split": split,
        "train_ranks": np.unique(r[train]).tolist(),
        "test_ranks": np.unique(r[~train]).tolist(),
        "train_lengths": np.unique(length[train]).tolist(),
        "test_lengths": np.unique(length[~train]).tolist(),
        "mape": _finite_or_none(_mape(y[~train], pred)),
        "r2": _finite_or_none(_r2(y[~train], pred)),
        "n_train": int(train.sum()),
        "n_test": int((~train).sum()),
        "params": asdict(model.params_),
    }


# ---------------------------------------------------------------- capacity frontier


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
        r, length, em = _check_data(r, length, em=em)
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
        self.r2_ = _r2(z, X @ np.array([log_K, gamma]))
        self.points_, self.missing_ranks_ = points, missing
        return self

    def max_length(self, r: ArrayLike) -> np.ndarray:
        """Predicted largest fully recalled length ℓ_max = K · r^γ."""
        _check_fitted(self, "K_")
        return self.K_ * _as_positive("rank", r) ** self.gamma_

    def rank_for(self, length: float) -> float:
        """Smallest (continuous) rank whose predicted ℓ_max ≥ length: r = (ℓ / K)^(1/γ); inf when γ ≤ 0."""
        _check_fitted(self, "K_")
        (length,) = _as_positive("length", [length])
        if self.gamma_ <= 0:
            return math.inf
        return float((length / self.K_) ** (1.0 / self.gamma_))

    def summary(self) -> dict[str, Any]:
        """JSON-ready: K, gamma, their stderr (None where undetermined), r2, points, missing_ranks."""
        _check_fitted(self, "K_")
        return {"K": self.K_, "gamma": self.gamma_, "K_stderr": _finite_or_none(self.K_stderr_),
                "gamma_stderr": _finite_or_none(self.gamma_stderr_), "r2": _finite_or_none(self.r2_),
                "points": [list(p) for p in self.points_], "missing_ranks": self.missing_ranks_}


# ---------------------------------------------------------------- tables and files


def unsaturated(rows: Sequence[Mapping[str, Any]], below: float) -> list[Mapping[str, Any]]:
    """The rows whose L_final is at least `below` (or unknown): the memories not stored completely."""
    return [w for w in rows if w.get("L_final") is None or w["L_final"] >= below]


def fit_table(rows: Iterable[Mapping[str, Any]], *, relative: bool = False,
              saturated_below: float | None = None, fix_b: bool = False) -> dict[str, Any]:
    """Fit the law, the held-out check and (when rows carry `em`) the frontier on one table.

    Args:
        rows: Mappings with keys rank, length, delta_loss and optionally em and L_final.
        relative: Passed to `MemoryLaw` (law and held-out fits).
        saturated_below: leave cells with L_final below this (nats) out of the law and held-out
            fits. ΔL = L_base − L_final cannot exceed L_base, so a memory stored completely sits on
            that ceiling whatever its rank; the law describes the non-saturated regime (the paper's
            wording). The frontier still uses every cell.

    Returns:
        {"law": MemoryLaw.summary(), "held_out": held_out_mape(...) or None, "frontier":
        Frontier.summary() or None, "notes": why a part is None}.
    """
    rows = list(rows)
    for i, row in enumerate(rows):
        missing = [k for k in ("rank", "length", "delta_loss") if row.get(k) is None]
        if missing:
            raise ConfigError(f"row {i}: missing key(s) {', '.join(missing)}")
    notes = []
    fitted = rows
    if saturated_below is not None:
        fitted = unsaturated(rows, saturated_below)
        notes.append(f"law: {len(rows) - len(fitted)} saturated cells (L_final < {saturated_below}) left out")
    r, length, y = _check_data([w["rank"] for w in fitted], [w["length"] for w in fitted],
                               delta_loss=[w["delta_loss"] for w in fitted])
    out: dict[str, Any] = {"law": MemoryLaw(relative=relative, fix_b=fix_b).fit(r, length, y).summary()}
    out["held_out"] = out["frontier"] = None
    if np.unique(r).size >= 2:
        out["held_out"] = held_out_mape(r, length, y, relative=relative, fix_b=fix_b)
    else:
        notes.append("held_out: needs >= 2 distinct ranks")
    with_em = [w for w in rows if w.get("em") is not None]
    if with_em:
        em_cols = _check_data([w["rank"] for w in with_em], [w["length"] for w in with_em],
                              em=[w["em"] for w in with_em])
        try:
            out["frontier"] = Frontier().fit(*em_cols).summary()
        except ConfigError as e:  # the data are valid; too few ranks reach full recall to fit a line
            notes.append(f"frontier: {e}")
    else:
        notes.append("frontier: no em column")
    out["notes"] = notes
    return out


def read_law_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a CSV with header rank,length,delta_loss[,em] into rows of floats.

    Of the other columns, `L_final` (a number) and `experiment` and `config` (text, as `memlaw runs
    export` writes them) are kept, so the rows group into experiments as the store's do; the rest
    are ignored.

    Raises:
        ConfigError: "path:line: cause" for a missing column, a non-number, a non-positive rank or
            length, or an em outside [0, 1].
    """
    required, optional = ("rank", "length", "delta_loss"), ("em", "L_final")
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        if not header:
            raise ConfigError(f"{path}:1: empty file; expected a header rank,length,delta_loss[,em]")
        reader.fieldnames = header
        missing = [k for k in required if k not in header]
        if missing:
            raise ConfigError(f"{path}:1: missing column(s) {', '.join(missing)} (header: {','.join(header)})")
        wanted = required + tuple(k for k in optional if k in header)
        for raw in reader:
            row = {}
            for k in wanted:
                cell = (raw.get(k) or "").strip()
                where = f"{path}:{reader.line_num}"
                if not cell:
                    if k in optional:  # an unmeasured em: the row still counts for the law
                        continue
                    raise ConfigError(f"{where}: missing value for {k}")
                try:
                    row[k] = float(cell)
                except ValueError:
                    raise ConfigError(f"{where}: {k} is not a number: {cell!r}") from None
                if not math.isfinite(row[k]):
                    raise ConfigError(f"{where}: {k} must be finite, got {cell!r}")
                if k in ("rank", "length") and row[k] <= 0:
                    raise ConfigError(f"{where}: {k} must be > 0, got {cell}")
                if k == "em" and not 0.0 <= row[k] <= 1.0:
                    raise ConfigError(f"{where}: em must be a fraction in [0, 1], got {cell}")
            row.update({k: raw[k] for k in ("experiment", "config", "key") if raw.get(k)})
            rows.append(row)
    return rows


__all__ = ["law", "LawParams", "MemoryLaw", "held_out_mape", "Frontier", "fit_table", "unsaturated", "read_law_csv",
           "LOSSES"]
