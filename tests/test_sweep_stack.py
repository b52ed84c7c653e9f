"""Stacked sweeps (`stack: K`): probe cells trained K at a time in one pass, each verified and stored alone.

Tolerance of "the store cannot tell": every count (steps, EM, certified, stubborn, per-check
certified counts) is equal, and every loss (L_final, ΔL, the history's losses) agrees within 1e-4
absolute (measured: ~1e-5 after 100 steps on the tiny model; the only difference is the
floating-point effect of the joint batch shape), locality's KL within 1e-4 relative (measured
~5e-6). With dropout on too, since each adapter draws its own masks (tests/test_stack.py). The one
visible difference is `stacked: K` in the metrics.
"""

import pytest

from memlaw.store import open_store
from memlaw.sweep import run_local, sweep_from_dict
from memlaw.sweep.cell import TIMING_KEYS
from memlaw.sweep.grid import stack_groups

GRID = {"name": "tiny-stack", "model": "tiny", "dtype": "float32", "ranks": [2, 8], "lengths": [20, 30],
        "prompt": {"template": "plain"}, "token_probs": True,
        "train": {"lr": 0.03, "batch_size": 8, "max_steps": 100, "check_every": 10}}
LOSSES = ("L_base", "L_base_all", "L_final", "L_final_all", "delta_loss", "delta_loss_all")
TOL = 1e-4


def _grid(dropout=None, **over):
    adapter = {"layer": 1, **({} if dropout is None else {"dropout": dropout})}
    return sweep_from_dict({**GRID, "adapter": adapter, **over})


def _rows(tmp_path, name, sweep, base):
    with open_store(tmp_path / f"{name}.db") as store:
        summary = run_local(sweep, store, base=base)
        rows = {r["key"]: r for r in store.load_cells()}
        probs = {k: store.token_probs(k) for k in rows}
    return summary, rows, probs


@pytest.mark.parametrize("dropout", [0.0, None], ids=["dropout-0", "dropout-default"])
def test_stacked_sweep_stores_what_separate_cells_store(tiny_base, tmp_path, dropout):
    _, alone, alone_p = _rows(tmp_path, "alone", _grid(dropout), tiny_base)
    summary, joint, joint_p = _rows(tmp_path, "joint", _grid(dropout, stack=4), tiny_base)
    assert (summary.ran, summary.failed) == (4, 0) and joint.keys() == alone.keys()
    assert any(r["em_rate"] > 0 for r in alone.values())          # so that equal EM says something
    for key, a in alone.items():
        m, n = a["metrics"], joint[key]["metrics"]
        assert n.pop("stacked") == 4 and "stacked" not in m
        assert m.keys() == n.keys()
        for name in m.keys() - set(TIMING_KEYS) - {"history", "records"}:
            if name in LOSSES:
                assert n[name] == pytest.approx(m[name], abs=TOL), name
            elif name == "locality":       # KL of adapters a joint batch shape apart: within its rounding
                assert n[name] == pytest.approx(m[name], rel=TOL), name
            else:
                assert n[name] == m[name], name
        assert [(h["step"], h["certified"], h["stubborn"], h["lr"]) for h in n["history"]] == \
               [(h["step"], h["certified"], h["stubborn"], h["lr"]) for h in m["history"]]
        assert [h["loss"] for h in n["history"]] == pytest.approx([h["loss"] for h in m["history"]], abs=TOL)
        for field in ("certified", "em", "first_failure", "earliest_stubborn", "stubborn", "free_correct"):
            assert n["records"][field] == m["records"][field], field
        assert [(s, r) for s, r, _ in joint_p[key]] == [(s, r) for s, r, _ in alone_p[key]]
        for (_, _, p), (_, _, q) in zip(joint_p[key], alone_p[key]):
            assert p == pytest.approx(q, abs=2e-3)                 # float16 storage: a rounding step apart at most
        assert joint[key]["config"] == a["config"]
        assert joint[key]["delta_loss"] == pytest.approx(a["delta_loss"], abs=TOL)


def test_stacked_sweep_resumes_with_the_unfinished_cells_only(tiny_base, tmp_path):
    steps = []
    with open_store(tmp_path / "runs.db") as store:
        first = run_local(_grid(stack=4, train={**GRID["train"], "max_steps": 20}), store, base=tiny_base,
                          on_step=steps.append)
        again = run_local(_grid(ranks=[2, 4, 8], stack=4, train={**GRID["train"], "max_steps": 20}), store,
                          base=tiny_base)
        rows = store.load_cells()
    assert (first.ran, again.ran, again.skipped) == (4, 2, 4)
    assert sorted(r["metrics"]["stacked"] for r in rows) == [2, 2, 4, 4, 4, 4]   # the new rank-4 cells: a pair
    assert len({r["key"] for r in rows}) == 6
    assert [i.step for i in steps] == list(range(1, 21)) and {i.total for i in steps} == {20}   # one bar per group


def test_stack_option_overrides_the_grid(tiny_base, tmp_path):
    with open_store(tmp_path / "runs.db") as store:
        run_local(_grid(stack=4, lengths=[20], train={**GRID["train"], "max_steps": 10}), store, base=tiny_base,
                  stack=1)
        assert all("stacked" not in r["metrics"] for r in store.load_cells())


def test_stack_groups_take_alike_probe_cells_in_order():
    sweep = _grid(ranks=[1, 2, 3], lengths=[20, 30], seeds=[0, 1])
    cells = sweep.cells()
    groups = stack_groups(cells, 4)
    assert [len(g) for g in groups] == [4, 4, 4] and [c for g in groups for c in g] == cells
    assert stack_groups(cells, 1) == [[c] for c in cells]
    lora = sweep_from_dict({**GRID, "adapter": {"kind": "lora"}}).cells()
    assert stack_groups(lora, 4) == [[c] for c in lora]                      # only probes stack
    other = _grid(dropout=0.0).cells()                                       # differs in more than rank/length/seed
    mixed = stack_groups([cells[0], other[0], cells[1], other[1]], 4)
    assert mixed == [[cells[0], cells[1]], [other[0], other[1]]]


def test_bad_stack_is_a_config_error():
    from memlaw.errors import ConfigError

    with pytest.raises(ConfigError, match="stack must be an integer >= 1"):
        _grid(stack=0)


def test_cli_stack_option(tmp_path):
    import json

    import yaml
    from typer.testing import CliRunner

    from memlaw.cli import app

    grid = {**GRID, "adapter": {"layer": 1}, "lengths": [20], "train": {**GRID["train"], "max_steps": 10}}
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid))
    res = CliRunner().invoke(app, ["sweep", str(tmp_path / "grid.yaml"), "--store", str(tmp_path / "runs.db"),
                                   "--stack", "2", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["ran"] == 2
    with open_store(tmp_path / "runs.db") as store:
        assert [r["metrics"]["stacked"] for r in store.load_cells()] == [2, 2]
    bad = CliRunner().invoke(app, ["sweep", str(tmp_path / "grid.yaml"), "--stack", "0"])
    assert bad.exit_code == 2
