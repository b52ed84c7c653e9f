"""The stubborn-token phase transition: ρ on planted data, the inclusion rule, the null baseline against
brute force and on data where ρ is pure structure, the bootstrap interval, the phase table, the CSV and CLI."""

import json
import math

import numpy as np
import pytest
from scipy.stats import spearmanr
from typer.testing import CliRunner

from memlaw import phase, rho
from memlaw.cli import app
from memlaw.config import AdapterConfig, BenchmarkConfig, ObjectiveConfig, PromptConfig, TrainConfig
from memlaw.errors import ConfigError
from memlaw.store import open_store
from memlaw.sweep.cell import CellResult
from memlaw.sweep.grid import CellConfig
from test_analysis import cell, failed

OPTS = rho.RhoOptions(resamples=400, draws=1000, seed=3)
runner = CliRunner()


# ---------------------------------------------------------------- ρ itself


def test_spearman_is_the_rank_formula_and_averages_tied_ranks():
    assert rho.spearman(range(6), [0, 2, 1, 3, 5, 4]) == pytest.approx(1 - 6 * 4 / (6 * 35))   # Σd² = 4
    x, y = [0, 0, 1, 2, 2, 3], [1, 0, 2, 2, 3, 5]
    rx, ry = [1.5, 1.5, 3, 4.5, 4.5, 6], [2, 1, 3.5, 3.5, 5, 6]                                    # ranked by hand
    assert rho.spearman(x, y) == pytest.approx(np.corrcoef(rx, ry)[0, 1])
    assert rho.spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert rho.spearman([1, 2], [1, 2]) is None and rho.spearman([1, 1, 1], [1, 2, 3]) is None


def test_the_inclusion_rule_counts_what_it_says():
    rows = [cell("a", records=[failed(0, 0), failed(1, 3), failed(2, 2), {"em": True, "certified": True},
                               {"em": True, "earliest_stubborn": 1, "stubborn": 1}]),
            cell("b", records=[failed(3, 4), failed(4, 5), failed(5, 6), failed(None, 2),
                               {"em": False, "first_failure": None}, {"em": None, "first_failure": 1}]),
            cell("c")]                                                  # stored without per-record verdicts
    table = phase.record_table(rows)
    assert [r["inclusion"] for r in table] == ["rho"] * 3 + ["recalled"] * 2 + ["rho"] * 3 + [
        "no-stubborn", "no-position", "no-recall"]
    assert [(r["key"], r["record"]) for r in table][5:7] == [("b", 0), ("b", 1)]
    (g,) = phase.study(rows, by=(), options=OPTS)
    c = g.correlation
    assert (g.label, g.cells, g.cells_without_records, g.cells_with_probs, g.phase) == ("all cells", 3, 1, 0, None)
    assert c.records == 11 and c.counts == {"rho": 6, "recalled": 2, "no-stubborn": 1, "no-position": 1,
                                            "no-recall": 1}
    assert (c.n, c.cells_in_rho, c.recalled_with_stubborn, c.exact, c.order_violations) == (6, 2, 1, 2, 0)
    assert c.rho == pytest.approx(1 - 6 * 2 / (6 * 35))            # ranks of first failure 1 3 2 4 5 6: Σd² = 2
    assert c.ci is not None and "only 2 cells" in c.note            # a cell bootstrap over two cells is rough
    bad = phase.study([cell(records=[failed(3, 1), failed(0, 0), failed(1, 2)])], by=(), options=OPTS)
    assert bad[0].correlation.order_violations == 1                 # a failure before the earliest stubborn


def test_groups_are_the_cells_model_and_benchmark_with_its_options():
    rows = [cell("a", model="m1", records=[failed(i, i + 1) for i in range(4)]),
            cell("b", model="m2", records=[failed(i, 2 * i) for i in range(5)]),
            cell("c", model="m1", records=[failed(3, 3)])]
    groups = phase.study(rows, options=OPTS)
    assert [(g.label, g.cells, g.correlation.n) for g in groups] == [
        ("model=m1, benchmark=phonebook", 2, 5), ("model=m2, benchmark=phonebook", 1, 5)]
    lc = {"config": {"benchmark": {"name": "long-context", "ratio": "r20", "source": "own", "data_seed": 0,
                                   "path": None}, "objective": {"name": "memft-ot", "tau": 0.6}}}
    assert phase.benchmark_label(lc) == "long-context ratio=r20 source=own data_seed=0"
    assert phase.objective_label(lc) == "memft-ot tau=0.6"
    # an SFT row stored under the old curriculum defaults is the same cell as a new one: one label
    old_sft = {"config": {"objective": {"name": "sft", "curriculum_boundaries": [0.1, 0.2, 0.3, 0.4, 1.0]}}}
    assert phase.objective_label(old_sft) == phase.objective_label({"config": {"objective": {"name": "sft"}}}) == "sft"
    old_curriculum = {"config": {"objective": {"name": "memft-sw-curriculum",
                                               "curriculum_boundaries": [0.1, 0.2, 0.3, 0.4, 1.0]}}}
    assert phase.objective_label(old_curriculum) == "memft-sw-curriculum curriculum_boundaries=[0.1, 0.2, 0.3, 0.4, 1.0]"
    rules = [{"config": {"benchmark": {"name": "linear-rule", "held_out": 100, "data_seed": 0, "rule": r}}}
             for r in ([3, 5, 7], [1, 1, 0])]
    assert [phase.benchmark_label(r) for r in rules] == ["linear-rule held_out=100 data_seed=0",
                                                         "linear-rule held_out=100 data_seed=0 rule=[1, 1, 0]"]
    with pytest.raises(ConfigError, match="not one of"):
        phase.study(rows, by=("lr",))
    with pytest.raises(ConfigError, match="draws must be"):
        rho.RhoOptions(draws=5)


# ---------------------------------------------------------------- the null baseline


def _records(rng, n, *, measured: bool, failure="null"):
    """Failed records with random stubborn sets; the failure at a random decodable stubborn position ("null"),
    at the earliest ("earliest") or at the last one greedy reaches ("last")."""
    out = []
    while len(out) < n:
        n_value, n_term = int(rng.integers(6, 80)), int(rng.integers(1, 3))
        n_answer = n_value + n_term
        k = int(rng.integers(1, 9))
        if measured:                                     # stubborn positions anywhere in the answer
            s = sorted(rng.choice(n_answer, size=min(k, n_answer), replace=False).tolist())
        else:                                            # the permutation model: es, then k − 1 after it
            es = int(rng.integers(0, n_value + 1))
            rest = rng.choice(np.arange(es + 1, n_answer), size=min(k - 1, n_answer - es - 1), replace=False)
            s = sorted([es, *rest.tolist()])
        cands = [t for t in s if t <= n_value]
        if not cands or cands[0] != s[0]:
            continue                                     # earliest stubborn not decoded: the record cannot fail
        ff = {"null": int(rng.choice(cands)), "earliest": cands[0], "last": cands[-1]}[failure]
        out.append({"key": f"c{len(out) // 8}", "inclusion": "rho", "earliest_stubborn": s[0], "first_failure": ff,
                    "n_value": n_value, "n_terminator": n_term, "stubborn": len(s),
                    "stubborn_positions": s if measured else None})
    return out


@pytest.mark.parametrize("measured", [True, False])
def test_where_rho_is_pure_structure_it_equals_rho_null(measured):
    recs = _records(np.random.default_rng(11), 400, measured=measured)
    c = rho.correlate(recs, OPTS)
    assert c.rho > 0.5                                   # large, from structure alone
    assert c.null_interval[0] <= c.rho <= c.null_interval[1] and abs(c.excess) < 0.05
    assert c.p_null > 0.025 and c.sets_measured == (400 if measured else 0)
    assert abs(c.exact - c.exact_null) < 4 * math.sqrt(c.exact_null)


def test_the_permuted_null_matches_a_brute_force_permutation():
    recs = _records(np.random.default_rng(5), 150, measured=False)
    c = rho.correlate(recs, OPTS)
    rng = np.random.default_rng(99)
    x = [r["earliest_stubborn"] for r in recs]
    rhos, bounds, at_es = [], [], 0
    for _ in range(400):                                 # place the other stubborn tokens, then pick one
        ys = []
        bounds.append(spearmanr(x, [rng.integers(r["earliest_stubborn"], r["n_value"] + 1) for r in recs]).statistic)
        for r in recs:
            es, n_answer = r["earliest_stubborn"], r["n_value"] + r["n_terminator"]
            rest = rng.choice(np.arange(es + 1, n_answer), size=r["stubborn"] - 1, replace=False)
            ys.append(int(rng.choice([es, *(t for t in rest if t <= r["n_value"])])))
        rhos.append(spearmanr(x, ys).statistic)
        at_es += sum(y == e for y, e in zip(ys, x))
    assert c.rho_null == pytest.approx(np.mean(rhos), abs=0.01)
    assert c.exact_null == pytest.approx(at_es / 400, rel=0.03)
    assert c.rho_bound == pytest.approx(np.mean(bounds), abs=0.01)


def test_failures_on_the_earliest_stubborn_token_stand_out_from_the_null():
    c = rho.correlate(_records(np.random.default_rng(2), 300, measured=True, failure="earliest"), OPTS)
    assert c.rho == 1.0 and c.exact == 300 and c.exact_null < 250
    assert c.excess > 0.05 and c.p_null == pytest.approx(1 / (OPTS.draws + 1))
    late = rho.correlate(_records(np.random.default_rng(2), 300, measured=True, failure="last"), OPTS)
    assert late.excess < 0 and late.p_null > 0.99


def test_the_null_is_seeded():
    recs = _records(np.random.default_rng(4), 60, measured=False)
    assert rho.correlate(recs, OPTS) == rho.correlate(recs, OPTS)
    other = rho.correlate(recs, rho.RhoOptions(resamples=400, draws=1000, seed=4))
    assert other.rho == rho.correlate(recs, OPTS).rho and other.rho_null != rho.correlate(recs, OPTS).rho_null


# ---------------------------------------------------------------- the bootstrap interval


def test_bootstrap_interval_has_the_large_sample_width_and_resamples_clusters():
    rng = np.random.default_rng(0)
    n, r = 300, 0.6
    z = rng.multivariate_normal([0, 0], [[1, r], [r, 1]], size=n)
    x, y = z[:, 0], z[:, 1]
    lo, hi, used = rho.bootstrap_interval(x, y, list(range(n)), resamples=600, level=0.95, rng=rng)
    truth = 6 / math.pi * math.asin(r / 2)               # Spearman's ρ of a bivariate normal
    rs = rho.spearman(x, y)
    se = math.sqrt((1 + rs ** 2 / 2) / (n - 3)) * (1 - rs ** 2)   # Bonett & Wright (2000), back from Fisher's z
    assert lo < truth < hi and used == 600
    assert 0.75 < (hi - lo) / (2 * 1.96 * se) < 1.3
    dup_x, dup_y, clusters = np.repeat(x, 5), np.repeat(y, 5), np.repeat(np.arange(n), 5)
    c_lo, c_hi, _ = rho.bootstrap_interval(dup_x, dup_y, clusters.tolist(), resamples=600, level=0.95, rng=rng)
    r_lo, r_hi, _ = rho.bootstrap_interval(dup_x, dup_y, list(range(5 * n)), resamples=600, level=0.95, rng=rng)
    assert 0.8 < (c_hi - c_lo) / (hi - lo) < 1.25       # five copies of a record are one record's worth
    assert (r_hi - r_lo) / (hi - lo) < 0.6               # resampling copies alone claims too much
    assert rho.bootstrap_interval(x, y, [0] * n, resamples=200, level=0.95, rng=rng) is None   # one cell


# ---------------------------------------------------------------- the phase table


def test_phase_points_follow_the_free_run_definition():
    rows = cell(records=[
        {"first_failure": 2, "n_value": 3, "n_terminator": 1},               # right, right, wrong, off-path
        {"first_failure": None, "em": True, "n_value": 2, "n_terminator": 2},  # right ×3, never decoded
        {"first_failure": 0, "em": None},                                     # no greedy recall: skipped
    ])
    probs = [(50, 0, np.array([0.2, 0.2, 0.2, 0.2])), (50, 1, np.array([0.1, 0.1, 0.1, 0.1])),
             (100, 0, np.array([0.9, 0.4, 0.3, 0.8])), (100, 1, np.array([0.7, 0.6, 0.55, 0.9])),
             (100, 2, np.array([0.9, 0.9, 0.9, 0.9]))]
    pts = phase.phase_points(rows, probs)
    assert [(p["record"], p["position"], p["status"]) for p in pts] == [
        (0, 0, "right"), (0, 1, "right"), (0, 2, "wrong"), (0, 3, "off-path"),
        (1, 0, "right"), (1, 1, "right"), (1, 2, "right"), (1, 3, "not-decoded")]
    assert [p["terminator"] for p in pts[4:]] == [False, False, True, True]
    s = phase.phase_summary(pts)
    assert s == {"positions": 8, "on_path": 6, "right_above": 4, "right_below": 1, "wrong_below": 1,
                 "violations": 0, "off_path": 1, "not_decoded": 1}
    assert phase.phase_summary([{"status": "wrong", "p": 0.7}])["violations"] == 1
    assert phase.phase_points({**rows, "steps": 120}, probs) == []   # last stored p_t is not the final one
    assert phase.phase_points(cell(), probs) == []                   # no per-record verdicts
    table = phase.record_table([rows], {rows["key"]: probs})
    assert [r["stubborn_positions"] for r in table] == [[1, 2], [], []]     # measured wherever final p_t is


# ---------------------------------------------------------------- CSV and CLI


def _result(key, rank, records, probs):
    cfg = CellConfig(model="m", benchmark=BenchmarkConfig(), length=12, adapter=AdapterConfig(rank=rank),
                     objective=ObjectiveConfig(), train=TrainConfig(max_steps=100), prompt=PromptConfig())
    base = {"n_value": 3, "n_terminator": 1, "certified": False, "em": False, "first_failure": None,
            "earliest_stubborn": None, "stubborn": 0, "min_p": 0.1, "tf_correct": 0, "free_correct": 0,
            "loss_final": 1.0, "loss_base": 5.0}
    full = [{**base, **r} for r in records]
    cols = {name: [r[name] for r in full] for name in base}
    blobs = [(100, i, np.asarray(p, dtype=np.float16).tobytes()) for i, p in enumerate(probs)]
    return CellResult(key, cfg, "done", {"steps": 100, "records": cols}, {}, blobs)


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "runs.db"
    p_fail = [[0.9, 0.4, 0.3, 0.8], [0.3, 0.6, 0.2, 0.9], [0.9, 0.9, 0.45, 0.7]]
    with open_store(path) as db:
        db.add_cell(_result("a" * 64, 1, [{**failed(1, 1), "stubborn": 2}, {**failed(0, 2), "stubborn": 2},
                                          {**failed(2, 2), "stubborn": 1}], p_fail), sweep="t")
        db.add_cell(_result("b" * 64, 2, [{"em": True, "certified": True}, failed(1, 1), failed(0, 0)],
                            [[0.9, 0.8, 0.9, 0.9], [0.9, 0.2, 0.9, 0.9], [0.1, 0.9, 0.9, 0.9]]), sweep="t")
    return path


def test_records_csv_round_trips_and_gives_the_stores_rho(store_path, tmp_path):
    res = runner.invoke(app, ["runs", "records", "--store", str(store_path), "--out", str(tmp_path / "r.csv")])
    assert res.exit_code == 0, res.output
    assert "wrote 6 records of 2 cells (5 in ρ)" in res.output
    back = phase.read_record_csv(tmp_path / "r.csv")
    with open_store(store_path, create=False) as db:
        rows = db.load_cells()
        probs = {r["key"]: db.token_probs(r["key"]) for r in rows}
    assert back == phase.record_table(rows, probs)
    assert back[0]["stubborn_positions"] == [1, 2] and back[3]["stubborn_positions"] == []
    from_csv = phase.study_records(back, options=OPTS)[0].correlation
    assert from_csv == phase.study(rows, probs, options=OPTS)[0].correlation
    cli = runner.invoke(app, ["runs", "phase", "--records", str(tmp_path / "r.csv"), "--json", "--draws", "1000",
                              "--resamples", "400", "--seed", "3"])
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.output)["groups"][0]["correlation"] == json.loads(json.dumps(vars(from_csv)))
    text = (tmp_path / "r.csv").read_text().splitlines()
    assert text[0] == ",".join(phase.RECORD_FIELDS) and len(text) == 7
    (tmp_path / "bad.csv").write_text("\n".join([text[0], text[1], text[2].replace(",3,1,", ",x,1,", 1)]) + "\n")
    with pytest.raises(ConfigError, match=r"bad.csv:3: invalid literal"):
        phase.read_record_csv(tmp_path / "bad.csv")


def test_runs_phase_prints_each_group_and_its_phase_table(store_path):
    res = runner.invoke(app, ["runs", "phase", "--store", str(store_path), "--json", "--draws", "200",
                              "--resamples", "200", "--by", "model,rank"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["paper"] == {"rho": 0.908, "n": 155} and out["by"] == ["model", "rank"]
    g1, g2 = out["groups"]
    assert (g1["label"], g1["correlation"]["n"], g2["correlation"]["n"]) == ("model=m, rank=1", 3, 2)
    assert g1["correlation"]["rho"] == pytest.approx(spearmanr([1, 0, 2], [1, 2, 2]).statistic)
    # cell a: record 0 right (0.9), wrong (0.4); record 1 right (0.3, 0.6), wrong (0.2); record 2 right (0.9, 0.9),
    # wrong (0.45); every position after a failure off-path
    assert g1["phase"] == {"positions": 12, "on_path": 8, "right_above": 4, "right_below": 1, "wrong_below": 3,
                           "violations": 0, "off_path": 4, "not_decoded": 0}
    text = runner.invoke(app, ["runs", "phase", "--store", str(store_path), "--draws", "200", "--resamples", "200"])
    assert text.exit_code == 0 and "paper" in text.output and "0.908" in text.output
    bad = runner.invoke(app, ["runs", "phase", "--store", str(store_path), "--by", "lr"])
    assert bad.exit_code == 2 and "not one of" in bad.output
