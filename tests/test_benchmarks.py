"""Benchmarks: PhoneBook (PB<N>, generator), long-context (paper files, builder), linear rule, methods grid."""

import csv
import json
import math
import re

import pytest

from memlaw.benchmarks import (QUESTION, build_document, generate_phonebook, linear_rule, long_context,
                               noise_positions, paper_document, phonebook, phonebook_bits, phonebook_length,
                               prefix_value, rule)
from memlaw.benchmarks.long_context import document, paper_path, parse_ratio, regular_token_ids, replace_tokens
from memlaw.benchmarks.phonebook import PHONE_CHOICES, name_pools
from memlaw.encode import encode
from memlaw.errors import ConfigError, RecordError
from memlaw.models import build_tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()  # byte-level: one token per byte, 10 tokens a phone number


class GroupedDigits:
    """A tokenizer stub that counts digits in groups of three, as Llama-3 does (10 digits -> 4 tokens)."""

    def __call__(self, texts, add_special_tokens=False):
        class Out:
            input_ids = [list(range(math.ceil(len(t) / 3))) for t in texts]
        return Out()


class VariableLength:
    """A stub whose token count depends on the value: 1 token per distinct digit."""

    def __call__(self, texts, add_special_tokens=False):
        class Out:
            input_ids = [list(range(len(set(t)))) for t in texts]
        return Out()


# ---- PhoneBook ----

def test_pb_length_is_the_prefix_of_n_over_tokens_per_value(tok):
    assert phonebook_length(tok, 50) == phonebook(5)
    assert phonebook_length(tok, 1000) == phonebook(100)          # the Qwen3 layout: 10 tokens a value
    assert phonebook_length(GroupedDigits(), 1000) == phonebook(250)   # Llama-3: PB1000 = 250 entries
    small, large = phonebook_length(tok, 80), phonebook_length(tok, 160)
    assert large[: len(small)] == small                            # nested prefixes of one list


def test_pb_length_not_a_multiple_names_the_nearest_valid_n(tok):
    with pytest.raises(ConfigError, match=r"multiple of 10 .*PB50 or PB60"):
        phonebook_length(tok, 55)
    with pytest.raises(ConfigError, match=r"multiple of 4 .*PB1000 or PB1004"):
        phonebook_length(GroupedDigits(), 1001)
    with pytest.raises(ConfigError, match="no prefix"):
        stub = VariableLength()
        totals = [0]
        for r in phonebook(10):
            totals.append(totals[-1] + len(set(r.value)))
        gap = next(n for n in range(1, totals[-1]) if n not in totals)
        phonebook_length(stub, gap)
    with pytest.raises(ConfigError, match="whole list holds 320000"):
        phonebook_length(tok, 320_010)


def test_generated_phonebook_is_seeded_unique_and_in_the_paper_format():
    book = generate_phonebook(300, seed=7)
    assert book == generate_phonebook(300, seed=7)
    assert book != generate_phonebook(300, seed=8)
    assert generate_phonebook(50, seed=7) == book[:50]
    first, last = name_pools()
    for r in book:
        assert re.fullmatch(r"[6-9][0-9]{9}", r.value)
        a, b = r.key.removesuffix(":").split(" ")
        assert r.key.endswith(":") and a in first and b in last
    assert len({r.key for r in book}) == len({r.value for r in book}) == 300
    assert len(first) == 3309 and len(last) == 14786


def test_generated_phonebook_first_digits_cover_6_to_9():
    assert {r.value[0] for r in generate_phonebook(200, seed=1)} == set("6789")


def test_phonebook_bits_is_the_exact_entropy_of_distinct_uniform_values():
    assert phonebook_bits(0) == 0.0
    assert phonebook_bits(1) == pytest.approx(math.log2(4e9))
    assert phonebook_bits(3) == pytest.approx(math.log2(PHONE_CHOICES * (PHONE_CHOICES - 1) * (PHONE_CHOICES - 2)))
    assert phonebook_bits(1000) < 1000 * math.log2(4e9)


# ---- long-context ----

@pytest.mark.parametrize("name", ["r20", "r40", "r60", "r80"])
def test_noise_positions_reproduce_the_paper_files(name):
    recorded = json.loads(paper_path(name).read_text())
    positions = noise_positions(29709, parse_ratio(name)[1])
    assert len(positions) == recorded["noise_count"] == round(parse_ratio(name)[1] * 29709)
    assert positions == recorded["noise_positions"]


@pytest.mark.parametrize("n, ratio", [(10, 0.0), (10, 1.0), (97, 0.3), (1000, 0.2), (7, 0.5)])
def test_noise_positions_formula_and_ratio(n, ratio):
    positions = noise_positions(n, ratio)
    m = round(ratio * n)
    assert positions == [math.floor((k + 0.5) * n / m) for k in range(m)]
    assert len(set(positions)) == m and all(0 <= p < n for p in positions) and positions == sorted(positions)
    if ratio == 1.0:
        assert positions == list(range(n))


def test_replace_tokens_changes_only_the_noise_positions_and_is_seeded():
    ids, pool = list(range(1000, 1100)), list(range(50))
    positions = noise_positions(100, 0.2)
    noisy = replace_tokens(ids, positions, pool, seed=3)
    assert noisy == replace_tokens(ids, positions, pool, seed=3)
    assert noisy != replace_tokens(ids, positions, pool, seed=4)
    assert [i for i, (a, b) in enumerate(zip(ids, noisy)) if a != b] == positions  # the pool is disjoint from ids
    assert all(noisy[p] in pool for p in positions)


def test_regular_token_ids_exclude_added_tokens_and_nul(tok):
    pool = regular_token_ids(tok)
    assert pool == list(range(1, 256))  # bytes 1..255; 0 decodes to NUL; 256+ are special


def test_built_document_has_ratio_tokens_replaced_in_own_token_space(tok):
    text = "the quick brown fox jumps over the lazy dog. " * 20
    doc = build_document(text, tok, "r20", seed=1)
    n = len(tok(text).input_ids)
    assert doc.n_tokens == n and list(doc.noise_positions) == noise_positions(n, 0.2)
    assert doc.ratio == 0.2 and doc.question == QUESTION
    assert build_document(text, tok, "r20", seed=1) == doc
    assert build_document(text, tok, "r20", seed=2).text != doc.text
    assert build_document(text, tok, "r0").text == text
    ids = tok(text, add_special_tokens=False).input_ids
    noisy = replace_tokens(ids, list(doc.noise_positions), regular_token_ids(tok), seed=1)
    assert doc.text == tok.decode(noisy)  # the construction, in the tokenizer's own space


@pytest.mark.parametrize("ratio", ["r0", "r20", "r100"])
def test_long_context_value_survives_the_round_trip_in_token_space(tok, plain, ratio):
    doc = document(tok, ratio)
    for length in (12, 57, 130, 301):
        [record] = long_context(tok, length, ratio)
        ids = tok(record.value, add_special_tokens=False).input_ids
        assert tok.decode(ids) == record.value and doc.text.startswith(record.value)
        assert record.key == QUESTION
        assert length - 3 <= len(ids) <= length  # byte-level: a cut inside a character stops before it
        if ratio == "r0":
            assert len(ids) == length            # ASCII text: exactly ℓ tokens
        enc = encode([record], tok, plain)
        assert enc.length == len(ids)


def test_long_context_is_seeded(tok):
    assert long_context(tok, 64, "r100", seed=0) == long_context(tok, 64, "r100", seed=0)
    assert long_context(tok, 64, "r100", seed=0) != long_context(tok, 64, "r100", seed=1)


def test_prefix_value_exact_on_multi_token_characters(tok):
    text = "ab" + "é" * 10 + "cd"  # é is two bytes: a cut after 'a b é' is 4 tokens, never 3 + half
    assert prefix_value(tok, text, 4) == "abé"
    assert prefix_value(tok, text, 5) == "abé"  # the 5th token is half of an é: stop before it
    with pytest.raises(RecordError, match="fewer than"):
        prefix_value(tok, text, 100)


def test_paper_files_load_and_r80_nul_is_dropped():
    raw = json.loads(paper_path("r80").read_text())["matching"]
    doc = paper_document("r80")
    assert "\x00" in raw and "\x00" not in doc.text and len(doc.text) == len(raw) - 1
    assert paper_document("r100").question == QUESTION and paper_document("r0").text.startswith("PHIDIAS")
    assert parse_ratio("20") == ("r20", 0.2) and parse_ratio(1.0) == ("r100", 1.0)
    with pytest.raises(ConfigError):
        parse_ratio("r150")
    with pytest.raises(ConfigError, match="only as a built document"):
        paper_path("r30")


def test_long_context_from_the_paper_files(tok):
    [record] = long_context(tok, 80, "r80", source="paper")
    assert paper_document("r80").text.startswith(record.value)


# ---- linear rule ----

def test_linear_rule_split_is_disjoint_seeded_and_correct():
    split = linear_rule(200, 100, seed=3)
    train_keys, held_keys = {r.key for r in split.train}, {r.key for r in split.held_out}
    assert len(train_keys) == 200 and len(held_keys) == 100 and not train_keys & held_keys
    for r in split.train + split.held_out:
        x, y = map(int, r.key.split(", "))
        assert 0 <= x <= 99 and 0 <= y <= 99 and r.value == str(3 * x + 5 * y + 7) == str(rule(x, y))
    again = linear_rule(50, 100, seed=3)
    assert again.train == split.train[:50] and again.held_out == split.held_out  # held-out set fixed
    assert linear_rule(200, 100, seed=4).train != split.train
    with pytest.raises(ConfigError):
        linear_rule(9_950, 100)


def test_linear_rule_coefficients_change_values_not_pairs_and_keep_old_keys(tok):
    from memlaw.benchmarks import build
    from memlaw.config import BenchmarkConfig

    paper, plus = linear_rule(50, 20, seed=1), linear_rule(50, 20, seed=1, coefficients=(1, 1, 0))
    assert [r.key for r in plus.train + plus.held_out] == [r.key for r in paper.train + paper.held_out]
    for r in plus.train + plus.held_out:
        x, y = map(int, r.key.split(", "))
        assert r.value == str(x + y)
    records, held = build("linear-rule", tok, 40, held_out=5, rule=[2, -1, 0])
    assert all(r.value == str(2 * int(r.key.split(", ")[0]) - int(r.key.split(", ")[1])) for r in records + held)
    # the paper's rule, spelled or not, is the key cells were stored under before `rule` existed
    old = {"name": "linear-rule", "path": None, "sha256": None, "ratio": None, "source": None, "held_out": 100,
           "data_seed": 0}
    assert BenchmarkConfig(name="linear-rule").key_dict() == old
    assert BenchmarkConfig(name="linear-rule", rule=(3, 5, 7)).key_dict() == old
    assert BenchmarkConfig(name="linear-rule", rule=[1, 1, 0]).key_dict() == {**old, "rule": [1, 1, 0]}
    assert "rule" not in BenchmarkConfig(name="phonebook").key_dict()
    assert [BenchmarkConfig(name="linear-rule", rule=r).rule_text() for r in (None, [1, 1, 0], [2, -1, 0])] == [
        "3x+5y+7", "1x+1y+0", "2x-1y+0"]                         # the export's rule column
    assert BenchmarkConfig(name="phonebook").rule_text() is None
    with pytest.raises(ConfigError, match="rule must be three integers"):
        BenchmarkConfig(name="linear-rule", rule=[1, 1])
    with pytest.raises(ConfigError, match="rule is not an option of benchmark 'phonebook'"):
        BenchmarkConfig(name="phonebook", rule=[1, 1, 0])


# ---- the registry, and method comparisons as sweeps on the tiny model ----

@pytest.mark.parametrize("name, options, held", [("phonebook", {}, 0), ("long-context", {"ratio": "r20"}, 0),
                                                 ("linear-rule", {"held_out": 7}, 7)])
def test_build_gives_exactly_length_value_tokens(tok, name, options, held):
    from memlaw.benchmarks import build

    length = 40 if name != "linear-rule" else 41                 # linear-rule: reachable sums of short values
    try:
        records, held_out = build(name, tok, length, **options)
    except ConfigError as e:                                      # an unreachable ℓ says which ones are reachable
        assert "nearest" in str(e)
        return
    assert sum(len(tok(r.value, add_special_tokens=False).input_ids) for r in records) == length
    assert len(held_out) == held and not {r.key for r in held_out} & {r.key for r in records}


def test_build_refuses_options_a_benchmark_does_not_take(tok):
    from memlaw.benchmarks import build

    with pytest.raises(ConfigError, match="ratio is not an option of benchmark 'phonebook'"):
        build("phonebook", tok, 40, ratio="r20")
    with pytest.raises(ConfigError, match="did you mean 'linear-rule'"):
        build("linear-rul", tok, 40)


def test_benchmark_names_come_from_the_config_literal():
    from memlaw.benchmarks import BUILDERS
    from memlaw.config import BenchmarkConfig, choices

    assert tuple(BUILDERS) == choices(BenchmarkConfig, "name")


METHODS_GRID = {"name": "methods", "model": "tiny", "dtype": "float32", "ranks": [2, 8], "seeds": [0, 1],
                "adapter": {"layer": 1}, "prompt": {"template": "plain"},
                "train": {"lr": 0.03, "batch_size": 8, "max_steps": 3, "check_every": 3}}


def test_mixed_set_covers_its_kinds_and_encodes(tiny_base, plain):
    from memlaw.benchmarks import MIXED_SIZE, mixed
    from memlaw.encode import encode

    recs = mixed()
    assert len(recs) == MIXED_SIZE == 24 and mixed(5) == recs[:5]
    assert len({r.key for r in recs}) == 24
    values = [r.value for r in recs]
    kinds = {
        "url": r"^https://", "api key": r"^(sk_test_|AKIA|whsec_)", "icd-10": r"^[A-Z][0-9]{2}(\.[0-9A-Z]{1,4})?(; |$)",
        "multi-line": r"\n", "latex": r"\\(frac|int|begin)", "cjk": r"[\u4e00-\u9fff\u3040-\u30ff\uac00-\ud7af]",
        "statute": r"\bshall\b",
    }
    for kind, pattern in kinds.items():
        assert any(re.search(pattern, v) for v in values), kind
    enc = encode(recs, tiny_base.tokenizer, plain)              # every value survives decode(encode(value))
    assert len(enc) == 24 and enc.length > 24 * 5
    with pytest.raises(ConfigError, match="1..24"):
        mixed(25)


@pytest.mark.parametrize("benchmark, length, sw", [({"name": "phonebook"}, 40, "memft-sw-curriculum"),
                                                   ({"name": "long-context"}, 41, "memft-sw"),
                                                   ({"name": "linear-rule", "held_out": 4}, 21,
                                                    "memft-sw-curriculum")])
def test_method_comparison_is_a_sweep_with_an_objectives_axis(tiny_base, tmp_path, benchmark, length, sw):
    from memlaw.experiments import compare
    from memlaw.exports import export_cells
    from memlaw.store import open_store
    from memlaw.sweep import run_local, sweep_from_dict

    grid = sweep_from_dict({**METHODS_GRID, "benchmark": benchmark, "lengths": [length],
                            "objectives": [{"name": "sft"}, {"name": "memft-ot"}, {"name": sw}]})
    cells = grid.cells()
    assert [(c.rank, c.seed, c.objective.name) for c in cells] == [
        (r, s, o) for r in (2, 8) for s in (0, 1) for o in ("sft", "memft-ot", sw)]
    assert len({c.key for c in cells}) == 12 and len({c.experiment_key for c in cells}) == 3
    with open_store(tmp_path / "runs.db") as store:
        first = run_local(grid, store, base=tiny_base)
        again = run_local(grid, store, base=tiny_base)           # resume: nothing left to run
        rows = store.load_cells()
    assert (first.ran, again.ran, again.skipped) == (12, 0, 12)
    assert all(r["steps"] == 3 for r in rows)
    if benchmark["name"] == "linear-rule":                       # held-out EM is stored with the cell
        assert all(r["metrics"]["held_out"]["n_records"] == 4 for r in rows)
    else:
        assert all("held_out" not in r["metrics"] for r in rows)
    with open_store(tmp_path / "runs.db") as store:
        export_cells(store, tmp_path / "runs.csv")
    exported = list(csv.DictReader(open(tmp_path / "runs.csv", encoding="utf-8")))
    rule = "3x+5y+7" if benchmark["name"] == "linear-rule" else ""   # the paper's rule, named though default
    assert len(exported) == 12 and {r["rule"] for r in exported} == {rule}
    [table] = compare(rows)
    assert table.objectives == ["sft", "memft-ot", sw] and table.columns == [(2, length), (8, length)]
    for name in table.objectives:
        for column in table.columns:
            stat = table.cells[name][column]
            assert stat.n == 2 and stat.sd is not None
            own = [r for r in rows if r["objective"] == name and (r["rank"], r["length"]) == column]
            metric = "free_acc" if benchmark["name"] == "long-context" else "em_rate"
            assert stat.mean == pytest.approx(sum(r[metric] for r in own) / 2)


def test_a_winner_needs_a_gap_larger_than_the_seeds_spread():
    from memlaw.experiments import Comparison, Stat

    col = (4, 160)
    cells = {"sft": {col: Stat.of([0.40, 0.50])}, "memft-ot": {col: Stat.of([0.60, 0.70])}}
    c = Comparison({}, "em_rate", ["sft", "memft-ot"], [col], cells)
    assert c.winner(col) == "memft-ot"                           # 0.65 - 0.45 = 0.2 > sd 0.0707
    cells["memft-ot"][col] = Stat.of([0.30, 0.80])               # same mean, sd 0.354 > 0.2: a tie
    assert c.winner(col) is None
    cells["memft-ot"][col] = Stat.of([0.9])                       # one seed: no spread, no winner
    assert c.winner(col) is None


def test_runs_compare_prints_the_table_from_the_store(tiny_base, tmp_path):
    import json

    from typer.testing import CliRunner

    from memlaw.cli import app
    from memlaw.store import open_store
    from memlaw.sweep import run_local, sweep_from_dict

    grid = sweep_from_dict({**METHODS_GRID, "ranks": [2], "lengths": [40],
                            "objectives": [{"name": "sft"}, {"name": "memft-ot"}]})
    with open_store(tmp_path / "runs.db") as store:
        run_local(grid, store, base=tiny_base)
    runner = CliRunner()
    res = runner.invoke(app, ["runs", "compare", "--store", str(tmp_path / "runs.db"), "--json"])
    assert res.exit_code == 0, res.output
    [table] = json.loads(res.stdout)
    assert table["metric"] == "em_rate" and table["columns"] == [[2, 40]]
    assert set(table["cells"]) == {"sft", "memft-ot"} and all(c[0]["n"] == 2 for c in table["cells"].values())
    text = runner.invoke(app, ["runs", "compare", "--store", str(tmp_path / "runs.db")]).stdout
    assert "r2 ℓ40" in text and "memft-ot" in text and "[2]" in text
    res = runner.invoke(app, ["runs", "compare", "--store", str(tmp_path / "runs.db"), "--where", "objective=sft"])
    assert res.exit_code == 2 and "no cells that differ only in their objective" in res.output
