"""Tests for memlaw.law: the law recovers planted parameters, its errors are calibrated, its inverses invert."""

import json
import math
import re
import warnings
from dataclasses import astuple

import numpy as np
import pytest

from memlaw.errors import ConfigError, FitWarning, NotFittedError
from memlaw.law import Frontier, LawParams, MemoryLaw, fit_table, held_out_mape, law, read_law_csv

TRUE = LawParams(C=2.0, alpha=0.6, beta=0.4, b=0.1)
RANKS = [1, 2, 4, 8, 16, 32, 64]  # the paper's PhoneBook ranks
LENGTHS = [1000, 2000, 4000, 6000, 8000, 12000, 16000, 32000]


def grid(ranks=RANKS, lengths=LENGTHS) -> tuple[np.ndarray, np.ndarray]:
    r, length = np.meshgrid(np.asarray(ranks, float), np.asarray(lengths, float), indexing="ij")
    return r.ravel(), length.ravel()


def planted(noise: str | None = None, seed: int = 0, level: float = 0.01) -> tuple[np.ndarray, ...]:
    """(r, length, ΔL) on the 7 × 8 grid; noise 'mult': ΔL·(1 + level·ε), 'add': ΔL + level/2·ε."""
    r, length = grid()
    y = law(r, length, *astuple(TRUE))
    eps = np.random.default_rng(seed).standard_normal(y.size)
    if noise == "mult":
        y = y * (1 + level * eps)
    elif noise == "add":
        y = y + level / 2 * eps
    return r, length, y


def quiet_fit(*args, **kw) -> MemoryLaw:
    with warnings.catch_warnings():
        warnings.simplefilter("error", FitWarning)  # a well-posed fit must not warn
        return MemoryLaw(**kw).fit(*args)


# ---------------------------------------------------------------- law and MemoryLaw.fit


def test_law_matches_formula_and_broadcasts():
    assert law(4, 1000, *astuple(TRUE)) == pytest.approx(2.0 * 4**0.6 * 1000**-0.4 + 0.1)
    out = law(np.array(RANKS)[:, None], np.array(LENGTHS)[None, :], *astuple(TRUE))
    assert out.shape == (7, 8)
    assert np.all(np.diff(out, axis=0) > 0) and np.all(np.diff(out, axis=1) < 0)  # up in r, down in ℓ


@pytest.mark.parametrize("relative", [False, True])
def test_recovers_planted_parameters_noiseless(relative):
    m = quiet_fit(*planted(), relative=relative)
    assert m.params_.C == pytest.approx(TRUE.C, rel=1e-6)
    for k in ("alpha", "beta", "b"):
        assert getattr(m.params_, k) == pytest.approx(getattr(TRUE, k), abs=1e-6)
    assert m.r2_ == pytest.approx(1.0, abs=1e-10)
    assert m.mape_ < 1e-6
    assert m.n_ == 56 and m.converged_ and np.abs(m.residuals_).max() < 1e-9
    assert all(0 <= se < 1e-6 for se in astuple(m.stderr_))


@pytest.mark.parametrize(("noise", "relative"), [("mult", True), ("add", False)])
@pytest.mark.parametrize("seed", range(5))
def test_recovers_planted_parameters_within_3_stderr(noise, relative, seed):
    m = quiet_fit(*planted(noise, seed), relative=relative)
    for k in ("C", "alpha", "beta", "b"):
        assert abs(getattr(m.params_, k) - getattr(TRUE, k)) < 3 * getattr(m.stderr_, k), k
    assert m.r2_ > 0.999 and m.mape_ < 2.0


@pytest.mark.parametrize(("noise", "relative"), [("mult", True), ("add", False)])
def test_stderr_is_calibrated(noise, relative):
    # Each weighting matches its noise model; then ±2 se covers the truth ~95% of the time.
    fits = [quiet_fit(*planted(noise, seed), relative=relative) for seed in range(50)]
    for k in ("C", "alpha", "beta", "b"):
        hits = [abs(getattr(m.params_, k) - getattr(TRUE, k)) < 2 * getattr(m.stderr_, k) for m in fits]
        assert np.mean(hits) >= 0.8, k


def test_unweighted_fit_is_overconfident_under_multiplicative_noise():
    # Pins the `relative` docstring: unweighted se are too small when noise scales with ΔL.
    fits = [quiet_fit(*planted("mult", seed)) for seed in range(50)]
    spread = np.std([m.params_.beta for m in fits])
    assert np.mean([m.stderr_.beta for m in fits]) < 0.7 * spread


def test_start_without_positive_points_still_fits():
    r, length, y = planted()
    m = quiet_fit(r, length, y - 1.0)  # every ΔL < 0: no log-linear start, fall back to the default
    assert m.params_.alpha == pytest.approx(TRUE.alpha, abs=1e-6)
    assert m.params_.b == pytest.approx(TRUE.b - 1.0, abs=1e-6)


def test_robust_loss_runs():
    r, length, y = planted("mult", 0)
    y[5] *= 3  # one outlier
    m = quiet_fit(r, length, y, loss="soft_l1")
    assert m.params_.alpha == pytest.approx(TRUE.alpha, abs=0.05)


# ---------------------------------------------------------------- warnings and errors


def test_not_fitted_raises():
    m = MemoryLaw()
    for call in (lambda: m.predict(4, 1000), lambda: m.rank_for(0.3, 1000), m.summary):
        with pytest.raises(NotFittedError, match="not fitted"):
            call()
    with pytest.raises(AttributeError):  # NotFittedError is also an AttributeError
        Frontier().max_length(4)


def test_one_rank_grid_warns_and_fixes_alpha():
    r, length = grid(ranks=[8])
    y = law(r, length, *astuple(TRUE))
    with pytest.warns(FitWarning, match="rank takes one value.*alpha is not identifiable"):
        m = MemoryLaw().fit(r, length, y)
    assert m.params_.alpha == 0.0 and m.params_.beta == pytest.approx(TRUE.beta, abs=1e-6)
    np.testing.assert_allclose(m.predict(r, length), y, rtol=1e-9)  # C absorbs 8^α
    assert math.isinf(m.stderr_.alpha) and m.summary()["stderr"]["alpha"] is None
    assert m.rank_for(0.3, 1000) == math.inf  # a law fitted on one rank cannot size an adapter
    json.dumps(m.summary(), allow_nan=False)


def test_one_length_grid_fixes_beta():
    r, length = grid(lengths=[4000])
    with pytest.warns(FitWarning, match="beta is not identifiable"):
        m = MemoryLaw().fit(r, length, law(r, length, *astuple(TRUE)))
    assert m.params_.beta == 0.0 and m.params_.alpha == pytest.approx(TRUE.alpha, abs=1e-6)


def test_collinear_grid_warns_singular():
    r = np.array(RANKS, float)  # rank and length move together: α and β are confounded
    length = 1000.0 * r
    with pytest.warns(FitWarning, match="singular or ill-conditioned"):
        m = MemoryLaw().fit(r, length, law(r, length, *astuple(TRUE)))
    assert all(math.isinf(se) for se in astuple(m.stderr_))


def test_few_points_warn():
    r, length, y = planted()
    with pytest.warns(FitWarning, match="n=4"):
        m = MemoryLaw().fit(r[[0, 9, 30, 55]], length[[0, 9, 30, 55]], y[[0, 9, 30, 55]])
    assert all(math.isinf(se) for se in astuple(m.stderr_))


def test_no_convergence_warns():
    with pytest.warns(FitWarning, match="did not converge"):
        m = MemoryLaw(max_nfev=1).fit(*planted("mult"))
    assert not m.converged_ and m.summary()["converged"] is False


@pytest.mark.parametrize(
    ("args", "kw", "match"),
    [
        (([0, 1, 2, 4, 8], [1e3] * 5, [0.1] * 5), {}, "rank must be > 0, got 0 at index 0"),
        (([1, 2, 4, 8, 16], [1e3, 2e3, -1, 4e3, 5e3], [0.1] * 5), {}, "length must be > 0"),
        (([1, 2, 4, 8, 16], [1e3] * 5, [0.1, np.nan, 0.2, 0.3, 0.4]), {}, "delta_loss contains NaN"),
        (([1, 2, 4], [1e3] * 3, [0.1] * 2), {}, "same length.*delta_loss=2"),
        (([], [], []), {}, "empty"),
        (([1, 2], [1e3] * 2, ["a", "b"]), {}, "numeric"),
        (([1, 2, 4, 8, 16], [1e3] * 5, [0.1] * 5), {"loss": "huberr"}, "did you mean 'huber'"),
        (([1, 2, 4, 8, 16], [1e3] * 5, [0.1] * 5), {"max_nfev": 0}, "max_nfev"),
        (([1, 2, 4, 8, 16], [1e3] * 5, [0.1, 0, 0.2, 0.3, 0.4]), {"relative": True}, "!= 0.*index 1"),
    ],
)
def test_bad_input_raises_config_error(args, kw, match):
    with pytest.raises(ConfigError, match=match):
        MemoryLaw(**kw).fit(*args)


def test_predict_rejects_bad_ranks():
    m = quiet_fit(*planted())
    with pytest.raises(ConfigError, match="rank must be > 0"):
        m.predict([4, -1], 1000)


# ---------------------------------------------------------------- predict, inverse, summary


def test_rank_for_inverts_predict():
    m = quiet_fit(*planted())
    for length in (1000.0, 5000.0, 32000.0):
        for r in (1.0, 3.0, 48.0, 500.0):
            target = float(m.predict(r, length))
            assert m.rank_for(target, length) == pytest.approx(r, rel=1e-9)
            assert float(m.predict(m.rank_for(target, length), length)) == pytest.approx(target, rel=1e-12)


def test_rank_for_unreachable():
    m = quiet_fit(*planted())
    with pytest.raises(ConfigError, match="unreachable.*asymptote b="):
        m.rank_for(0.05, 1000)  # below b = 0.1, while ΔL grows with rank
    with pytest.raises(ConfigError, match="finite"):
        m.rank_for(math.nan, 1000)
    with pytest.raises(ConfigError, match="length must be > 0"):
        m.rank_for(0.5, 0)
    m.params_ = LawParams(C=1.0, alpha=0.0, beta=0.4, b=0.1)  # a law blind to rank
    assert m.rank_for(0.5, 1000) == math.inf


def test_summary_is_json_ready():
    s = quiet_fit(*planted("mult"), relative=True).summary()
    assert set(s) == {"form", "params", "stderr", "r2", "mape", "aic", "bic", "n", "k", "converged", "relative", "fix_b"}
    assert set(s["params"]) == set(s["stderr"]) == {"C", "alpha", "beta", "b"}
    assert json.loads(json.dumps(s, allow_nan=False)) == s


def test_mape_skips_zero_targets():
    r, length, y = planted()
    y[0] = 0.0  # breaks the law at one point; MAPE must stay finite
    m = MemoryLaw().fit(r, length, y)
    assert math.isfinite(m.mape_) and m.n_ == 56


# ---------------------------------------------------------------- held-out extrapolation


def test_held_out_by_rank_on_planted_data():
    out = held_out_mape(*planted())
    assert out["train_ranks"] == [1, 2, 4, 8] and out["test_ranks"] == [16, 32, 64]
    assert out["train_lengths"] == out["test_lengths"] == LENGTHS
    assert (out["n_train"], out["n_test"]) == (32, 24)
    assert out["mape"] < 1e-6 and out["r2"] == pytest.approx(1.0)
    assert out["params"]["alpha"] == pytest.approx(TRUE.alpha, abs=1e-6)
    json.dumps(out, allow_nan=False)


def test_held_out_by_length_on_noisy_data():
    out = held_out_mape(*planted("mult", 3), split="length", relative=True)
    assert out["train_lengths"] == LENGTHS[:4] and out["test_lengths"] == LENGTHS[4:]
    assert out["mape"] < 3.0 and out["r2"] > 0.99


def test_held_out_rejects_bad_split():
    with pytest.raises(ConfigError, match="split must be"):
        held_out_mape(*planted(), split="seed")
    r, length = grid(ranks=[4])
    with pytest.raises(ConfigError, match=">= 2 distinct ranks"):
        held_out_mape(r, length, law(r, length, *astuple(TRUE)))


# ---------------------------------------------------------------- capacity frontier


K, GAMMA = 900.0, 0.7


def em_table(lengths_for_rank) -> tuple[list, list, list]:
    """EM = 1 up to the planted frontier K·r^γ, then falling off; lengths chosen per rank."""
    r, length, em = [], [], []
    for rank in RANKS:
        frontier = K * rank**GAMMA
        for n in lengths_for_rank(rank):
            r.append(rank)
            length.append(n)
            em.append(1.0 if n <= frontier * (1 + 1e-12) else min(0.99, frontier / n))
    return r, length, em


def test_frontier_recovers_planted_power_law():
    base = [500.0 * 2**k for k in range(8)]  # 500 .. 64000
    # Rank 1 gets no grid point at or under its frontier (900): it must be reported, not fitted.
    r, length, em = em_table(lambda rank: base[1:] + ([K * rank**GAMMA] if rank > 1 else []))
    f = Frontier().fit(r, length, em)
    assert f.gamma_ == pytest.approx(GAMMA, abs=1e-9) and f.K_ == pytest.approx(K, rel=1e-9)
    assert f.missing_ranks_ == [1.0] and [p[0] for p in f.points_] == RANKS[1:]
    assert f.r2_ == pytest.approx(1.0) and f.gamma_stderr_ < 1e-9
    assert f.max_length(8) == pytest.approx(K * 8**GAMMA)
    for length_ in (2000.0, 10000.0, 50000.0):
        assert f.max_length(f.rank_for(length_)) == pytest.approx(length_)
    json.dumps(f.summary(), allow_nan=False)


def test_frontier_on_a_geometric_grid_is_close():
    fine = [1000.0 * 1.1**k for k in range(60)]  # the frontier is only known to within 10%
    f = Frontier().fit(*em_table(lambda rank: fine))
    assert f.gamma_ == pytest.approx(GAMMA, abs=0.03)
    assert abs(f.gamma_ - GAMMA) < 4 * f.gamma_stderr_ + 1e-3


def test_frontier_degenerate():
    with pytest.raises(ConfigError, match=">= 2 ranks"):
        Frontier().fit([1, 2], [1000, 1000], [1.0, 0.5])
    with pytest.warns(FitWarning, match="2 points"):
        f = Frontier().fit([1, 2], [1000, 2000], [1.0, 1.0])
    assert f.gamma_ == pytest.approx(1.0) and f.summary()["gamma_stderr"] is None
    with pytest.raises(ConfigError, match="threshold"):
        Frontier(threshold=0).fit([1, 2], [1000, 2000], [1.0, 1.0])
    assert Frontier(threshold=0.9).fit([1, 2, 4], [1e3, 2e3, 4e3], [0.95, 0.95, 0.95]).gamma_ == pytest.approx(1.0)


# ---------------------------------------------------------------- tables and CSV


def rows_from(r, length, y, em=None) -> list[dict]:
    rows = [{"rank": a, "length": b, "delta_loss": c} for a, b, c in zip(r, length, y)]
    for row, e in zip(rows, em or []):
        row["em"] = e
    return rows


def test_fit_table_with_and_without_em():
    r, length, y = planted("mult", 1)
    em = [1.0 if n <= K * rank**GAMMA else 0.5 for rank, n in zip(r, length)]
    out = fit_table(rows_from(r, length, y, em))
    assert out["law"]["params"]["alpha"] == pytest.approx(TRUE.alpha, abs=0.05)
    assert out["held_out"]["mape"] < 5 and out["frontier"]["gamma"] > 0
    json.dumps(out, allow_nan=False)
    out = fit_table(rows_from(r, length, y))
    assert out["frontier"] is None and out["notes"] == ["frontier: no em column"]
    with pytest.raises(ConfigError, match="row 0: missing key"):
        fit_table([{"rank": 1, "length": 2}])
    bad = rows_from(r, length, y, em)
    bad[3]["em"] = math.nan
    with pytest.raises(ConfigError, match="em contains NaN"):  # bad data raise, not a note
        fit_table(bad)


def test_fit_table_notes_what_it_cannot_fit():
    r, length = grid(ranks=[4])
    y = law(r, length, *astuple(TRUE))
    with pytest.warns(FitWarning):
        out = fit_table(rows_from(r, length, y, [0.5] * len(r)))
    assert out["held_out"] is None and out["frontier"] is None
    assert out["notes"][0].startswith("held_out:") and "frontier needs >= 2 ranks" in out["notes"][1]


def test_read_law_csv_good(tmp_path):
    path = tmp_path / "law.csv"
    path.write_text(" rank, length ,delta_loss,em,note\n1,1000,0.25,1.0,a\n\n4,2000,0.5,,b\n")
    rows = read_law_csv(path)
    assert rows == [{"rank": 1.0, "length": 1000.0, "delta_loss": 0.25, "em": 1.0},
                    {"rank": 4.0, "length": 2000.0, "delta_loss": 0.5}]
    (tmp_path / "no_em.csv").write_text("rank,length,delta_loss\n2,100,-0.1\n")
    assert read_law_csv(tmp_path / "no_em.csv") == [{"rank": 2.0, "length": 100.0, "delta_loss": -0.1}]


@pytest.mark.parametrize(
    ("text", "line", "match"),
    [
        ("", 1, "empty file"),
        ("rank,length\n1,100\n", 1, "missing column.*delta_loss"),
        ("rank,length,delta_loss\n1,100,0.1\n2,100,abc\n", 3, "delta_loss is not a number: 'abc'"),
        ("rank,length,delta_loss\n0,100,0.1\n", 2, "rank must be > 0"),
        ("rank,length,delta_loss\n1,-5,0.1\n", 2, "length must be > 0"),
        ("rank,length,delta_loss\n1,100,nan\n", 2, "delta_loss must be finite"),
        ("rank,length,delta_loss\n1,100\n", 2, "missing value for delta_loss"),
        ("rank,length,delta_loss,em\n1,100,0.1,1\n\n2,100,0.1,95\n", 4, "em must be a fraction"),
        ("rank,length,delta_loss,l_base\n1,50,2.5,0\n", 2, "l_base must be > 0"),
        ("rank,length,delta_loss,l_base\n1,50,2.5,x\n", 2, "l_base is not a number"),
        ("rank,length,delta_loss,l_base,L_base\n1,50,2.5,4,4\n", 1, "both l_base and L_base"),
    ],
)
def test_read_law_csv_bad(tmp_path, text, line, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}:{line}: .*{match}"):
        read_law_csv(path)


def test_fix_b_recovers_pure_power_law_and_tames_log_linear_data():
    import warnings

    r, length = np.meshgrid([1.0, 2, 4, 8], [20.0, 40, 80, 160])
    r, length = r.ravel(), length.ravel()
    planted = 3.0 * r**0.2 * length ** (-0.15)
    fit = MemoryLaw(fix_b=True).fit(r, length, planted)
    assert fit.params_.b == 0.0 and fit.stderr_.b == 0.0
    np.testing.assert_allclose([fit.params_.C, fit.params_.alpha, fit.params_.beta], [3.0, 0.2, 0.15], rtol=1e-6)
    # log-linear data: the free fit runs off (C -> inf, b -> -inf); with b fixed it converges
    y = 3.0 + 0.1 * np.log(r) - 0.2 * np.log(length)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fixed = MemoryLaw(fix_b=True).fit(r, length, y)
    assert fixed.converged_ and np.isfinite(fixed.stderr_.alpha) and fixed.params_.C < 100


def test_saturated_cells_left_out_of_the_law_only():
    rows = [{"rank": rk, "length": ln, "delta_loss": 2.0 * rk**0.3 * ln**-0.2, "em": 1.0 if ln <= 20 * rk else 0.5,
             "L_final": 0.01 if ln <= 20 * rk else 1.0} for rk in (1, 2, 4, 8) for ln in (20, 40, 80, 160, 320)]
    out = fit_table(rows, saturated_below=0.1, fix_b=True)
    assert out["law"]["n"] == sum(r["L_final"] >= 0.1 for r in rows)
    assert out["frontier"] is not None and len(out["frontier"]["points"]) == 4
    assert any("saturated" in n for n in out["notes"])
