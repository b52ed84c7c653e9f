"""Planning from law rows, without a model: group checks, frontier vs law, extrapolation flags."""

import pytest

from memlaw.errors import ConfigError
from memlaw.law import law
from memlaw.plan import law_rows, plan


def rows(ranks=(1, 2, 4, 8), lengths=(20, 40, 60, 80), full=lambda r, length: length <= 10 * r):
    return [{"rank": r, "length": length, "delta_loss": float(law(r, length, 3.0, 0.5, 0.2, 0.1)),
             "em": 1.0 if full(r, length) else 0.3, "L_final": 0.1 if full(r, length) else 1.0}
            for r in ranks for length in lengths]


def test_law_rows_refuse_mixed_groups_and_empty_input():
    base = {"status": "done", "model": "m", "kind": "probe", "objective": "sft", "benchmark": "phonebook",
            "rank": 1, "length": 10, "delta_loss": 1.0, "em_rate": 1.0, "L_final": 0.1}
    assert law_rows([base]) == [{"rank": 1, "length": 10, "delta_loss": 1.0, "em": 1.0, "L_final": 0.1}]
    with pytest.raises(ConfigError, match="mix 2 groups.*--where"):
        law_rows([base, {**base, "objective": "memft-ot"}])
    with pytest.raises(ConfigError, match="no finished cells"):
        law_rows([{**base, "delta_loss": None}])


def test_frontier_gives_the_rank_and_the_law_the_margin():
    p = plan(50, rows(), L_base=2.0)
    assert p.rank_source == "frontier" and p.rank == 5 and p.frontier_rank == pytest.approx(5.0)
    assert p.measured_rank == 8 and p.extrapolating == []
    assert p.predicted_delta_loss == pytest.approx(float(law(5, 50, 3.0, 0.5, 0.2, 0.1)), rel=1e-4)
    assert p.needed_delta_loss == pytest.approx(1.9) and p.margin == pytest.approx(p.predicted_delta_loss - 1.9)
    assert p.capacity_margin == pytest.approx(0.0, abs=1e-6)
    assert p.law_rank == pytest.approx(((1.9 - 0.1) / (3.0 * 50**-0.2)) ** 2, rel=1e-3)


def test_without_a_frontier_the_law_answers():
    p = plan(50, rows(full=lambda r, length: False), L_base=2.0)
    assert p.rank_source == "law" and p.frontier is None and any("no frontier" in n for n in p.notes)
    assert p.rank == int(-(-p.law_rank // 1))


def test_extrapolation_is_flagged_for_length_and_rank():
    p = plan(400, rows(), L_base=2.0)
    assert p.rank == 40
    assert any("outside the fitted lengths" in e for e in p.extrapolating)
    assert any("rank 40 is outside the fitted ranks" in e for e in p.extrapolating)
    assert p.measured_rank is None
