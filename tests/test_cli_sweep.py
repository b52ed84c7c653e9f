"""memlaw sweep / runs / fit / plan end to end on the tiny model (errors: one line, exit 2)."""

import csv
import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from memlaw.cli import app
from memlaw.law import law
from memlaw.records import write_records
from memlaw.store import open_store
from memlaw.sweep import sweep_from_dict
from memlaw.sweep.cell import CellResult

runner = CliRunner()

GRID = {"name": "cli-grid", "model": "tiny", "dtype": "float32", "ranks": [2, 8], "lengths": [20, 30],
        "adapter": {"layer": 1}, "prompt": {"template": "plain"},
        "train": {"lr": 0.03, "batch_size": 8, "max_steps": 10, "check_every": 5}}


def invoke(*args):
    res = runner.invoke(app, [str(a) for a in args])
    return res


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A 2×2 sweep run through the CLI, then run again."""
    d = tmp_path_factory.mktemp("sweep")
    (d / "grid.yaml").write_text(yaml.safe_dump(GRID))
    first = invoke("sweep", d / "grid.yaml", "--store", d / "runs.db", "--json")
    assert first.exit_code == 0, first.output
    second = invoke("sweep", d / "grid.yaml", "--store", d / "runs.db", "--json")
    assert second.exit_code == 0, second.output
    return d, json.loads(first.stdout), json.loads(second.stdout)


def test_sweep_stores_each_cell_and_a_rerun_skips_them(swept):
    d, first, second = swept
    assert (first["grid"], first["ran"], first["skipped"], first["failed"]) == (4, 4, 0, 0)
    assert (second["ran"], second["skipped"]) == (0, 4)
    with open_store(d / "runs.db") as db:
        rows = db.load_cells()
    assert sorted((r["rank"], r["length"]) for r in rows) == [(2, 20), (2, 30), (8, 20), (8, 30)]
    assert all(r["sweep"] == "cli-grid" and r["model"] == "tiny" and r["steps"] == 10 for r in rows)
    assert all(r["delta_loss"] is not None and r["n_params"] == 2 * 64 * r["rank"] for r in rows)


def test_sweep_prints_a_line_per_cell_without_a_tty(tmp_path):
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump({**GRID, "ranks": [2], "lengths": [20]}))
    res = invoke("sweep", tmp_path / "grid.yaml", "--store", tmp_path / "runs.db")
    assert res.exit_code == 0, res.output
    assert "cell 1/1  rank 2  length 20" in res.stderr and "ETA" in res.stderr
    assert "1 run (0 failed)" in res.stdout


@pytest.mark.parametrize("bad", ["0", "two", "-1", "1.5"])
def test_workers_must_be_auto_or_a_whole_number_and_nothing_is_written(tmp_path, bad):
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(GRID))
    res = invoke("sweep", tmp_path / "grid.yaml", "--store", tmp_path / "runs.db", "--workers", bad)
    assert res.exit_code == 2, res.output
    assert f"--workers must be 'auto' or a whole number of at least 1, got '{bad}'" in res.stderr
    assert not (tmp_path / "runs.db").exists()


def test_dry_run_lists_cells_and_writes_nothing(swept, tmp_path):
    d, _, _ = swept
    res = invoke("sweep", d / "grid.yaml", "--store", d / "runs.db", "--dry-run", "--json")
    assert res.exit_code == 0 and all(c["stored"] for c in json.loads(res.stdout)["cells"])
    res = invoke("sweep", d / "grid.yaml", "--store", tmp_path / "new.db", "--dry-run")
    assert res.exit_code == 0 and "4 cells, 0 stored" in res.stdout


def test_runs_list_show_export(swept, tmp_path):
    d, _, _ = swept
    res = invoke("runs", "list", "--store", d / "runs.db")
    assert res.exit_code == 0 and "4 cells" in res.stdout and "ΔL" in res.stdout
    listed = json.loads(invoke("runs", "list", "--store", d / "runs.db", "--where", "rank=8", "--json").stdout)
    assert [r["rank"] for r in listed] == [8, 8]
    shown = invoke("runs", "show", listed[0]["key"][:12], "--store", d / "runs.db")
    assert shown.exit_code == 0, shown.output
    row = json.loads(shown.stdout)
    assert row["key"] == listed[0]["key"] and row["config"]["adapter"]["rank"] == 8 and "versions" in row
    res = invoke("runs", "export", "--format", "csv", "--out", tmp_path / "runs.csv", "--store", d / "runs.db")
    assert res.exit_code == 0 and "exported 4 cells" in res.stdout
    assert len(list(csv.DictReader(open(tmp_path / "runs.csv")))) == 4
    res = invoke("runs", "export", "--format", "parquet", "--out", tmp_path / "runs.parquet", "--store", d / "runs.db")
    assert res.exit_code == 0 and (tmp_path / "runs.parquet").stat().st_size > 0


def test_fit_store_and_csv(swept, tmp_path):
    d, _, _ = swept
    res = invoke("fit", "--store", d / "runs.db", "--json")
    assert res.exit_code == 0, res.output
    [out] = json.loads(res.stdout)["fits"]
    assert out["n"] == 4 and set(out["law"]["params"]) == {"C", "alpha", "beta", "b"}
    assert out["config"]["model"] == "tiny" and any("n>=5" in w or "n=4" in w for w in out["warnings"])
    invoke("runs", "export", "--out", tmp_path / "runs.csv", "--store", d / "runs.db")
    res = invoke("fit", "--csv", tmp_path / "runs.csv")
    assert res.exit_code == 0 and "R²" in res.stdout and "MAPE" in res.stdout


def test_fit_recovers_planted_parameters_from_a_csv(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "law.csv"
    with open(path, "w") as f:
        f.write("rank,length,delta_loss,em\n")
        for r in (1, 2, 4, 8, 16):
            for length in (40, 80, 160, 320, 640):
                y = law(r, length, 6.0, 0.4, 0.3, 0.1) * (1 + 0.01 * rng.standard_normal())
                f.write(f"{r},{length},{y},{1.0 if length <= 40 * r else 0.5}\n")
    res = invoke("fit", "--csv", path, "--json")
    assert res.exit_code == 0, res.output
    [out] = json.loads(res.stdout)["fits"]
    p = out["law"]["params"]
    assert p["alpha"] == pytest.approx(0.4, abs=0.05) and p["beta"] == pytest.approx(0.3, abs=0.05)
    assert out["law"]["r2"] > 0.99 and out["held_out"]["mape"] < 5
    assert out["frontier"]["gamma"] == pytest.approx(1.0, abs=0.01)
    text = invoke("fit", "--csv", path)
    assert "α" in text.stdout and "held-out MAPE" in text.stdout and "frontier" in text.stdout


def _planted_store(path, lengths=(20, 40, 60, 80), ranks=(1, 2, 4, 8), **grid_options):
    """Rows of the law ΔL = 3·r^0.5·ℓ^-0.2 + 0 with full EM while ℓ <= 10·r (frontier K = 10, γ = 1);
    with several long-context noise ratios, ratio rX gets C = 3 + X/25 (a law of its own)."""
    grid = sweep_from_dict({**GRID, "ranks": list(ranks), "lengths": list(lengths), **grid_options})
    with open_store(path) as db:
        for c in grid.cells():
            C = 3.0 + int(c.benchmark.ratio[1:]) / 25 if c.benchmark.ratio else 3.0
            dl = float(law(c.rank, c.length, C, 0.5, 0.2, 0.0))
            em = 1.0 if c.length <= 10 * c.rank else 0.0
            db.add_cell(CellResult(c.key, c, "done", {"length": c.length, "delta_loss": dl, "em_rate": em,
                                                      "L_final": 0.05 if em else 1.0}), sweep="planted")


def test_plan_answers_the_rank_and_flags_extrapolation(tmp_path, tiny_records):
    _planted_store(tmp_path / "runs.db")
    write_records(tmp_path / "mem.jsonl", tiny_records)           # 8 records × 6 digits: ℓ = 48
    res = invoke("plan", tmp_path / "mem.jsonl", "--model", "tiny", "--store", tmp_path / "runs.db", "--json")
    assert res.exit_code == 0, res.output
    p = json.loads(res.stdout)
    assert p["length"] == 48 and p["n_records"] == 8 and p["rank_source"] == "measured"
    assert p["rank"] == 8 and p["frontier_rank"] == pytest.approx(4.8, rel=1e-3) and p["measured_rank"] == 8
    assert p["predicted_delta_loss"] == pytest.approx(float(law(8, 48, 3.0, 0.5, 0.2, 0.0)), rel=1e-3)
    assert p["margin"] == pytest.approx(p["predicted_delta_loss"] - p["needed_delta_loss"])
    assert p["needed_delta_loss"] == pytest.approx(p["L_base"] - 0.05)
    assert p["extrapolating"] == [] and p["law_form"] == "paper"
    assert p["settings"]["train.lr"] == 0.03 and p["settings"]["train.max_steps"] == 10
    assert p["command"] == ["memlaw", "write", str(tmp_path / "mem.jsonl"), "--out", "ADAPTER", "--model", "tiny",
                            "--dtype", "float32", "--adapter", "probe", "--rank", "8", "--layer", "1",
                            "--objective", "sft", "--max-steps", "10", "--lr", "0.03", "--batch-size", "8",
                            "--template", "plain", "--until", "certified"]
    text = invoke("plan", tmp_path / "mem.jsonl", "--model", "tiny", "--store", tmp_path / "runs.db").stdout
    assert "rank: 8  (measured" in text and "interpolating" in text
    assert "holds for: objective sft, lr 0.03, budget 10 optimizer steps of batches of 8" in text
    assert "law: paper, ΔL = C·r^α·ℓ^(−β) + b" in text and "memlaw write" in text
    big = [r.__class__(f"{r.key} {i}", r.value * 2) for i in range(3) for r in tiny_records]   # ℓ = 288
    write_records(tmp_path / "big.jsonl", big)
    text = invoke("plan", tmp_path / "big.jsonl", "--model", "tiny", "--store", tmp_path / "runs.db")
    assert text.exit_code == 0, text.output
    assert "EXTRAPOLATING" in text.stdout and "ℓ = 288 is 3.6× the largest measured length (80)" in text.stdout


def test_the_planned_command_certifies_or_the_plan_says_it_extrapolates(tmp_path):
    """A real sweep on the tiny model, a plan for other records, and the write the plan prints."""
    import random

    from memlaw.records import Record

    rng = random.Random(1)
    pool = [Record(f"id {i:03d}", "".join(rng.choice("0123456789") for _ in range(6))) for i in range(40)]
    write_records(tmp_path / "pool.jsonl", pool[:20])                  # the sweep's data
    grid = {**GRID, "name": "plan-grid", "benchmark": {"name": "records", "path": str(tmp_path / "pool.jsonl")},
            "ranks": [4, 16], "lengths": [12, 36],
            "train": {"lr": 0.03, "batch_size": 4, "max_steps": 300, "until": "certified", "check_every": 10}}
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid))
    assert invoke("sweep", tmp_path / "grid.yaml", "--store", tmp_path / "runs.db").exit_code == 0
    write_records(tmp_path / "mine.jsonl", pool[20:24])                # other records, ℓ = 24
    res = invoke("plan", tmp_path / "mine.jsonl", "--model", "tiny", "--store", tmp_path / "runs.db",
                 "--out", tmp_path / "mine", "--json")
    assert res.exit_code == 0, res.output
    p = json.loads(res.stdout)
    assert p["length"] == 24 and p["extrapolating"] == [] and p["rank_source"] == "measured"
    assert p["settings"]["train.max_steps"] == 300 and p["settings"]["benchmark.name"] == "records"
    argv = p["command"]
    assert argv[:2] == ["memlaw", "write"] and argv[argv.index("--rank") + 1] == str(p["rank"])
    written = invoke(*argv[1:], "--json")
    assert written.exit_code == 0, written.output                       # exit 0: every record certified
    assert json.loads(written.stdout)["certified"] == 4
    write_records(tmp_path / "more.jsonl", pool[20:30])                # ℓ = 60: past every measured length
    text = invoke("plan", tmp_path / "more.jsonl", "--model", "tiny", "--store", tmp_path / "runs.db").stdout
    assert "EXTRAPOLATING" in text and "ℓ = 60 is 1.7× the largest measured length (36)" in text


def test_fit_never_mixes_experiments_two_noise_ratios_are_two_laws(tmp_path, tiny_records):
    """A store holding long-context cells at r0 and r100: two laws (store and exported CSV alike); plan refuses
    the mix naming the key, and --where on the config key picks one."""
    _planted_store(tmp_path / "runs.db", benchmarks=[{"name": "long-context", "ratio": "r0"},
                                                     {"name": "long-context", "ratio": "r100"}])
    fits = json.loads(invoke("fit", "--store", tmp_path / "runs.db", "--fix-b", "--json").stdout)["fits"]
    assert sorted(f["experiment"] for f in fits) == ["benchmark.ratio=r0", "benchmark.ratio=r100"]
    for f in fits:
        C = 3.0 + int(f["config"]["benchmark"]["ratio"][1:]) / 25
        assert f["n"] == 16 and f["law"]["params"]["C"] == pytest.approx(C, rel=1e-6)
        assert f["law"]["r2"] == pytest.approx(1.0)
    invoke("runs", "export", "--out", tmp_path / "runs.csv", "--store", tmp_path / "runs.db")
    from_csv = json.loads(invoke("fit", "--csv", tmp_path / "runs.csv", "--fix-b", "--json").stdout)["fits"]
    assert sorted(round(f["law"]["params"]["C"], 6) for f in from_csv) == [3.0, 7.0]
    [pooled] = json.loads(invoke("fit", "--store", tmp_path / "runs.db", "--fix-b", "--law", "paper",
                                 "--pool", "benchmark.ratio", "--json").stdout)["fits"]
    assert pooled["n"] == 32 and pooled["pooled"] == ["benchmark.ratio"] and "pooled over" in pooled["experiment"]
    assert pooled["law"]["r2"] < 0.999                       # two laws in one: the pooled fit is worse
    res = invoke("fit", "--store", tmp_path / "runs.db", "--pool", "benchmark.ratoi")
    assert res.exit_code == 2 and "cannot pool over 'benchmark.ratoi'" in res.stderr
    write_records(tmp_path / "mem.jsonl", tiny_records)
    res = invoke("plan", tmp_path / "mem.jsonl", "--model", "tiny", "--store", tmp_path / "runs.db")
    assert res.exit_code == 2 and "benchmark.ratio" in res.stderr and "2 experiments" in res.stderr
    res = invoke("plan", tmp_path / "mem.jsonl", "--model", "tiny", "--store", tmp_path / "runs.db",
                 "--where", "benchmark.ratio=r100", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["law"]["params"]["C"] == pytest.approx(7.0, rel=1e-3)


@pytest.mark.parametrize("args,cause", [
    (["sweep", "{d}/bad.yaml", "--store", "{d}/r.db"], "did you mean 'ranks'"),
    (["sweep", "{d}/missing.yaml"], "missing.yaml:1: no such file"),
    (["runs", "list", "--store", "{d}/nothing.db"], "no such store"),
    (["fit"], "exactly one of --store or --csv"),
    (["fit", "--store", "{d}/nothing.db"], "no such store"),
    (["runs", "list", "--store", "{d}/r.db", "--where", "rnak=2"], "did you mean 'rank'"),
    (["plan", "{d}/bad.yaml", "--model", "tiny", "--store", "{d}/r.db"], "no finished cells"),
    (["plan", "{d}/bad.yaml", "--model", "tiny", "--store", "{d}/r.db", "--format", "peft"], "writes a LoRA config"),
    (["plan", "{d}/bad.yaml", "--model", "smollm2", "--store", "{d}/r.db"], "did you mean 'smollm2-135m'"),
])
def test_errors_are_one_line_exit_2(tmp_path, args, cause):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**GRID, "rnaks": [1]}))
    open_store(tmp_path / "r.db").conn.close()             # an empty store (its file is made when first used)
    res = invoke(*[a.format(d=tmp_path) for a in args])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and cause in lines[0] and "Traceback" not in res.output


@pytest.mark.parametrize("change,cause", [
    ({"rnaks": [2]}, "did you mean 'ranks'"),                            # a bad grid
    ({"model": "smollm2"}, "did you mean 'smollm2-135m'"),               # a model that is not there
    ({"ranks": [2, 100]}, "rank 100 is more than the hidden size 64"),   # a cell that cannot work
    ({"lengths": [20, 25]}, "PB25"),                                     # a length no prefix reaches
], ids=["grid", "model", "rank", "length"])
def test_a_sweep_refused_before_any_cell_leaves_no_store_behind(tmp_path, change, cause):
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump({**GRID, **change}))
    res = invoke("sweep", tmp_path / "grid.yaml", "--store", tmp_path / "new" / "runs.db")
    assert res.exit_code == 2 and cause in res.stderr, res.output
    assert [p.name for p in tmp_path.iterdir()] == ["grid.yaml"]      # no store, no -wal/-shm, no folder


def test_help_for_every_command():
    for cmd in (["sweep"], ["runs", "list"], ["runs", "show"], ["runs", "export"], ["fit"], ["plan"]):
        res = runner.invoke(app, [*cmd, "--help"])
        assert res.exit_code == 0 and "Usage" in res.stdout
