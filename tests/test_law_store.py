"""A store holding a saturated grid planted on the bounded law (L_base from each cell): `memlaw fit` compares
the two forms on it, against the planted truth, and `memlaw plan` uses the one that predicts held-out cells."""

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from memlaw.cli import app
from memlaw.law import bounded_law
from memlaw.records import write_records
from memlaw.store import open_store
from memlaw.sweep import sweep_from_dict
from memlaw.sweep.cell import CellResult

C, ALPHA, BETA = 40.0, 0.8, 0.9
NOISE = 0.05
"""Seed-to-seed noise in the capacity term: x·(1 + NOISE·ε); ΔL stays in (0, L_base)."""
GRID = {"name": "saturated", "model": "tiny", "dtype": "float32", "ranks": [1, 2, 4, 8, 16],
        "lengths": [50, 100, 200, 400, 800], "seeds": [0, 1], "adapter": {"layer": 1},
        "prompt": {"template": "plain"}, "train": {"lr": 0.03, "batch_size": 8, "max_steps": 10}}


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def saturated(tmp_path_factory):
    """(store path, planted rows): 50 done cells and one failed cell of the same experiment."""
    path = tmp_path_factory.mktemp("law") / "runs.db"
    rng = np.random.default_rng(3)
    planted = []
    with open_store(path) as db:
        for c in sweep_from_dict(GRID).cells():
            l_base = float(rng.uniform(3.5, 4.5))
            x = C * c.rank**ALPHA * c.length**-BETA * (1 + NOISE * rng.standard_normal())
            dl = l_base * -math.expm1(-x)
            planted.append({"rank": c.rank, "length": c.length, "seed": c.seed, "L_base": l_base, "delta_loss": dl})
            db.add_cell(CellResult(c.key, c, "done", {"length": c.length, "delta_loss": dl, "L_base": l_base,
                                                      "L_final": l_base - dl,
                                                      "em_rate": 1.0 if dl >= 0.95 * l_base else 0.0}),
                        sweep="saturated")
        [extra] = sweep_from_dict({**GRID, "ranks": [32], "lengths": [50], "seeds": [0]}).cells()
        db.add_cell(CellResult(extra.key, extra, "failed", error="planted failure"), sweep="saturated")
    return path, planted


def truth(rows, split=None):
    """The planted law's R² on every cell, or its MAPE on the cells a held-out split predicts."""
    y = np.array([r["delta_loss"] for r in rows])
    pred = bounded_law([r["rank"] for r in rows], [r["length"] for r in rows], [r["L_base"] for r in rows],
                       C, ALPHA, BETA)
    if split is None:
        return 1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2)
    key = np.array([r[split] for r in rows], float)
    test = key > np.unique(key)[(np.unique(key).size + 1) // 2 - 1]
    return float(np.mean(np.abs(pred[test] - y[test]) / y[test]) * 100)


def test_the_bounded_form_fits_the_whole_saturated_grid_and_the_paper_form_does_worse(saturated):
    path, planted = saturated
    res = invoke("fit", "--store", path, "--json")
    assert res.exit_code == 0, res.output
    [fit] = json.loads(res.stdout)["fits"]
    saturated_cells = sum(r["delta_loss"] >= 0.95 * r["L_base"] for r in planted)
    assert fit["cells"]["n"] == 50 and fit["cells"]["seeds"] == [0, 1] and fit["cells"]["saturated"] == saturated_cells
    assert saturated_cells >= 10                                          # the grid does sit on the ceiling
    paper, bounded = fit["forms"]["paper"], fit["forms"]["bounded"]
    assert paper["law"]["n"] == bounded["law"]["n"] == 50                 # the same cells, saturated ones included
    # least squares reaches at least the planted law's R² on the same cells; the target is 0.98
    assert bounded["law"]["r2"] >= truth(planted) - 1e-9 and bounded["law"]["r2"] >= 0.98
    for split in ("rank", "length"):
        noise_floor = truth(planted, split)                               # the planted law itself on those cells
        assert bounded["held_out"][split]["mape"] <= min(10.0, 2 * noise_floor), split
        assert paper["held_out"][split]["mape"] > 2 * noise_floor, split  # the unbounded form overshoots
    assert paper["law"]["r2"] < bounded["law"]["r2"] and paper["held_out_mape"] > bounded["held_out_mape"]
    assert fit["best"] == "bounded" and bounded["law"]["aic"] < paper["law"]["aic"]
    p = bounded["law"]["params"]
    assert abs(p["alpha"] - ALPHA) < 3 * bounded["law"]["stderr"]["alpha"]
    assert abs(p["beta"] - BETA) < 3 * bounded["law"]["stderr"]["beta"]
    assert fit["seed_spread"]["pairs"] == 25
    [failed] = fit["excluded"]
    assert (failed["rank"], failed["length"], failed["reason"]) == (32, 50, f"failed (its error: memlaw runs show "
                                                                          f"{failed['key']})")

    text = invoke("fit", "--store", path).stdout
    assert "bounded (best)" in text and "held-out MAPE by rank" in text and "held-out MAPE by length" in text
    assert ("held out: by rank, fit on 1,2,4 and predict 8,16; by length, fit on 50,100,200 and predict 400,800; "
            "best: bounded") in text
    assert "spread across seeds: 25 (rank, length)" in text and "excluded 1 cell: r=32 ℓ=50 seed 0: failed" in text
    assert "planted failure" not in text                                  # a failed cell's error may quote a record


def test_an_exported_csv_gives_the_same_fit(saturated, tmp_path):
    path, _ = saturated
    assert invoke("runs", "export", "--out", tmp_path / "runs.csv", "--store", path).exit_code == 0
    [from_store] = json.loads(invoke("fit", "--store", path, "--law", "bounded", "--json").stdout)["fits"]
    res = invoke("fit", "--csv", tmp_path / "runs.csv", "--law", "bounded", "--json")
    assert res.exit_code == 0, res.output
    [from_csv] = json.loads(res.stdout)["fits"]
    assert list(from_csv["forms"]) == ["bounded"] and from_csv["law"]["form"] == "bounded"
    for k in ("C", "alpha", "beta"):
        assert from_csv["law"]["params"][k] == pytest.approx(from_store["law"]["params"][k], rel=1e-9)
    bare = tmp_path / "bare.csv"
    bare.write_text("rank,length,delta_loss\n1,50,1.0\n2,50,2.0\n4,50,3.0\n")
    res = invoke("fit", "--csv", bare, "--law", "bounded")
    assert res.exit_code == 2 and "needs each cell's L_base: a CSV column l_base" in res.stderr


def test_plan_uses_the_form_with_the_lower_held_out_error_and_says_so(saturated, tmp_path, tiny_records):
    path, _ = saturated
    write_records(tmp_path / "mem.jsonl", tiny_records)
    res = invoke("plan", tmp_path / "mem.jsonl", "--model", "tiny", "--store", path, "--json")
    assert res.exit_code == 0, res.output
    p = json.loads(res.stdout)
    scores = p["law_choice"]["held_out_mape"]
    assert p["law_form"] == "bounded" and scores["bounded"] < scores["paper"]
    assert p["law_formula"] == "ΔL = L_base·(1 − exp(−C·r^α·ℓ^(−β)))"
    assert p["predicted_delta_loss"] == pytest.approx(float(bounded_law(p["rank"], p["length"], p["L_base"],
                                                                        *p["law"]["params"].values())), rel=1e-9)
    text = invoke("plan", tmp_path / "mem.jsonl", "--model", "tiny", "--store", path).stdout
    assert "law: bounded, ΔL = L_base·(1 − exp(−C·r^α·ℓ^(−β)))" in text and "chosen for its lower held-out MAPE" in text
    forced = json.loads(invoke("plan", tmp_path / "mem.jsonl", "--model", "tiny", "--store", path, "--law", "paper",
                               "--json").stdout)
    assert forced["law_form"] == "paper" and forced["law_choice"] == {}


def test_the_report_sets_both_forms_side_by_side(saturated):
    from memlaw import experiments
    from memlaw.report.sections import law_section
    from memlaw.report.summary import summary_section

    path, _ = saturated
    with open_store(path, create=False) as db:
        rows = db.load_cells()
    [experiment] = experiments.group(rows)
    sec, summary = law_section(experiment)
    table = sec.tables[0]
    assert table.columns == ["quantity", "paper", "bounded"]
    by_label = {row[0]: row[1:] for row in table.rows}
    fit = summary["fit"]
    r2 = [fit["forms"][f]["law"]["r2"] for f in ("paper", "bounded")]
    assert [c.text for c in by_label["R²"]] == [f"{x:.4f}" for x in r2]
    assert by_label["b"][1] == "-" and by_label["form"][1] == "ΔL = L_base·(1 − exp(−C·r^α·ℓ^(−β)))"
    assert any(label.startswith("held-out MAPE (fit on lengths 50,100,200, predict 400,800)") for label in by_label)
    names = [f.name for f in sec.figures]
    assert any(n.startswith("law-panels-bounded") for n in names) and any(n.startswith("predicted-bounded")
                                                                          for n in names)
    assert any("The bounded form predicts held-out cells better" in p for p in sec.paragraphs)
    text = " ".join(summary_section(rows, [summary]).paragraphs)
    assert "the bounded form predicts the rest better, so planning uses it" in text
    only, _ = law_section(experiment, {"law": "paper"})
    assert only.tables[0].columns == ["quantity", "paper"]


def test_the_cli_law_defaults_are_the_python_defaults():
    import inspect

    import typer

    from memlaw.fitting import fit_cells
    from memlaw.plan import plan, plan_records

    commands = typer.main.get_command(app).commands
    fit_default = {p.name: p.default for p in commands["fit"].params}["law"]
    plan_default = {p.name: p.default for p in commands["plan"].params}["law"]
    assert fit_default == inspect.signature(fit_cells).parameters["law"].default == "both"
    assert plan_default == inspect.signature(plan_records).parameters["law"].default == "auto"
    assert inspect.signature(plan).parameters["law"].default == "auto"
