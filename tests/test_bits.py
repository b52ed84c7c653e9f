"""Bits stored, counted under the generator that made the values (memlaw.bits, benchmarks' value_bits)."""

import math

import numpy as np
import pytest

from memlaw import bits
from memlaw.benchmarks import build, generate_phonebook, phonebook, phonebook_bits, value_bits
from memlaw.benchmarks.long_context import (covered_tokens, document, draw_bits, noise_positions, paper_document,
                                            regular_token_ids)
from memlaw.config import AdapterConfig, PromptConfig
from memlaw.encode import encode
from memlaw.engine import attached
from memlaw.adapters import make_adapter
from memlaw.models import build_tiny_tokenizer
from memlaw.records import Record
from memlaw.verify import verify


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


# ---------------------------------------------------------------- PhoneBook


@pytest.mark.parametrize("n", [1, 4, 100])
def test_phonebook_bits_are_two_plus_nine_log2_10_a_number(tok, n):
    records, _ = build("phonebook", tok, 10 * n)                    # byte tokenizer: 10 tokens a number
    counted = value_bits("phonebook", tok, records)
    assert counted.kind == "exact" and len(counted.per_record) == n
    assert counted.total == pytest.approx(n * (2 + 9 * math.log2(10)), rel=1e-12)
    # the list's numbers are distinct: the joint entropy without replacement is a sliver lower
    K = 4 * 10**9
    assert 0 <= counted.total - phonebook_bits(n) <= n * n / (2 * K * math.log(2)) + 1e-9


def test_the_old_count_gave_every_digit_log2_10():
    # what this replaces: 10·log2 10 = 33.22 bits a number; the first digit takes only 4 values
    assert 10 * math.log2(10) - bits_of_one_number() == pytest.approx(math.log2(10) - 2)


def bits_of_one_number():
    return value_bits("phonebook", None, phonebook(1)).total


def test_every_number_of_the_paper_list_has_the_generators_shape():
    values = [r.value for r in phonebook(32_000)]
    assert {v[0] for v in values} == set("6789") and all(len(v) == 10 and v.isdigit() for v in values)
    assert value_bits("phonebook", None, generate_phonebook(50, seed=3)).kind == "exact"


def test_phonebook_values_of_another_shape_give_an_upper_bound():
    counted = value_bits("phonebook", None, [Record("A B:", "5123456789"), Record("C D:", "6123456789")])
    assert counted.kind == "upper" and counted.total == pytest.approx(20 * math.log2(10))


# ---------------------------------------------------------------- upper bounds


@pytest.mark.parametrize("value, expected", [
    ("0123456789", 10 * math.log2(10)),
    ("deadbeef", 32.0),
    ("DEADBEEF", 32.0),
    ("k9x2", 4 * math.log2(36)),
    ("Ab3", 3 * math.log2(62)),
    ("Hello world", 11 * math.log2(95)),
    ("héllo", 8 * 6),                                              # é is two UTF-8 bytes
])
def test_upper_bound_is_length_times_log2_of_the_character_class(value, expected):
    assert bits.upper_bound(value) == pytest.approx(expected)


def test_upper_and_exact_are_never_reported_under_one_name():
    up = bits.upper([Record("a", "12"), Record("b", "34")])
    m = up.metrics([True, False], n_params=10)
    assert m["bits_kind"] == "upper" and not {"bits_total", "bits_stored", "bits_per_param"} & set(m)
    assert m["bits_stored_upper"] == pytest.approx(2 * math.log2(10))
    assert m["bits_per_param_upper"] == pytest.approx(2 * math.log2(10) / 10)
    ex = bits.exact([3.0, 5.0], "test").metrics([False, True], n_params=4)
    assert ex["bits_stored"] == 5.0 and ex["bits_per_param"] == 1.25 and ex["bits_total"] == 8.0
    assert not any(k.endswith("_upper") for k in ex)


def test_records_files_and_the_paper_long_context_files_give_upper_bounds(tok, tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"key": "a", "value": "abc"}\n{"key": "b", "value": "de"}\n')
    records, _ = build("records", tok, 5, path=str(path))
    assert value_bits("records", tok, records, path=str(path)).kind == "upper"
    [rec] = build("long-context", tok, 40, ratio="r80", source="paper")[0]
    assert value_bits("long-context", tok, [rec], ratio="r80", source="paper").kind == "upper"


def test_linear_rule_values_hold_no_bits_beyond_the_rule(tok):
    records, _ = build("linear-rule", tok, 9)
    counted = value_bits("linear-rule", tok, records)
    assert counted.kind == "exact" and counted.per_record == (0.0,) * len(records)


# ---------------------------------------------------------------- long-context


def test_draw_bits_counts_ids_that_decode_alike_once(tok):
    # byte tokenizer: 255 pool ids (no NUL); 127 ASCII bytes decode to themselves, 128 high bytes to U+FFFD
    pool = regular_token_ids(tok)
    assert len(pool) == 255
    expected = 127 / 255 * math.log2(255) + 128 / 255 * math.log2(255 / 128)
    assert draw_bits(tok) == pytest.approx(expected)
    assert draw_bits(tok) < math.log2(len(pool))


@pytest.mark.parametrize("ratio, length", [("r20", 60), ("r60", 80), ("r100", 50)])
def test_long_context_bits_count_the_random_tokens_the_value_holds(tok, ratio, length):
    [rec] = build("long-context", tok, length, ratio=ratio)[0]
    counted = value_bits("long-context", tok, [rec], ratio=ratio)
    # independently: the builder's ids, then the longest prefix of them whose text the value starts with
    doc = document(tok, ratio)
    source = paper_document("r0").text
    ids = tok(source, add_special_tokens=False).input_ids
    positions = noise_positions(len(ids), {"r20": 0.2, "r60": 0.6, "r100": 1.0}[ratio])
    draws = np.random.default_rng(0).integers(0, 255, size=len(positions))
    noisy, pool = list(ids), regular_token_ids(tok)
    for p, d in zip(positions, draws):
        noisy[p] = pool[d]
    assert tuple(noisy) == doc.ids
    k = max(j for j in range(len(rec.value) * 4) if rec.value.startswith(tok.decode(noisy[:j])))
    n_noise = sum(p < k for p in positions)
    assert covered_tokens(tok, doc.ids, rec.value) == k
    # up to r50 random tokens sit between text tokens; above, neighbours can join as text: a bound
    assert counted.kind == ("exact" if ratio == "r20" else "upper")
    assert counted.total == pytest.approx(n_noise * draw_bits(tok))
    assert 0 < n_noise <= length


def test_long_context_r0_holds_no_random_token(tok):
    [rec] = build("long-context", tok, 50, ratio="r0")[0]
    counted = value_bits("long-context", tok, [rec], ratio="r0")
    assert counted.kind == "exact" and counted.total == 0.0


# ---------------------------------------------------------------- verify and sweep cells


def test_verify_without_a_generator_reports_an_upper_bound(tiny_base, tiny_records):
    enc = encode(tiny_records, tiny_base.tokenizer, PromptConfig(template="plain"))
    ad = make_adapter(AdapterConfig(rank=2, layer=1), tiny_base)
    with attached(ad, tiny_base):
        s = verify(tiny_base, ad, enc).summary()
        given = verify(tiny_base, ad, enc, value_bits=bits.exact([1.0] * 8, "test")).summary()
    assert s["bits_kind"] == "upper" and "bits_stored" not in s and "bits_per_param" not in s
    assert s["bits_total_upper"] == pytest.approx(8 * 6 * math.log2(10))       # 6 digits each
    assert s["bits_per_param_upper"] == pytest.approx(s["em"] * 6 * math.log2(10) / s["n_params"])
    assert given["bits_kind"] == "exact" and given["bits_total"] == 8.0 and given["bits_stored"] == given["em"]


def test_a_phonebook_cell_stores_exact_bits(tiny_base):
    from memlaw.sweep.cell import run_cell
    from memlaw.sweep.grid import sweep_from_dict

    grid = sweep_from_dict({"name": "t", "model": "tiny", "dtype": "float32", "ranks": [8], "lengths": [20],
                            "adapter": {"layer": 1}, "prompt": {"template": "plain"},
                            "train": {"lr": 0.03, "batch_size": 8, "max_steps": 12, "check_every": 6}})
    m = run_cell(grid.cells()[0], tiny_base).metrics
    per = 2 + 9 * math.log2(10)
    assert m["bits_kind"] == "exact" and m["bits_total"] == pytest.approx(2 * per)
    assert m["bits_stored"] == pytest.approx(m["em"] * per)
    assert m["bits_per_param"] == pytest.approx(m["em"] * per / (2 * 64 * 8))
    assert not any(k.endswith("_upper") for k in m)


# ---------------------------------------------------------------- the frontier


def _row(rank, length, em, *, n_params=None, total=None, kind="exact", legacy_records=None):
    metrics = {"n_records": legacy_records} if legacy_records is not None else {
        "bits_kind": kind, f"bits_total{bits.suffix(kind)}": total}
    return {"rank": rank, "length": length, "em_rate": em, "n_params": n_params or 100 * rank,
            "benchmark": "phonebook", "metrics": metrics}


def test_frontier_bits_per_rank_from_stored_cells():
    rows = [_row(1, 20, 1.0, total=64.0), _row(1, 40, 0.5, total=128.0),
            _row(2, 20, 1.0, total=64.0), _row(2, 40, 1.0, total=128.0), _row(2, 40, 0.5, total=128.0),
            _row(4, 20, 0.0, total=64.0)]
    points = bits.frontier_bits(rows)
    assert [(p.rank, p.length, p.cells, p.of) for p in points] == [(1, 20, 1, 1), (2, 40, 1, 2)]
    assert points[0].bits_per_param == pytest.approx(64 / 100) and points[1].bits_per_param == pytest.approx(128 / 200)
    assert points[1].tokens_per_param == pytest.approx(40 / 200)
    d = bits.capacity_summary(rows)
    assert d["frontier"][1]["bits_per_param"] == pytest.approx(0.64) and d["published"][0]["low"] == 3.6


def test_frontier_recounts_old_phonebook_cells_and_keeps_upper_bounds_apart():
    old = bits.frontier_bits([_row(1, 30, 1.0, legacy_records=3)])
    assert old[0].kind == "exact" and old[0].bits == pytest.approx(3 * (2 + 9 * math.log2(10)))
    up = bits.frontier_bits([_row(1, 30, 1.0, total=90.0, kind="upper")])[0].to_dict()
    assert up["bits_kind"] == "upper" and up["bits_per_param_upper"] == pytest.approx(0.9) and "bits_per_param" not in up
    unknown = bits.frontier_bits([{**_row(1, 30, 1.0, legacy_records=3), "benchmark": "long-context"}])
    assert unknown[0].bits is None and unknown[0].bits_per_param is None


def test_per_param_text_marks_upper_bounds():
    assert bits.per_param_text({"bits_kind": "exact", "bits_stored": 8.0, "n_params": 16}) == "0.5000"
    assert bits.per_param_text({"bits_kind": "upper", "bits_stored_upper": 8.0, "n_params": 16}) == "≤ 0.5000"
    assert bits.per_param_text({"n_params": 16}) == "-"


# ---------------------------------------------------------------- memlaw fit shows them


def test_memlaw_fit_sets_frontier_bits_per_param_beside_published_figures(tmp_path):
    import json

    from typer.testing import CliRunner

    from memlaw.cli import app
    from memlaw.law import law
    from memlaw.store import open_store
    from memlaw.sweep.cell import CellResult
    from memlaw.sweep.grid import sweep_from_dict

    grid = sweep_from_dict({"name": "g", "model": "tiny", "dtype": "float32", "ranks": [1, 2, 4],
                            "lengths": [20, 40, 80], "seeds": [0, 1], "train": {"max_steps": 5}})
    per = 2 + 9 * math.log2(10)
    with open_store(tmp_path / "runs.db") as db:
        for c in grid.cells():
            n, params = c.length // 10, 2 * 64 * c.rank
            em = 1.0 if c.length <= 20 * c.rank and not (c.rank == 4 and c.seed == 1) else 0.5
            metrics = {"length": c.length, "delta_loss": float(law(c.rank, c.length, 3.0, 0.5, 0.2, 0.0)),
                       "em_rate": em, "n_params": params, "n_records": n,
                       **bits.exact([per] * n, "t").metrics([True] * round(em * n) + [False] * (n - round(em * n)),
                                                           params)}
            db.add_cell(CellResult(c.key, c, "done", metrics), sweep="planted")
    run = lambda *a: CliRunner().invoke(app, [str(x) for x in a])  # noqa: E731
    [fit] = json.loads(run("fit", "--store", tmp_path / "runs.db", "--json").stdout)["fits"]
    got = {p["rank"]: p for p in fit["capacity"]["frontier"]}
    assert sorted(got) == [1, 2, 4] and got[1]["length"] == 20 and got[2]["length"] == 40 and got[4]["length"] == 80
    assert got[4]["cells"] == 1 and got[4]["of"] == 2                  # seed 1 of rank 4 fell short at ℓ 80
    for r, p in got.items():                                         # ℓ/10 numbers of 31.9 bits over 128·r params
        assert p["bits_kind"] == "exact" and p["bits_per_param"] == pytest.approx(p["length"] / 10 * per / (128 * r))
        assert p["tokens_per_param"] == pytest.approx(p["length"] / (128 * r))
    text = run("fit", "--store", tmp_path / "runs.db").stdout
    assert "capacity frontier" in text and "published: Morris et al. 2025" in text and "3.6 bits/param" in text
    assert run("runs", "export", "--store", tmp_path / "runs.db", "--out", tmp_path / "cells.csv").exit_code == 0
    [from_csv] = json.loads(run("fit", "--csv", tmp_path / "cells.csv", "--json").stdout)["fits"]
    assert from_csv["capacity"] == fit["capacity"]
