"""The certificate's margin by dtype, and its confirmation: a write or an update whose certificate greedy
decoding contradicts does not succeed (exit 1, one line naming the count, the dtype and the advice)."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from memlaw.certificate import (AUTO_MARGIN, BF16_SHIFT, margin_note, not_confirmed_advice, parse_margin,
                                resolve_margin)
from memlaw.cli import app
from memlaw.errors import ConfigError
from memlaw.records import write_records

runner = CliRunner()
TINY = ["--model", "tiny", "--rank", "8", "--layer", "1", "--template", "plain", "--lr", "0.03", "--batch-size", "8",
        "--max-steps", "400"]


# ---------------------------------------------------------------- the margin, by dtype


def test_auto_margin_covers_the_measured_bf16_shift_and_is_zero_in_float32():
    import torch

    assert AUTO_MARGIN["bfloat16"] > BF16_SHIFT == 0.063               # docs/performance.md's measurement
    assert resolve_margin("auto", torch.bfloat16) == resolve_margin("auto", "bf16") == 0.07
    assert resolve_margin("auto", torch.float32) == resolve_margin("auto", "float32") == 0.0
    assert resolve_margin("auto", "float32", at_least=0.1) == 0.1       # a memory's own, larger margin stays
    assert resolve_margin("auto", "bfloat16", at_least=0.03) == 0.07    # a smaller one is raised
    assert resolve_margin(0.0, torch.bfloat16, at_least=0.2) == 0.0     # a number is taken as given
    assert resolve_margin("0.02", "bfloat16") == 0.02


@pytest.mark.parametrize("bad", ["0.5", "-0.1", "nan", "inf", "lots", True])
def test_a_margin_is_auto_or_a_number_in_0_to_half(bad):
    with pytest.raises(ConfigError, match=r"--margin must be .*(auto|\[0, 0\.5\))"):
        parse_margin(bad, "--margin")
    assert parse_margin(" AUTO ") == "auto" and parse_margin(0) == 0.0


def test_margin_note_says_how_it_was_chosen():
    auto = margin_note("auto", "torch.bfloat16", 0.07)
    assert auto["value"] == 0.07 and auto["chosen"] == "auto" and auto["dtype"] == "bfloat16"
    assert "0.063" in auto["why"] and "docs/performance.md" in auto["why"]
    assert margin_note(0.1, "float32", 0.1) == {"value": 0.1, "chosen": "given", "dtype": "float32"}


def test_the_advice_follows_the_dtype_and_the_margin():
    assert "--margin auto" in not_confirmed_advice(0.0, "bfloat16") and "0.063" in not_confirmed_advice(0.05, "bf16")
    assert "raise --margin, or use float32" in not_confirmed_advice(0.07, "bfloat16")
    assert "in float32: raise --margin" in not_confirmed_advice(0.0, "float32")


def test_written_margin_is_the_latest_update_s():
    from memlaw.update import written_margin

    meta = {"training": {"train": {"margin": 0.07}}}
    assert written_margin({}) == 0.0 and written_margin(meta) == 0.07
    assert written_margin({**meta, "history": [{"train": {"margin": 0.1}}, {"train": {"margin": 0.2}}]}) == 0.2


# ---------------------------------------------------------------- certified, but greedy decoding disagrees


def wrong_first_record(monkeypatch):
    """Make greedy decoding return a wrong first token for the first prompt of every batched call (the
    certificate's confirmation); single-prompt calls are left alone."""
    import memlaw.verify

    real = memlaw.verify.greedy

    def greedy(base, prompts, *args, **kwargs):
        outs = real(base, prompts, *args, **kwargs)
        if len(prompts) > 1 and outs[0]:
            outs[0] = [(outs[0][0] + 1) % base.tokenizer.vocab_size, *outs[0][1:]]
        return outs

    monkeypatch.setattr(memlaw.verify, "greedy", greedy)


def test_write_whose_certificate_is_not_confirmed_exits_1(tmp_path, tiny_records, monkeypatch):
    """bf16, margin auto: certified at 0.07 (stated in memlaw.json), one record's greedy output made wrong:
    exit 1, one line with the count, the margin, the dtype and the advice, and no value anywhere."""
    write_records(tmp_path / "mem.jsonl", tiny_records)
    wrong_first_record(monkeypatch)
    res = runner.invoke(app, ["write", str(tmp_path / "mem.jsonl"), *TINY, "--dtype", "bfloat16",
                              "--out", str(tmp_path / "ad"), "--json"])
    assert res.exit_code == 1, res.output
    out = json.loads(res.stdout)
    assert out["certified"] == len(tiny_records) and out["em"] == len(tiny_records) - 1
    assert out["certificate_violations"] == 1 and out["confirmed"] is False
    assert out["margin"]["value"] == 0.07 and all(r["min_p"] > 0.5 + 0.07 for r in out["records"])
    line = res.stderr.strip().splitlines()[-1]                        # after the cost and progress lines
    assert line.startswith(f"memlaw: 1 of {len(tiny_records)} records certified but not recalled exactly by greedy "
                           "decoding (certificate not confirmed at margin 0.07 in bfloat16; first: key 'key a')")
    assert "raise --margin, or use float32" in line
    assert not any(r.value in res.output for r in tiny_records)
    meta = json.loads((tmp_path / "ad" / "memlaw.json").read_text())   # saved, like any write that ran
    assert meta["training"]["train"]["margin"] == 0.07 and meta["dtype"] == "bfloat16"
    assert meta["training"]["margin"]["chosen"] == "auto" and "0.063" in meta["training"]["margin"]["why"]

    res = runner.invoke(app, ["verify", str(tmp_path / "ad")])         # verify says the same, and why
    assert res.exit_code == 1
    assert "1 of 8 records not recalled exactly (first: key 'key a'); 1 of 8 records certified but not" in res.stderr


def test_python_api_verdict_needs_greedy_decoding_too(tiny_base, tiny_records, plain, monkeypatch):
    from memlaw import NotCertifiedError, TrainConfig, write_memory
    from memlaw.config import AdapterConfig

    wrong_first_record(monkeypatch)
    out = write_memory(tiny_records, model=tiny_base, prompt=plain, adapter=AdapterConfig(rank=8, layer=1),
                       train=TrainConfig(until="certified", lr=0.03, batch_size=8, max_steps=400))
    assert out.verification.all_certified and out.certified is False and out.train.certified
    assert (out.margin["value"], out.margin["chosen"], out.margin["dtype"]) == (0.0, "auto", "float32")
    assert out.verification.margin == 0.0 and out.verification.dtype == "float32"
    with pytest.raises(NotCertifiedError, match=r"^1 of 8 records certified but not recalled exactly .* in float32; "
                                                r"first: key 'key a'\): .* raise --margin$"):
        out.raise_unless_certified()


def test_update_whose_certificate_is_not_confirmed_writes_nothing(tmp_path, tiny_base, tiny_records, plain,
                                                                 monkeypatch):
    from memlaw.config import AdapterConfig, TrainConfig
    from memlaw.memory import write_memory
    from memlaw.records import Record

    ad = tmp_path / "ad"
    written = write_memory(tiny_records, model=tiny_base, out=ad, prompt=plain,
                           adapter=AdapterConfig(rank=8, layer=1),
                           train=TrainConfig(until="certified", lr=0.03, batch_size=8, max_steps=400))
    assert written.certified
    write_records(tmp_path / "changes.jsonl", [Record("key i", "123123")])
    original = {p.name: p.read_bytes() for p in ad.iterdir()}
    wrong_first_record(monkeypatch)
    res = runner.invoke(app, ["update", str(ad), str(tmp_path / "changes.jsonl")])
    assert res.exit_code == 1, res.output
    assert ("memlaw: 1 of 9 records certified but not recalled exactly by greedy decoding "
            "(certificate not confirmed at margin 0 in float32)") in res.stderr
    assert "nothing was written" in res.stderr and {p.name: p.read_bytes() for p in ad.iterdir()} == original
    assert "margin 0 (auto, float32); not saved" in res.stdout


def test_update_states_its_margin_in_the_history(tmp_path, tiny_base, tiny_records, plain):
    from memlaw.adapters import read_meta
    from memlaw.config import AdapterConfig, TrainConfig
    from memlaw.memory import write_memory
    from memlaw.records import Record
    from memlaw.update import update_memory

    ad = tmp_path / "ad"
    write_memory(tiny_records, model=tiny_base, out=ad, prompt=plain, adapter=AdapterConfig(rank=8, layer=1),
                 train=TrainConfig(until="certified", lr=0.03, batch_size=8, max_steps=400, margin=0.1))
    assert read_meta(ad)["training"]["train"]["margin"] == 0.1          # auto kept the larger margin given
    outcome = update_memory(ad, [Record("key i", "123123")], base=tiny_base)
    assert outcome.saved and outcome.confirmed
    entry = read_meta(ad)["history"][-1]
    assert entry["train"]["margin"] == 0.1 and entry["margin"]["chosen"] == "auto"   # the memory's own margin
    assert min(v.min_p for v in outcome.verification.records) > 0.6
