"""`memlaw update` and `Memory.update` on the tiny model: warm start, certificate, old values gone, files
and history, refusals with nothing written."""

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memlaw.adapters import check_integrity, read_meta
from memlaw.cli import app
from memlaw.config import AdapterConfig, PromptConfig, TrainConfig
from memlaw.records import Record, load_records, records_sha256, write_records

runner = CliRunner()
NEW = Record("key i", "123123")


@pytest.fixture(scope="module")
def memory(tmp_path_factory, tiny_base, tiny_records):
    """A certified memory of the 8 tiny records, written once; tests update copies of it."""
    from memlaw.memory import write_memory

    d = tmp_path_factory.mktemp("mem")
    out = write_memory(tiny_records, model=tiny_base, out=d / "ad", prompt=PromptConfig(template="plain"),
                       adapter=AdapterConfig(kind="probe", rank=8, layer=1),
                       train=TrainConfig(lr=0.03, batch_size=8, max_steps=400, until="certified"))
    assert out.train.certified
    return d / "ad"


def snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.fixture
def copy(memory, tmp_path):
    shutil.copytree(memory, tmp_path / "ad")
    return tmp_path / "ad"


def at_write_lr(directory: Path):
    """The update's train config at the write's lr. `UPDATE_LR_FACTOR` is measured on SmolLM2; the tiny random
    model's update certifies in 83 steps at the write's lr and not within the fixture's 400 at a quarter of it."""
    from memlaw.update import update_settings

    return update_settings(read_meta(directory), lr=0.03)[1]


def changed_value(tiny_records):
    return Record(tiny_records[0].key, "999999" if tiny_records[0].value != "999999" else "888888")


def test_update_in_place_certifies_and_forgets(copy, tiny_base, tiny_records):
    from memlaw.memory import Memory

    change = changed_value(tiny_records)
    before = read_meta(copy)
    with Memory.open(copy, base=tiny_base) as mem:
        outcome = mem.update([change, NEW], delete=[tiny_records[1].key], leakage=True, random_keys=8,
                             train=at_write_lr(copy))
        assert outcome.saved and outcome.out == copy and outcome.certified and outcome.old_recalled == []
        assert outcome.counts == {"added": 1, "changed": 1, "deleted": 1, "n_records_before": 8, "n_records": 8}
        # the Memory now holds the updated adapter: recall it, independently of the outcome's own check
        got = mem.recall([change.key, NEW.key, tiny_records[1].key, tiny_records[2].key])
        assert got[:2] == [change.value, NEW.value] and got[3] == tiny_records[2].value
        assert got[2] == ""                                  # a deleted key answers nothing
        v = mem.verify().summary()
        assert v["certified"] == v["em"] == v["n_records"] == 8
    final = [change, *tiny_records[2:], NEW]
    assert load_records(copy / "records.jsonl") == final
    meta = read_meta(copy)
    assert check_integrity(copy, meta) == [] and meta["records_sha256"] == records_sha256(final)
    assert meta["created"] == before["created"] and meta["training"] == before["training"]
    (entry,) = meta["history"]
    assert entry["added"] == entry["changed"] == entry["deleted"] == 1 and entry["n_records"] == 8
    assert entry["certified"] and entry["old_values_recalled"] == 0 and entry["steps"] == outcome.train.steps > 0
    assert entry["records_sha256_before"] == before["records_sha256"] and entry["train"]["until"] == "certified"
    assert not any(r.value in json.dumps(meta["history"]) for r in [*tiny_records, change, NEW])
    leak = outcome.leakage.summary()
    assert leak["n_watched"] == 2 and leak["watched_values_leaked"] == 0


def test_cli_update_to_a_new_directory_then_again_in_place(copy, tiny_records, tmp_path):
    write_records(tmp_path / "changes.jsonl", [NEW])
    original = snapshot(copy)
    res = runner.invoke(app, ["update", str(copy), str(tmp_path / "changes.jsonl"), "--out", str(tmp_path / "new"),
                              "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["saved"] and data["added"] == 1 and data["summary"]["certified"] == 9
    assert "no law available" in data["capacity"] and "no law available" in res.stderr
    assert snapshot(copy) == original                        # --out leaves the memory as it was
    assert len(load_records(tmp_path / "new" / "records.jsonl")) == 9
    gone = tmp_path / "gone.txt"
    gone.write_text(f"{tiny_records[3].key}\n{NEW.key}\n")
    res = runner.invoke(app, ["update", str(tmp_path / "new"), "--delete-file", str(gone)])
    assert res.exit_code == 0, res.output
    assert "2 deleted (9 -> 7 records)" in res.stdout and "old values recalled 0/2" in res.stdout
    assert not any(r.value in res.stdout + res.stderr for r in [*tiny_records, NEW])
    assert [h["deleted"] for h in read_meta(tmp_path / "new")["history"]] == [0, 2]


def _refused(args, copy, match):
    original = snapshot(copy)
    res = runner.invoke(app, ["update", str(copy), *args])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], lines
    assert snapshot(copy) == original and not [p for p in copy.parent.iterdir() if p.name.startswith(".ad.")]
    return lines[0]


def test_refusals_write_nothing(copy, tiny_records, tmp_path):
    same = tmp_path / "same.jsonl"
    write_records(same, [tiny_records[2]])
    _refused([str(same)], copy, "already has this value")
    _refused(["--delete", "no such key"], copy, "is not in the memory")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"key": "k", "value": "1"}\n{"key": "k2", "vaule": "2"}\n')
    _refused([str(bad)], copy, "bad.jsonl:2")
    _refused([], copy, "nothing to update")
    _refused(["--delete", tiny_records[0].key, "--max-steps", "0"], copy, "max_steps must be an integer >= 1")
    other = tmp_path / "other.jsonl"
    write_records(other, tiny_records[:4])
    _refused(["--delete", tiny_records[0].key, "--records", str(other)], copy, "not the records")
    (tmp_path / "a-file").write_text("x")
    _refused(["--delete", tiny_records[0].key, "--out", str(tmp_path / "a-file")], copy, "is not a directory")
    (copy / "notes.txt").write_text("mine")                  # in place would delete it with the old directory
    _refused(["--delete", tiny_records[0].key], copy, "holds files memlaw did not write")
    (copy / "notes.txt").unlink()
    shutil.copytree(copy, tmp_path / "another")
    _refused(["--delete", tiny_records[0].key, "--out", str(tmp_path / "another")], copy, "already holds a memory")


def test_refused_on_another_base_model(copy, tiny_base, tiny_records):
    import dataclasses

    from memlaw.errors import AdapterError
    from memlaw.update import update_memory

    original = snapshot(copy)
    other = dataclasses.replace(tiny_base, fingerprint="0" * 64)
    with pytest.raises(AdapterError, match="refusing to load onto"):
        update_memory(copy, delete=[tiny_records[0].key], base=other)
    assert snapshot(copy) == original


def test_not_certified_within_the_budget_writes_nothing(copy, tiny_records):
    original = snapshot(copy)
    res = runner.invoke(app, ["update", str(copy), "--delete", tiny_records[0].key, "--max-steps", "1"])
    assert res.exit_code == 1, res.output
    assert "did not certify every record within 1 steps" in res.stderr and "nothing was written" in res.stderr
    assert snapshot(copy) == original


def test_an_old_value_that_still_comes_back_is_not_saved(copy, tiny_base, tiny_records, monkeypatch):
    """The gate itself: greedy decoding made to return the old value of the changed key."""
    import memlaw.verify
    from memlaw.update import update_memory

    change = changed_value(tiny_records)
    old = tiny_base.tokenizer(tiny_records[0].value, add_special_tokens=False).input_ids
    real = memlaw.verify.greedy
    monkeypatch.setattr(memlaw.verify, "greedy", lambda base, prompts, *a, **k: (
        [old for _ in prompts] if len(prompts) == 1 else real(base, prompts, *a, **k)))
    original = snapshot(copy)
    outcome = update_memory(copy, [change], base=tiny_base)
    assert outcome.certified and outcome.old_recalled == [change.key] and not outcome.saved
    assert snapshot(copy) == original


def test_update_settings_inherit_what_was_written(memory):
    from memlaw.config import CERTIFY_LR
    from memlaw.update import RETIRE_MARGIN, UPDATE_LR_FACTOR, update_settings

    meta = read_meta(memory)
    obj, train = update_settings(meta)
    assert (train.batch_size, train.max_steps, train.until) == (8, 400, "certified")
    assert train.lr == pytest.approx(0.03 * UPDATE_LR_FACTOR) and UPDATE_LR_FACTOR == 0.25   # a quarter of the write's
    unset = {**meta, "training": {**meta["training"], "train": {**meta["training"]["train"], "lr": None}}}
    assert update_settings(unset)[1].lr == pytest.approx(CERTIFY_LR[meta["kind"]] / 4)     # the kind's default, / 4
    assert read_meta(memory)["training"]["train"]["retire_margin"] is None and train.retire_margin == RETIRE_MARGIN
    obj, train = update_settings(meta, lr=0.01, epochs=5, retire_margin=0.0)
    assert (train.lr, train.epochs, train.max_steps, train.retire_margin) == (0.01, 5, None, 0.0)
    meta["training"]["train"]["retire_margin"] = 0.1                  # a memory written with its own margin
    assert update_settings(meta)[1].retire_margin == 0.1


@pytest.mark.parametrize("ratio,warns", [(10, False), (2, True)])
def test_capacity_note_from_a_store(tmp_path, ratio, warns):
    """Cells planted on the law, fully recalled where length <= ratio * rank: the frontier says which rank ℓ needs."""
    from memlaw.law import law
    from memlaw.store import open_store
    from memlaw.sweep import sweep_from_dict
    from memlaw.sweep.cell import CellResult
    from memlaw.update import capacity_note

    grid = sweep_from_dict({"name": "g", "model": "tiny", "ranks": [1, 2, 4, 8], "lengths": [10, 20, 40, 80],
                            "train": {"max_steps": 5}})
    with open_store(tmp_path / "runs.db") as db:
        for cell in grid.cells():
            full = cell.length <= ratio * cell.adapter.rank
            dl = float(law(cell.adapter.rank, cell.length, 3.0, 0.5, 0.2, 0.1))
            metrics = {"length": cell.length, "delta_loss": dl, "L_base": 3.0, "L_final": 3.0 - dl,
                       "em_rate": 1.0 if full else 0.3}
            db.add_cell(CellResult(cell.key, cell, "done", metrics, {}, [], None), sweep="g")
    meta = {"rank": 8, "kind": grid.cells()[0].adapter.kind, "base_model": {"name": "tiny"}}
    note = capacity_note(tmp_path / "runs.db", meta, 60, 10, 3.0)
    import re

    need = int(re.search(r"needs? rank (\d+)", note).group(1))
    if not warns:                                            # rank 8 recalled ℓ = 80 >= 60 fully: measured
        assert need == 8 and "by the measured cells in" in note and "fit rank 8" in note
    assert ("warning" in note) == warns == (need > 8) and ("may not certify" in note) == warns
    assert "no law available" in capacity_note(tmp_path / "missing.db", meta, 60, 10, 3.0)
    assert "no law available" in capacity_note(None, meta, 60, 10, 3.0)


def test_a_lora_memory_updates_in_place(tmp_path, tiny_base, tiny_records):
    """LoRA saves from its attached PEFT model: the update keeps it attached until saved."""
    from memlaw.memory import Memory, write_memory
    from memlaw.update import update_memory

    write_memory(tiny_records, model=tiny_base, out=tmp_path / "ad", prompt=PromptConfig(template="plain"),
                 adapter=AdapterConfig(kind="lora", rank=8),
                 train=TrainConfig(lr=0.01, batch_size=8, max_steps=400, until="certified"))
    change = changed_value(tiny_records)
    outcome = update_memory(tmp_path / "ad", [change], delete=[tiny_records[1].key], base=tiny_base)
    assert outcome.saved and outcome.certified and outcome.old_recalled == []
    assert (tmp_path / "ad" / "adapter_config.json").is_file()
    with Memory.open(tmp_path / "ad", base=tiny_base) as mem:
        assert mem.recall([change.key, tiny_records[1].key]) == [change.value, ""]
        s = mem.verify().summary()
        assert s["certified"] == s["em"] == s["n_records"] == 7


def test_records_held_with_margin_rest_while_the_changes_train(copy, tiny_base, tiny_records, monkeypatch):
    """An update trains with update.RETIRE_MARGIN: old records certified with that margin leave the batches
    (memlaw.pace), and no batch holds a record resting when it was drawn."""
    import memlaw.train
    from memlaw.update import RETIRE_MARGIN, update_memory

    drawn: list[tuple[list[int], set[int]]] = []
    real = memlaw.train._Run.next_rows

    def spy(self):
        rows = real(self)
        drawn.append((rows, set(self.pace.retired)))
        return rows

    monkeypatch.setattr(memlaw.train._Run, "next_rows", spy)
    outcome = update_memory(copy, [changed_value(tiny_records), NEW], delete=[tiny_records[1].key], base=tiny_base,
                            train=at_write_lr(copy))
    assert outcome.saved and outcome.certified
    old = set(range(1, 7))      # the final order: the changed record, the 6 kept ones, NEW, then the deleted key
    assert any(resting & old for _, resting in drawn), "no old record rested"
    assert all(not set(rows) & resting for rows, resting in drawn)
    assert read_meta(copy)["history"][-1]["train"]["retire_margin"] == RETIRE_MARGIN
