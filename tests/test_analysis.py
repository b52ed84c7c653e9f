"""memlaw.analysis on synthetic rows (known answers), and p_t recording at a chosen interval on the tiny model."""

import math

import numpy as np
import pytest
import torch

from memlaw import experiments
from memlaw.config import AdapterConfig, BenchmarkConfig, ObjectiveConfig, PromptConfig, TrainConfig
from memlaw.sweep.grid import CellConfig
from memlaw import analysis
from memlaw.sweep import sweep_from_dict
from memlaw.sweep.cell import RECORD_COLUMNS, probs_interval, run_cell


def cell(key="k1", *, rank=4, length=12, records=None, steps=100, em_rate=None, L_final=None, history=(),
         model="m", **flat):
    """A store-like row; `records` is a list of per-record dicts (missing fields default)."""
    cols = None
    if records is not None:
        base = {"n_value": 3, "n_terminator": 1, "certified": False, "em": False, "first_failure": None,
                "earliest_stubborn": None, "stubborn": 0, "min_p": 0.1, "tf_correct": 0, "free_correct": 0,
                "loss_final": 1.0, "loss_base": 5.0}
        full = [{**base, **r} for r in records]
        cols = {name: [r[name] for r in full] for name in RECORD_COLUMNS}
    metrics = {"history": list(history), "steps": steps, **({"records": cols} if cols is not None else {})}
    config = CellConfig(model=model, benchmark=BenchmarkConfig(), length=length, adapter=AdapterConfig(rank=rank),
                        objective=ObjectiveConfig(), train=TrainConfig(max_steps=steps), prompt=PromptConfig())
    return {"key": key, "model": model, "kind": "probe", "objective": "sft", "benchmark": "phonebook",
            "rank": rank, "length": length, "steps": steps, "em_rate": em_rate, "L_final": L_final,
            "metrics": metrics, "config": config.to_dict(), **flat}


def failed(es, ff):
    """A record whose greedy output failed at `ff`, earliest stubborn `es` (tests/test_phase.py)."""
    return {"earliest_stubborn": es, "first_failure": ff, "em": False}


# ---------------------------------------------------------------- loss vs recall


def test_misalignment_flags_low_loss_cells_that_fail_exact_match():
    rows = [cell("full", L_final=0.30, em_rate=1.0),
            cell("mis", L_final=0.05, em_rate=0.5, records=[{"em": True}, {"em": False, "loss_final": 0.1}]),
            cell("mis2", L_final=0.60, em_rate=0.9),
            cell("high", L_final=2.0, em_rate=0.0),
            cell("other-model", model="x", L_final=0.01, em_rate=0.0)]
    mis = analysis.misalignment(rows)
    assert mis.threshold == pytest.approx(math.log(2))
    assert [r["key"] for r in mis.rows] == ["other-model", "mis", "mis2"]       # lowest loss first
    assert (mis.n_low, mis.n_misaligned) == (4, 3)
    by = {r["key"]: r for r in mis.rows}
    assert by["mis"]["below_recalled"] and by["mis"]["recalled_L_final_max"] == 0.30
    assert by["mis"]["failed_records"] == 1 and by["mis"]["failed_low_loss"] == 1
    assert not by["mis2"]["below_recalled"] and by["mis2"]["failed_records"] is None
    assert by["other-model"]["recalled_L_final_max"] is None                    # its group has no 100% cell
    assert analysis.misalignment(rows, threshold=0.5).n_misaligned == 2


# ---------------------------------------------------------------- p_t over training


def test_grids_stubborn_counts_and_certified_since():
    probs = [(10, 0, np.array([0.2, 0.9])), (10, 1, np.array([0.6, 0.7])),
             (20, 0, np.array([0.6, 0.9])), (20, 1, np.array([0.4, 0.7])),
             (30, 0, np.array([0.7, 0.95])), (30, 1, np.array([0.8, 0.9]))]
    steps, grid = analysis.probability_grid(probs, 0)
    assert steps.tolist() == [10, 20, 30] and grid.shape == (2, 3)
    assert grid[:, 0].tolist() == pytest.approx([0.2, 0.9])
    over = analysis.stubborn_over_training(probs)
    assert [(x["step"], x["record"], x["stubborn"], x["earliest_stubborn"]) for x in over] == [
        (10, 0, 1, 0), (10, 1, 0, None), (20, 0, 0, None), (20, 1, 1, 0), (30, 0, 0, None), (30, 1, 0, None)]
    assert analysis.certified_since(over) == {0: 20, 1: 30}        # record 1 certified at 10, lost it at 20
    assert analysis.final_probs(probs)[0] == 30
    assert analysis.probability_grid(probs, 7)[1].shape == (0, 0)
    curves = analysis.stubborn_curves([cell(history=[{"step": 5, "stubborn": 3, "certified": 0, "loss": 1.0}])])
    assert curves == [{"key": "k1", "rank": 4, "length": 12, "n_records": None, "step": 5, "stubborn": 3,
                       "certified": 0, "loss": 1.0}]


def test_cell_rows_and_experiments():
    rows = [cell("b", rank=8, length=24, model="m"), cell("a", rank=2, length=24, model="m"),
            cell("c", rank=2, length=12, model="n")]
    assert [r["key"] for r in analysis.cell_rows(rows)] == ["a", "b", "c"]
    groups = experiments.group(rows)
    assert [len(e.rows) for e in groups] == [2, 1] and [e.label for e in groups] == ["model=m", "model=n"]


# ---------------------------------------------------------------- recording (sweep/cell.py)


def test_probs_interval_values():
    assert (probs_interval(True), probs_interval(False), probs_interval(25)) == (1, 0, 25)
    with pytest.raises(Exception, match="interval"):
        probs_interval(0)
    with pytest.raises(Exception, match="token_probs"):
        sweep_from_dict({"name": "x", "model": "tiny", "ranks": [2], "lengths": [12], "token_probs": -3,
                         "train": {"max_steps": 3}})


def test_p_t_is_kept_at_the_interval_plus_the_final_step_with_per_record_verdicts(tiny_base, tmp_path):
    from memlaw.records import Record, write_records

    torch.set_num_threads(1)
    write_records(tmp_path / "r.jsonl", [Record(f"key {c}", f"{i}{i + 1}{i + 2}4{i}6") for i, c in enumerate("abcd")])
    cfg = sweep_from_dict({"name": "x", "model": "tiny", "dtype": "float32", "ranks": [8], "lengths": [12],
                           "benchmark": {"name": "records", "path": str(tmp_path / "r.jsonl")},
                           "adapter": {"layer": 1}, "prompt": {"template": "plain"},
                           "train": {"lr": 0.03, "batch_size": 2, "max_steps": 12, "check_every": 3},
                           "token_probs": 5})
    res = run_cell(cfg.cells()[0], tiny_base, token_probs=cfg.token_probs)
    assert sorted({s for s, _, _ in res.token_probs}) == [3, 9, 12]       # 3, then >= 5 steps later, then final
    recs = res.metrics["records"]
    assert set(recs) == set(RECORD_COLUMNS) and len(recs["n_value"]) == 2
    # the final p_t equals what verify measured (same pass, same adapter)
    final = {r: np.frombuffer(p, dtype=np.float16) for s, r, p in res.token_probs if s == 12}
    assert [float(final[i].min()) for i in range(2)] == pytest.approx(recs["min_p"], abs=1e-3)
