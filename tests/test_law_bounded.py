"""The bounded law ΔL = L_base·(1 − exp(−C·r^α·ℓ^(−β))): it recovers planted parameters from whole grids,
ceiling included, its errors are calibrated, its inverse inverts, and degenerate grids warn."""

import json
import math
import warnings
from dataclasses import astuple

import numpy as np
import pytest

from memlaw.errors import ConfigError, FitWarning
from memlaw.law import BoundedLaw, BoundedParams, MemoryLaw, bounded_law, held_out_mape, law

TRUE = BoundedParams(C=40.0, alpha=0.8, beta=0.9)
RANKS = [1, 2, 4, 8, 16]
LENGTHS = [50, 100, 200, 400, 800]


def grid(ranks=RANKS, lengths=LENGTHS, seed=0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(r, length, L_base): every (rank, length), each cell with its own L_base in [3, 5) nats."""
    r, length = np.meshgrid(np.asarray(ranks, float), np.asarray(lengths, float), indexing="ij")
    l_base = np.random.default_rng(100 + seed).uniform(3.0, 5.0, r.size)
    return r.ravel(), length.ravel(), l_base


def planted(noise: str | None = None, seed: int = 0, level: float = 0.02) -> tuple[np.ndarray, ...]:
    """(r, length, ΔL, L_base); noise 'mult': ΔL·(1 + level·ε), 'add': ΔL + level·ε (nats)."""
    r, length, l_base = grid()
    y = bounded_law(r, length, l_base, *astuple(TRUE))
    eps = np.random.default_rng(seed).standard_normal(y.size)
    if noise == "mult":
        y = y * (1 + level * eps)
    elif noise == "add":
        y = y + level * eps
    return r, length, y, l_base


def quiet_fit(r, length, y, l_base, **kw) -> BoundedLaw:
    with warnings.catch_warnings():
        warnings.simplefilter("error", FitWarning)  # a well-posed fit must not warn
        return BoundedLaw(**kw).fit(r, length, y, l_base)


def test_the_planted_grid_reaches_the_ceiling():
    r, length, y, l_base = planted()
    share = y / l_base
    assert (share >= 0.95).sum() == 6 and share.min() < 0.1   # saturated cells and cells far from the ceiling


def test_formula_edges_and_the_paper_limit():
    assert bounded_law(4, 100, 3.0, *astuple(TRUE)) == pytest.approx(3.0 * (1 - math.exp(-40 * 4**0.8 * 100**-0.9)))
    assert bounded_law(1e12, 100, 3.0, *astuple(TRUE)) == pytest.approx(3.0)           # r → ∞: the ceiling
    assert bounded_law(4, 1e12, 3.0, *astuple(TRUE)) == pytest.approx(0.0, abs=1e-6)   # ℓ → ∞: nothing held
    r, length = np.array(RANKS, float)[:, None], np.array(LENGTHS, float)[None, :]
    out = bounded_law(r, length, 3.0, *astuple(TRUE))
    assert np.all(np.diff(out, axis=0) > 0) and np.all(np.diff(out, axis=1) < 0) and np.all(out < 3.0)
    # far from the ceiling it is the paper's law with b = 0 and scale L_base·C
    small = BoundedParams(C=1e-6, alpha=0.8, beta=0.9)
    np.testing.assert_allclose(bounded_law(r, length, 3.0, *astuple(small)),
                               law(r, length, 3.0 * small.C, small.alpha, small.beta, 0.0), rtol=1e-5)


@pytest.mark.parametrize("relative", [False, True])
def test_recovers_planted_parameters_noiseless(relative):
    m = quiet_fit(*planted(), relative=relative)
    assert m.params_.C == pytest.approx(TRUE.C, rel=1e-6)
    assert m.params_.alpha == pytest.approx(TRUE.alpha, abs=1e-6) and m.params_.beta == pytest.approx(TRUE.beta, abs=1e-6)
    assert m.r2_ == pytest.approx(1.0, abs=1e-10) and m.mape_ < 1e-6 and m.converged_
    assert m.n_ == 25 and m.k_ == 3 and m.saturated_ == 6
    assert all(0 <= se < 1e-6 for se in astuple(m.stderr_))


@pytest.mark.parametrize(("noise", "relative"), [("mult", True), ("add", False)])
@pytest.mark.parametrize("seed", range(5))
def test_recovers_planted_parameters_within_3_stderr(noise, relative, seed):
    r, length, y, l_base = planted(noise, seed)
    m = quiet_fit(r, length, y, l_base, relative=relative)
    for k in ("C", "alpha", "beta"):
        assert abs(getattr(m.params_, k) - getattr(TRUE, k)) < 3 * getattr(m.stderr_, k), k
    # least squares beats the truth on its own objective (weighted by 1/ΔL when relative)
    truth = bounded_law(r, length, l_base, *astuple(TRUE))
    w = 1 / y if relative else 1.0
    assert np.sum((m.residuals_ * w) ** 2) <= np.sum(((y - truth) * w) ** 2) * (1 + 1e-9)


@pytest.mark.parametrize(("noise", "relative"), [("mult", True), ("add", False)])
def test_stderr_is_calibrated(noise, relative):
    fits = [quiet_fit(*planted(noise, seed), relative=relative) for seed in range(40)]
    for k in ("C", "alpha", "beta"):
        hits = [abs(getattr(m.params_, k) - getattr(TRUE, k)) < 2 * getattr(m.stderr_, k) for m in fits]
        assert np.mean(hits) >= 0.8, k


def test_aic_and_bic_from_the_residuals():
    r, length, y, l_base = planted("add", 1)
    m = quiet_fit(r, length, y, l_base)
    rss, n = float(np.sum(m.residuals_**2)), y.size
    assert m.aic_ == pytest.approx(n * math.log(rss / n) + 2 * 3)
    assert m.bic_ == pytest.approx(n * math.log(rss / n) + 3 * math.log(n))
    paper = MemoryLaw(fix_b=True).fit(r, length, y)                   # same cells, same response, k = 3
    assert paper.aic_ == pytest.approx(n * math.log(float(np.sum(paper.residuals_**2)) / n) + 2 * 3)
    assert m.aic_ < paper.aic_                                        # the planted form explains the ceiling


def test_rank_for_inverts_predict():
    m = quiet_fit(*planted())
    for length in (50.0, 300.0, 3000.0):
        for l_base in (2.0, 4.0):
            for r in (0.5, 3.0, 48.0):
                target = float(m.predict(r, length, l_base))
                if target < l_base * (1 - 1e-9):                       # numerically below the ceiling
                    assert m.rank_for(target, length, l_base) == pytest.approx(r, rel=1e-6)


def test_rank_for_refuses_what_no_rank_reaches():
    m = quiet_fit(*planted())
    for target in (4.0, 5.0, 0.0, -0.1):
        with pytest.raises(ConfigError, match=r"unreachable.*\(0, L_base=4\)"):
            m.rank_for(target, 100, 4.0)
    with pytest.raises(ConfigError, match="L_base"):
        m.rank_for(1.0, 100)
    with pytest.raises(ConfigError, match="l_base"):
        m.predict(4, 100)
    m.params_ = BoundedParams(C=1.0, alpha=0.0, beta=0.9)             # a law blind to rank
    assert m.rank_for(1.0, 100, 4.0) == math.inf


def test_summary_is_json_ready():
    s = quiet_fit(*planted("mult"), relative=True).summary()
    assert set(s) == {"form", "params", "stderr", "r2", "mape", "aic", "bic", "n", "k", "converged", "relative",
                      "saturated"}
    assert s["form"] == "bounded" and set(s["params"]) == set(s["stderr"]) == {"C", "alpha", "beta"}
    assert json.loads(json.dumps(s, allow_nan=False)) == s


def test_held_out_on_planted_data():
    r, length, y, l_base = planted()
    by_rank = held_out_mape(r, length, y, form="bounded", l_base=l_base)
    assert by_rank["train_ranks"] == [1, 2, 4] and by_rank["test_ranks"] == [8, 16] and by_rank["form"] == "bounded"
    assert by_rank["mape"] < 1e-6 and by_rank["params"]["alpha"] == pytest.approx(TRUE.alpha, abs=1e-6)
    by_length = held_out_mape(r, length, y, split="length", form="bounded", l_base=l_base)
    assert by_length["train_lengths"] == [50, 100, 200] and by_length["mape"] < 1e-6
    with pytest.raises(ConfigError, match="L_base"):
        held_out_mape(r, length, y, form="bounded")


# ---------------------------------------------------------------- degenerate grids warn


def test_one_rank_warns_and_fixes_alpha():
    r, length, l_base = grid(ranks=[8])
    y = bounded_law(r, length, l_base, *astuple(TRUE))
    with pytest.warns(FitWarning, match="bounded-law fit: rank takes one value.*alpha is not identifiable"):
        m = BoundedLaw().fit(r, length, y, l_base)
    assert m.params_.alpha == 0.0 and m.params_.beta == pytest.approx(TRUE.beta, abs=1e-6)
    np.testing.assert_allclose(m.predict(r, length, l_base), y, rtol=1e-8)   # C absorbs 8^α
    assert math.isinf(m.stderr_.alpha) and m.rank_for(1.0, 100, 4.0) == math.inf


def test_a_grid_all_on_the_ceiling_warns():
    r, length, l_base = grid(lengths=[2, 3, 4, 5])                   # x ≥ 9: every cell above 99.98% of L_base
    y = bounded_law(r, length, l_base, *astuple(TRUE))
    assert np.all(y >= 0.95 * l_base)
    with pytest.warns(FitWarning, match="only 0 of 20 cells lie below 95% of L_base"):
        BoundedLaw().fit(r, length, y, l_base)


def test_collinear_grid_warns_singular():
    r = np.array(RANKS, float)
    length = 20.0 * r                                                   # rank and length move together
    with pytest.warns(FitWarning, match="singular or ill-conditioned"):
        m = BoundedLaw().fit(r, length, bounded_law(r, length, 4.0, *astuple(TRUE)), np.full(5, 4.0))
    assert all(math.isinf(se) for se in astuple(m.stderr_))


def test_few_points_and_no_convergence_warn():
    r, length, y, l_base = planted()
    with pytest.warns(FitWarning, match="n=3"):
        BoundedLaw().fit(r[[0, 12, 24]], length[[0, 12, 24]], y[[0, 12, 24]], l_base[[0, 12, 24]])
    with pytest.warns(FitWarning, match="did not converge"):
        m = BoundedLaw(max_nfev=1).fit(*planted("add"))
    assert not m.converged_ and m.summary()["converged"] is False


@pytest.mark.parametrize(("l_base", "kw", "match"), [
    (None, {}, "needs each cell's L_base"),
    ([4.0] * 4 + [0.0], {}, "l_base must be > 0, got 0 at index 4"),
    ([4.0] * 4 + [math.nan], {}, "l_base contains NaN"),
    ([4.0] * 5, {"loss": "cauchyy"}, "did you mean 'cauchy'"),
])
def test_bad_input_raises_config_error(l_base, kw, match):
    with pytest.raises(ConfigError, match=match):
        BoundedLaw(**kw).fit([1, 2, 4, 8, 16], [100] * 5, [0.5, 1, 1.5, 2, 2.5], l_base)
