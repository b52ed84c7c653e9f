"""Benchmarks: PhoneBook (PB<N>, generator), long-context (paper files, builder), linear rule, methods grid."""

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


# ---- the methods grid on the tiny model ----

@pytest.fixture(scope="module")
def tiny_grid_kwargs(plain):
    return dict(ranks=(2, 8), lr=0.03, layer=1, batch_size=8, prompt=plain, held_out=4)


@pytest.mark.parametrize("benchmark, length, sw", [("phonebook", 40, "memft-sw-curriculum"),
                                                   ("long-context", 40, "memft-sw"),
                                                   ("linear-rule", 8, "memft-sw-curriculum")])
def test_run_methods_grid_rows_and_resume(tiny_base, tiny_grid_kwargs, benchmark, length, sw):
    from memlaw.benchmarks.methods import MethodsGrid, run_methods, table

    grid = MethodsGrid(benchmark=benchmark, lengths=(length,), steps=3, **tiny_grid_kwargs)
    seen = []
    rows = run_methods(grid, tiny_base, on_cell=lambda row, i, n: seen.append((i, n)))
    assert seen == [(i, 6) for i in range(1, 7)]
    assert [(r["method"], r["rank"]) for r in rows] == [(m, r) for r in (2, 8) for m in ("SFT", "MemFT-OT", "MemFT-SW")]
    assert {r["objective"] for r in rows if r["method"] == "MemFT-SW"} == {sw}
    assert all(r["steps"] == 3 for r in rows) and len({r["cell_id"] for r in rows}) == 6
    json.dumps(rows)  # JSON-ready
    if benchmark == "linear-rule":
        assert all(r["generalization"]["n_records"] == 4 and isinstance(r["score"], tuple) for r in rows)
    columns, cells = table(rows)
    assert columns == ["r2", "r8"] and list(cells) == ["SFT", "MemFT-OT", "MemFT-SW"]
    resumed = run_methods(grid, tiny_base, done={r["cell_id"]: r for r in rows[:4]},
                          on_cell=lambda row, i, n: seen.append(i))
    assert len(seen) == 6 + 2 and [r["cell_id"] for r in resumed] == [r["cell_id"] for r in rows]


def test_run_methods_phonebook_learns_on_tiny(tiny_base, plain):
    from memlaw.benchmarks.methods import MethodsGrid, run_methods

    grid = MethodsGrid(benchmark="phonebook", ranks=(8,), lengths=(80,), steps=150, lr=0.03, layer=1,
                       batch_size=8, prompt=plain, methods=("SFT",))
    [row] = run_methods(grid, tiny_base)
    assert row["metrics"]["length"] == 80 and row["metrics"]["n_records"] == 8
    assert row["score"] >= 0.25 and row["metrics"]["delta_loss"] > 1.0


def test_methods_grid_validates():
    from memlaw.benchmarks.methods import MethodsGrid

    with pytest.raises(ConfigError, match="did you mean 'phonebook'"):
        MethodsGrid(benchmark="phonbook")
    with pytest.raises(ConfigError, match="methods"):
        MethodsGrid(benchmark="phonebook", methods=("MemFT",))


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
