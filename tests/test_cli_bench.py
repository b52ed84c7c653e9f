"""`memlaw bench methods` end to end on the tiny model: the table, the JSONL rows, resume, errors."""

import json

from typer.testing import CliRunner

from memlaw.cli import app

runner = CliRunner()
TINY = ["--model", "tiny", "--layer", "1", "--lr", "0.03", "--template", "plain", "--dtype", "float32",
        "--batch-size", "8", "--steps", "3"]


def test_bench_methods_prints_the_table_stores_rows_and_resumes(tmp_path):
    out = tmp_path / "pb.jsonl"
    args = ["bench", "methods", "--benchmark", "phonebook", "--ranks", "2,8", "--lengths", "40", *TINY,
            "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    for text in ("SFT", "MemFT-OT", "MemFT-SW", "r2", "r8", "EM %", "6 cells (6 run"):
        assert text in res.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and {r["method"] for r in rows} == {"SFT", "MemFT-OT", "MemFT-SW"}
    assert all("em_rate" in r["metrics"] and r["config"]["train"]["max_steps"] == 3 for r in rows)
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "6 cells (0 run, 6 from" in again.stdout
    assert len(out.read_text().splitlines()) == 6


def test_bench_methods_linear_rule_json(tmp_path):
    res = runner.invoke(app, ["bench", "methods", "--benchmark", "linear-rule", "--ranks", "4", "--lengths", "8",
                              "--held-out", "4", *TINY, "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [r["method"] for r in rows] == ["SFT", "MemFT-OT", "MemFT-SW"]
    assert all(len(r["score"]) == 2 and r["generalization"]["n_records"] == 4 for r in rows)


def test_bench_methods_bad_length_is_one_line_exit_2():
    res = runner.invoke(app, ["bench", "methods", "--benchmark", "phonebook", "--ranks", "2", "--lengths", "45", *TINY])
    assert res.exit_code == 2
    assert res.stderr.strip().count("\n") == 0 and "PB40 or PB50" in res.stderr
