"""Bits of cells stored without them, recounted from their config with the tokenizer alone (memlaw.recount)."""

import json
import math

import pytest
from typer.testing import CliRunner

from memlaw import bits, recount
from memlaw.cli import app
from memlaw.store import open_store
from memlaw.sweep.cell import CellResult, prepare_cell
from memlaw.sweep.grid import sweep_from_dict

PER_NUMBER = 2 + 9 * math.log2(10)              # a PhoneBook number: first digit 6-9, nine uniform digits
STRIPPED = ("bits_kind", "bits_basis", "bits_total", "bits_stored", "bits_per_param", "bits_total_upper",
            "bits_stored_upper", "bits_per_param_upper")


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _em(cell) -> float:
    """A planted capacity: rank r recalls ℓ ≤ 20·r in full (rank 4 seed 1 falls short at ℓ 80)."""
    return 1.0 if cell.length <= 20 * cell.rank and not (cell.rank == 4 and cell.seed == 1) else 0.0


@pytest.fixture(scope="module")
def stores(tmp_path_factory, tiny_base):
    """Two stores of the same planted tiny grid (PhoneBook and long-context r100, r40): one whose cells carry
    the bits a sweep stores (`prepare_cell`'s count, as `cell_result` keeps it), one with them stripped as cells
    run before memlaw.bits were (bits_stored/bits_per_param None, no bits_kind)."""
    grid = sweep_from_dict({"name": "g", "model": "tiny", "dtype": "float32", "ranks": [1, 2, 4], "lengths": [20, 40, 80],
                            "seeds": [0, 1], "adapter": {"layer": 1}, "prompt": {"template": "plain"},
                            "benchmarks": [{"name": "phonebook"}, {"name": "long-context", "ratio": "r100"},
                                           {"name": "long-context", "ratio": "r40"}],
                            "train": {"max_steps": 5}})
    tmp = tmp_path_factory.mktemp("recount")
    prepared = {}
    with open_store(tmp / "with.db") as full, open_store(tmp / "without.db") as old:
        for c in grid.cells():
            memory = (c.benchmark, c.length)           # the records and their bits: the same at every rank and seed
            prep = prepared[memory] = prepared.get(memory) or prepare_cell(c, tiny_base)
            n, params, em = len(prep.enc.records), 2 * 64 * c.rank, _em(c)
            base = {"length": c.length, "delta_loss": 3.0 * c.rank ** 0.5 / c.length ** 0.2, "em_rate": em,
                    "n_params": params, "n_records": n,
                    "records": {"em": [em == 1.0] * n, "n_value": [len(v) for v in prep.enc.value_ids]}}
            full.add_cell(CellResult(c.key, c, "done", {**base, **prep.bits.metrics([em == 1.0] * n, params)}), sweep="g")
            stripped = {**base, "bits_stored": None, "bits_per_param": None}
            if c.benchmark.name == "phonebook" and c.seed == 1:
                del stripped["n_records"]                # recounted from its config, not from its record count
            old.add_cell(CellResult(c.key, c, "done", stripped), sweep="g")
    return tmp / "with.db", tmp / "without.db"


@pytest.fixture
def no_weights(monkeypatch):
    """Fail any load of model weights, and count tokenizer loads, with the recount caches emptied."""
    import transformers

    from memlaw import models

    def refuse(*a, **k):
        raise AssertionError("model weights loaded")

    for target, name in ((models, "build_tiny"), (models, "load_base"), (models, "_load_pretrained"),
                         (models.AutoModelForCausalLM, "from_pretrained"),
                         (transformers.AutoModelForCausalLM, "from_pretrained")):
        monkeypatch.setattr(target, name, refuse)
    loads = []
    real = models.load_tokenizer
    monkeypatch.setattr(models, "load_tokenizer", lambda name, **k: loads.append(name) or real(name, **k))
    monkeypatch.setattr(recount, "_TOKENIZERS", {})
    monkeypatch.setattr(recount, "_COUNTS", {})
    return loads


def _capacity(fit_json: str) -> dict:
    """{(benchmark, ratio): the frontier's points} of `memlaw fit --json`."""
    return {(f["config"]["benchmark"]["name"], f["config"]["benchmark"].get("ratio")): f["capacity"]["frontier"]
            for f in json.loads(fit_json)["fits"]}


def _without_recounted(points):
    return [{k: v for k, v in p.items() if k != "recounted"} for p in points]


def test_stripped_cells_give_the_frontier_bits_of_stored_ones(stores, no_weights):
    with_bits, without = stores
    stored = _capacity(_run("fit", "--store", with_bits, "--json").stdout)
    got = _capacity(_run("fit", "--store", without, "--json").stdout)
    assert sorted(got) == sorted(stored) and len(got) == 3
    for bench, points in got.items():
        assert _without_recounted(points) == _without_recounted(stored[bench])
        assert [p["recounted"] for p in points] == [p["cells"] for p in points]        # every one recounted
        assert all(p["recounted"] == 0 for p in stored[bench])
        assert [(p["rank"], p["length"], p["cells"], p["of"]) for p in points] == [(1, 20, 2, 2), (2, 40, 2, 2),
                                                                                   (4, 80, 1, 2)]
        upper = bench == ("long-context", "r100")        # neighbouring random tokens: a bound (value_bits)
        assert all(p["bits_kind"] == ("upper" if upper else "exact") and p["bits_upper" if upper else "bits"] > 0
                   for p in points)
    for p in got["phonebook", None]:           # ℓ/10 numbers (10 byte tokens each) of 31.9 bits over 128·r params
        assert p["bits"] == pytest.approx(p["length"] / 10 * PER_NUMBER)
        assert p["bits_per_param"] == pytest.approx(p["length"] / 10 * PER_NUMBER / (128 * p["rank"]))
    assert no_weights == ["tiny"]                 # the tokenizer once for the whole store, never the weights


def test_a_csv_export_of_stripped_cells_gives_the_same_frontier_bits(stores, no_weights, tmp_path):
    with_bits, without = stores
    for db, name in ((with_bits, "with.csv"), (without, "without.csv")):
        assert _run("runs", "export", "--store", db, "--out", tmp_path / name).exit_code == 0
    stored = _capacity(_run("fit", "--csv", tmp_path / "with.csv", "--json").stdout)
    got = _capacity(_run("fit", "--csv", tmp_path / "without.csv", "--json").stdout)
    assert {b: _without_recounted(p) for b, p in got.items()} == {b: _without_recounted(p) for b, p in stored.items()}
    assert all(p["recounted"] == p["cells"] for points in got.values() for p in points)
    assert no_weights == ["tiny"]


def test_fit_text_and_markdown_say_the_bits_were_recounted(stores, no_weights):
    with_bits, without = stores
    text = _run("fit", "--store", without, "--where", "benchmark.ratio=r100").stdout
    assert "recounted from the cells' configs" in text and "ranks 1 (2 cells), 2 (2 cells), 4 (1 cell)" in text
    md = _run("fit", "--store", without, "--where", "benchmark.ratio=r100", "--markdown").stdout
    assert "recounted from the cells' configs" in md
    assert "recounted" not in _run("fit", "--store", with_bits, "--where", "benchmark.ratio=r100").stdout


def test_the_report_cell_table_marks_recounted_bits(stores, no_weights):
    from memlaw import analysis
    from memlaw.report.sections import cells_section

    with_bits, without = stores
    with open_store(without, create=False) as db:
        rows = recount.with_bits_all(db.load_cells("benchmark.ratio=r40"))
    with open_store(with_bits, create=False) as db:
        fresh = db.load_cells("benchmark.ratio=r40")
    got = {r["key"]: r["bits_per_param"] for r in analysis.cell_rows(rows)}
    want = {r["key"]: r["bits_per_param"] for r in analysis.cell_rows(fresh)}
    assert got == {k: f"{v} (recounted)" for k, v in want.items()}
    assert any(v != "0.0000" for v in want.values())
    assert any("(recounted)" in p for p in cells_section(rows, [], False).paragraphs)


def test_an_old_phonebook_cell_counted_from_its_records_is_marked_recounted():
    row = {"rank": 1, "length": 30, "em_rate": 1.0, "n_params": 100, "benchmark": "phonebook",
           "metrics": {"n_records": 3, "em": 3}}
    assert bits.recounted(row) and bits.per_param_text(row) == f"{3 * PER_NUMBER / 100:.4f} (recounted)"
    [p] = bits.frontier_bits([row])
    assert p.recounted == 1 and p.bits == pytest.approx(3 * PER_NUMBER)
    fresh = {**row, "metrics": {"bits_kind": "exact", "bits_total": 3 * PER_NUMBER, "bits_stored": 3 * PER_NUMBER}}
    assert not bits.recounted(fresh) and bits.frontier_bits([fresh])[0].recounted == 0


def test_an_upper_bound_stays_labelled_one_when_recounted(tmp_path, no_weights):
    """A records file has no known generator: its recount is an upper bound, under the _upper names."""
    from memlaw.benchmarks import build
    from memlaw.models import build_tiny_tokenizer

    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps({"key": f"k{i}", "value": f"{i:05d}"}) + "\n" for i in range(8)))
    grid = sweep_from_dict({"name": "u", "model": "tiny", "ranks": [2], "lengths": [20],
                            "benchmark": {"name": "records", "path": str(path)}, "train": {"max_steps": 5}})
    [cell] = grid.cells()
    records, _ = build("records", build_tiny_tokenizer(), 20, path=str(path), sha256=cell.benchmark.sha256)
    row = {"key": cell.key, "rank": 2, "length": 20, "em_rate": 1.0, "n_params": 256, "config": cell.to_dict(),
           "metrics": {"n_records": len(records), "bits_stored": None}}
    m = recount.with_bits(row)["metrics"]
    assert m["bits_kind"] == "upper" and m[bits.RECOUNTED] and "bits_total" not in m
    assert m["bits_total_upper"] == pytest.approx(4 * 5 * math.log2(10))       # four 5-digit values
    assert bits.per_param_text(recount.with_bits(row)) == f"≤ {4 * 5 * math.log2(10) / 256:.4f} (recounted)"


def test_a_memory_that_no_longer_rebuilds_alike_keeps_its_bits_unknown(stores, no_weights, caplog):
    _, without = stores
    with open_store(without, create=False) as db:
        row = db.load_cells("benchmark.ratio=r100,rank=1,length=20,seed=0")[0]
    other = [t + 1 for t in row["metrics"]["records"]["n_value"]]
    moved = {**row, "metrics": {**row["metrics"], "records": {**row["metrics"]["records"], "n_value": other}}}
    assert recount.with_bits(moved) is moved and bits.row_bits(moved) is None
    assert "differs from the one it stored" in caplog.text
    gone = {**row, "config": {**row["config"], "model": "no-such-org/no-such-model-xyz"}}
    assert recount.with_bits(gone) is gone and "left unknown" in caplog.text


@pytest.mark.slow
def test_an_embedded_models_tokenizer_loads_without_its_weights(tmp_path, no_weights):
    """smollm2-135m from memlaw's cache and from the GGUF alone (an empty cache): the same tokenizer."""
    from memlaw.models import load_tokenizer

    cached, gguf = load_tokenizer("smollm2-135m"), load_tokenizer("smollm2-135m", cache_dir=tmp_path)
    text = "Hello wörld 12345 日本 <|im_end|>"
    assert cached(text).input_ids == gguf(text).input_ids and len(cached) == len(gguf)
    assert not any(tmp_path.iterdir())                 # nothing built in the cache
