"""One experiment's table: both forms on the same cells, held out by rank and by length, counts, exclusions,
the spread across seeds, and the CSV's l_base column."""

import json
import math
import re
import warnings
from dataclasses import astuple

import numpy as np
import pytest

from memlaw.errors import ConfigError
from memlaw.law import BoundedParams, bounded_law, fit_table, read_law_csv, seed_spread

TRUE = BoundedParams(C=40.0, alpha=0.8, beta=0.9)


def saturated_rows(seeds=(0, 1), noise=0.05, ranks=(1, 2, 4, 8, 16), lengths=(50, 100, 200, 400, 800)) -> list[dict]:
    """A grid on the bounded law, L_base per cell; seeds differ in L_base and in the capacity term x·(1 + noise·ε)."""
    rng = np.random.default_rng(7)
    rows = []
    for seed in seeds:
        for r in ranks:
            for length in lengths:
                l_base = rng.uniform(3.5, 4.5)
                x = TRUE.C * r**TRUE.alpha * length**-TRUE.beta * (1 + noise * rng.standard_normal())
                dl = l_base * -math.expm1(-x)
                rows.append({"rank": r, "length": length, "seed": seed, "delta_loss": dl, "L_base": l_base,
                             "L_final": l_base - dl, "em": 1.0 if dl >= 0.95 * l_base else 0.0})
    return rows


def quiet(**kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                 # the paper's form drifts on this grid and says so
        return fit_table(saturated_rows(), **kw)


def test_both_forms_on_the_same_cells_and_the_bounded_one_predicts_better():
    out = quiet(law="both")
    paper, bounded = out["forms"]["paper"], out["forms"]["bounded"]
    assert paper["law"]["n"] == bounded["law"]["n"] == out["cells"]["n"] == 50
    for split in ("rank", "length"):
        assert paper["held_out"][split]["test_ranks"] == bounded["held_out"][split]["test_ranks"]
        assert paper["held_out"][split]["test_lengths"] == bounded["held_out"][split]["test_lengths"]
    assert bounded["held_out"]["rank"]["test_ranks"] == [8, 16] and bounded["held_out"]["length"]["test_lengths"] == [400, 800]
    for form in (paper, bounded):
        scores = [form["held_out"][s]["mape"] for s in ("rank", "length")]
        assert form["held_out_mape"] == pytest.approx(np.mean(scores))
    assert out["best"] == "bounded" and bounded["held_out_mape"] < paper["held_out_mape"]
    assert out["law"] == paper["law"] and out["held_out"] == paper["held_out"]["rank"]   # the paper's form first
    assert bounded["law"]["bic"] < paper["law"]["bic"]
    assert out["cells"]["seeds"] == [0, 1] and out["cells"]["ranks"] == [1, 2, 4, 8, 16]
    assert out["cells"]["saturated"] == sum(r["delta_loss"] >= 0.95 * r["L_base"] for r in saturated_rows())
    assert out["excluded"] == [] and out["frontier"] is not None
    json.dumps(out, allow_nan=False)


def test_one_form_asked_is_the_only_form_fitted():
    out = quiet(law="bounded")
    assert list(out["forms"]) == ["bounded"] and out["law"]["form"] == "bounded" and out["best"] == "bounded"
    with pytest.raises(ConfigError, match="law form must be one of paper, bounded, got 'bonded' .did you mean 'bounded'"):
        quiet(law="bonded")


def test_cells_without_l_base_are_left_out_of_every_form_and_listed():
    rows = saturated_rows()
    for row in rows[:3]:
        del row["L_base"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = fit_table(rows, law="both")
    assert out["forms"]["paper"]["law"]["n"] == out["forms"]["bounded"]["law"]["n"] == 47
    assert [(e["rank"], e["length"], e["seed"]) for e in out["excluded"]] == [(1, 50, 0), (1, 100, 0), (1, 200, 0)]
    assert all(e["reason"].startswith("no L_base") for e in out["excluded"])
    bare = [{k: v for k, v in row.items() if k != "L_base"} for row in rows]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = fit_table(bare, law="both")               # no cell has one: the paper's form alone, and a note
    assert list(out["forms"]) == ["paper"] and any(n.startswith("bounded: no cell has an L_base") for n in out["notes"])
    with pytest.raises(ConfigError, match="bounded law needs each cell's L_base: a CSV column l_base"):
        fit_table(bare, law="bounded")


def test_saturated_below_leaves_the_same_cells_out_of_both_forms():
    out = quiet(law="both", saturated_below=0.3)
    rows = saturated_rows()
    left_out = [r for r in rows if r["L_final"] < 0.3]
    assert len(out["excluded"]) == len(left_out) > 0
    assert out["forms"]["paper"]["law"]["n"] == out["forms"]["bounded"]["law"]["n"] == len(rows) - len(left_out)
    assert all(re.match(r"saturated: L_final \S+ < 0.3", e["reason"]) for e in out["excluded"])


def test_seed_spread_matches_numpy():
    rows = saturated_rows(seeds=(0, 1, 2))
    s = seed_spread(rows)
    cells = {}
    for r in rows:
        cells.setdefault((r["rank"], r["length"]), []).append(r["delta_loss"])
    sd = {k: np.std(v, ddof=1) for k, v in cells.items()}
    assert s["pairs"] == 25 and s["cells"] == 75
    assert s["sd_median"] == pytest.approx(np.median(list(sd.values())))
    assert s["sd_max"] == pytest.approx(max(sd.values())) and tuple(s["sd_max_at"]) == max(sd, key=sd.get)
    assert s["rel_sd_median"] == pytest.approx(np.median([sd[k] / np.mean(v) * 100 for k, v in cells.items()]))
    errors = [abs(y - np.mean(v)) / y * 100 for v in cells.values() for y in v]
    assert s["replicate_mape"] == pytest.approx(np.mean(errors))
    y = np.array([r["delta_loss"] for r in rows])
    means = np.array([np.mean(cells[(r["rank"], r["length"])]) for r in rows])
    assert s["r2_means"] == pytest.approx(1 - np.sum((y - means) ** 2) / np.sum((y - y.mean()) ** 2))
    assert seed_spread(saturated_rows(seeds=(0,))) is None


def test_read_law_csv_takes_l_base_and_seed(tmp_path):
    path = tmp_path / "law.csv"
    path.write_text("rank,length,delta_loss,l_base,seed\n1,50,2.5,4.0,0\n2,50,3.0,4.1,\n")
    assert read_law_csv(path) == [{"rank": 1.0, "length": 50.0, "delta_loss": 2.5, "L_base": 4.0, "seed": 0.0},
                                  {"rank": 2.0, "length": 50.0, "delta_loss": 3.0, "L_base": 4.1}]
    (tmp_path / "export.csv").write_text("rank,length,delta_loss,L_base\n1,50,2.5,4.0\n")   # as runs export writes it
    assert read_law_csv(tmp_path / "export.csv")[0]["L_base"] == 4.0


def test_the_planted_truth_bounds_what_the_fit_may_report():
    """Fitted R² is at least the planted law's R² on the same noisy cells (least squares), never above 1."""
    rows = saturated_rows()
    out = quiet(law="bounded")
    y = np.array([r["delta_loss"] for r in rows])
    truth = bounded_law([r["rank"] for r in rows], [r["length"] for r in rows], [r["L_base"] for r in rows],
                        *astuple(TRUE))
    r2_truth = 1 - np.sum((y - truth) ** 2) / np.sum((y - y.mean()) ** 2)
    assert r2_truth <= out["law"]["r2"] <= 1.0
