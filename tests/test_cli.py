"""The CLI end to end on the tiny model: write, recall, verify, errors (one line, exit 2)."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from memlaw.cli import app
from memlaw.records import write_records

runner = CliRunner()


@pytest.fixture(scope="module")
def written(tmp_path_factory, tiny_records):
    d = tmp_path_factory.mktemp("cli")
    write_records(d / "mem.jsonl", tiny_records)
    res = runner.invoke(app, ["write", str(d / "mem.jsonl"), "--model", "tiny", "--rank", "8", "--layer", "1",
                              "--template", "plain", "--lr", "0.03", "--batch-size", "8", "--max-steps", "400",
                              "--dtype", "float32", "--out", str(d / "ad"), "--json"])
    assert res.exit_code == 0, res.output
    return d, json.loads(res.stdout)


def test_write_json_reports_certified_memory(written, tiny_records):
    _, out = written
    assert out["certified"] == out["em"] == len(tiny_records)
    assert out["delta_loss"] > 0 and out["steps"] <= 400
    assert all(r["output"] != tiny_records[i].value for i, r in enumerate(out["records"]))  # redacted in JSON


def test_recall_prints_values(written, tiny_records):
    d, _ = written
    res = runner.invoke(app, ["recall", str(d / "ad"), tiny_records[0].key, tiny_records[3].key])
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines() == [tiny_records[0].value, tiny_records[3].value]


def test_verify_table_and_json(written, tiny_records):
    d, _ = written
    res = runner.invoke(app, ["verify", str(d / "ad")])
    assert res.exit_code == 0, res.output
    for col in ("certified", "EM", "tf acc", "free acc", "stubborn", "L_base", "L_final", "ΔL"):
        assert col in res.stdout
    res = runner.invoke(app, ["verify", str(d / "ad"), "--json"])
    data = json.loads(res.stdout)
    assert data["summary"]["em"] == len(tiny_records) and data["integrity"] == "ok"


def test_verify_detects_tampering(written, tmp_path):
    import shutil

    d, _ = written
    copy = tmp_path / "ad"
    shutil.copytree(d / "ad", copy)
    f = copy / "adapter.safetensors"
    data = bytearray(f.read_bytes())
    data[-2] ^= 0xFF
    f.write_bytes(bytes(data))
    res = runner.invoke(app, ["verify", str(copy)])
    assert res.exit_code == 2
    assert "tampered" in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("content,cause", [
    ('{"key": "a", "value": "1"}\n{"key": "a", "value": "2"}\n', "mem.jsonl:2"),
    ('{"key": "a", "value": "1"\n', "mem.jsonl:1"),
    ('{"key": "a", "value": ""}\n', "mem.jsonl:1"),
])
def test_bad_records_exit_2_with_one_line(tmp_path, content, cause):
    (tmp_path / "mem.jsonl").write_text(content)
    res = runner.invoke(app, ["write", str(tmp_path / "mem.jsonl"), "--model", "tiny", "--out", str(tmp_path / "ad")])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and cause in lines[0] and "Traceback" not in res.output
    assert not (tmp_path / "ad").exists()


def test_help_for_every_command():
    for cmd in ("write", "recall", "verify", "demo"):
        res = runner.invoke(app, [cmd, "--help"])
        assert res.exit_code == 0 and "Usage" in res.stdout


def test_verify_margin_certifies_exactly_the_records_above_it(written, tiny_records):
    """--margin m: certified = records whose every answer p_t > 0.5 + m, against p_t computed here."""
    from memlaw.encode import encode
    from memlaw.forward import TeacherForcer
    from memlaw.memory import Memory
    from memlaw.forward import answer_probs

    d, _ = written
    with Memory.open(d / "ad") as mem:
        enc = encode(tiny_records, mem.base.tokenizer, mem.prompt)
        low = sorted(float(tp.p.min()) for tp in answer_probs(TeacherForcer(mem.base, enc, plain=True)).values())
    margin = (low[3] + low[4]) / 2 - 0.5           # between the 4th and 5th smallest minimum p_t
    assert 0 < margin < 0.5
    res = runner.invoke(app, ["verify", str(d / "ad"), "--no-recall", "--json", "--margin", f"{margin:.6f}"])
    assert res.exit_code == 1, res.output                  # 4 records not certified: ran, did not hold
    assert json.loads(res.stdout)["summary"]["certified"] == len(low) - 4
    verdict = [line for line in res.stderr.splitlines() if line.startswith("memlaw:")]   # others: progress lines
    assert len(verdict) == 1 and verdict[0].startswith("memlaw: 4 of 8 records not certified")


@pytest.mark.parametrize("margin", ["-0.1", "0.5"])
def test_bad_margin_is_refused(written, tmp_path, margin):
    d, _ = written
    for args in (["verify", str(d / "ad")], ["write", str(d / "mem.jsonl"), "--model", "tiny", "--out", str(tmp_path / "x")]):
        res = runner.invoke(app, [*args, "--margin", margin])
        assert res.exit_code == 2
        assert "margin must be in [0, 0.5)" in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_write_records_the_device_it_trained_on(written):
    d, _ = written
    meta = json.loads((d / "ad" / "memlaw.json").read_text())
    assert meta["training"]["device"] == "cpu"          # --device auto on a machine torch sees no GPU on


@pytest.mark.parametrize("device,cause", [("tpu9", "unknown device 'tpu9'"), ("cuda", "sees no CUDA GPU")])
def test_bad_device_is_refused(written, tmp_path, device, cause):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("torch sees a GPU here")
    d, _ = written
    for args in (["verify", str(d / "ad")], ["recall", str(d / "ad"), "key a"],
                 ["write", str(d / "mem.jsonl"), "--model", "tiny", "--out", str(tmp_path / "x")]):
        res = runner.invoke(app, [*args, "--device", device])
        assert res.exit_code == 2, res.output
        assert cause in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_cli_law_choices_are_the_law_forms_and_the_cli_starts_without_numpy():
    from memlaw.cli.fit import FitLaw
    from memlaw.cli.plan import LawForm
    from memlaw.law import FORMS, fit_table
    assert [f.value for f in FitLaw] == ["both", *FORMS] and [f.value for f in LawForm] == ["auto", *FORMS]
    assert {name: cls.form for name, cls in FORMS.items()} == {"paper": "paper", "bounded": "bounded"}
    rows = [{"rank": r, "length": n, "delta_loss": 2.0 * r ** 0.5 * n ** -0.4, "L_base": 3.0, "em": 0.5}
            for r in (1, 2, 4, 8) for n in (10, 20, 40, 80)]
    assert set(fit_table(rows, law=FitLaw.both.value)["forms"]) == set(FORMS)      # what --law both fits
    code = "import sys, memlaw.cli; heavy = {'numpy', 'scipy', 'torch'} & set(sys.modules); assert not heavy, heavy"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_cli_choices_are_the_config_literals():
    from memlaw.cli.memory import Kind, Objective, Until
    from memlaw.config import AdapterConfig, ObjectiveConfig, TrainConfig, choices
    assert [k.value for k in Kind] == list(choices(AdapterConfig, "kind")) == ["probe", "lora"]
    assert [o.value for o in Objective] == list(choices(ObjectiveConfig, "name"))
    assert "memft-sw-curriculum" in [o.value for o in Objective] and Objective.sft.value == "sft"
    assert [u.value for u in Until] == list(choices(TrainConfig, "until"))
