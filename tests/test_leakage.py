"""Leakage: prompts that are not keys, value matching (checked against a brute-force search), and the
check end to end on the tiny model, where a record left in the adapter must be found."""

import json
import random
import string

import pytest
from typer.testing import CliRunner

from memlaw.cli import app
from memlaw.config import AdapterConfig, PromptConfig, TrainConfig
from memlaw.leakage import (GENERIC, RUN, LeakPrompt, ValueIndex, count_leaks, leakage_prompts, shaped_like)
from memlaw.records import Record, write_records

runner = CliRunner()


def test_shaped_like_keeps_the_shape_of_a_key():
    rng = random.Random(1)
    key = "Jerry Becerra-42: x"
    for _ in range(20):
        k = shaped_like(key, rng)
        assert len(k) == len(key)
        for a, b in zip(key, k):
            for cls in (string.ascii_lowercase, string.ascii_uppercase, string.digits):
                assert (a in cls) == (b in cls)
            if not a.isalnum():
                assert a == b
    assert len({shaped_like(key, rng) for _ in range(20)}) == 20


def test_prompts_are_never_keys_and_cover_every_kind():
    keys = [f"{a} {b}:" for a in ("Ann", "Bo", "Cy") for b in ("Lee", "Ng", "Ray")][:8]   # 8 of 9 combinations
    watched = [Record("Cy Ray:", "555")]
    prompts = leakage_prompts(keys, random_keys=10, seed=3, watched=watched)
    kinds = [p.kind for p in prompts]
    assert kinds.count("empty") == 1 and kinds.count("generic") == len(GENERIC)
    assert kinds.count("random_key") == 10 and kinds.count("watched_key") == 1
    assert 1 <= kinds.count("mixed_key") <= 10      # few recombinations are fresh here: 9 possible, 8 taken...
    assert not {p.key for p in prompts if p.kind != "watched_key"} & set(keys)
    mixed = [p.key for p in prompts if p.kind == "mixed_key"]
    assert mixed == ["Cy Ray:"]                     # ...so the one left over is the only mixed key
    assert leakage_prompts(keys, random_keys=10, seed=3) == leakage_prompts(keys, random_keys=10, seed=3)


def _brute(values, text, allowed=None):
    found = {}
    for i, v in enumerate(values):
        runs = [v[s: s + RUN] for s in range(len(v) - RUN + 1)]
        runs = [r for r in runs if allowed is None or r not in allowed]
        whole = v in text and not (allowed is not None and v in allowed)
        if whole or any(r in text for r in runs):
            if not (allowed is not None and v in allowed):
                found[i] = whole
    return found


def test_value_index_matches_a_brute_force_search():
    rng = random.Random(0)
    for trial in range(300):
        values = ["".join(rng.choice("0123ab") for _ in range(rng.randint(3, 14))) for _ in range(6)]
        text = "".join(rng.choice("0123ab ") for _ in range(rng.randint(0, 30)))
        if rng.random() < 0.5:          # plant a whole value or a piece of one
            v = rng.choice(values)
            lo = rng.randint(0, len(v) - 1)
            piece = v if rng.random() < 0.5 else v[lo: lo + rng.randint(RUN - 1, RUN + 1)]
            at = rng.randint(0, len(text))
            text = text[:at] + piece + text[at:]
        allowed = rng.choice(values) if rng.random() < 0.3 else None
        assert ValueIndex(values).find(text, allowed) == _brute(values, text, allowed), (values, text, allowed)


def test_count_leaks_counts_without_showing_values():
    stored = [Record("a", "4155550101"), Record("b", "6505550199"), Record("c", "12")]
    watched = [Record("d", "7075550123")]
    prompts = [LeakPrompt("empty", ""), LeakPrompt("generic", "Hello!"), LeakPrompt("random_key", "x"),
               LeakPrompt("watched_key", "d")]
    outputs = ["call 4155550101 now", "no numbers here", "x05550199x (a run of b)", "7075550123"]
    leak = count_leaks(prompts, outputs, stored, watched)
    s = leak.summary()
    assert s["leaks"] == 4 and s["full"] == 3 and s["runs"] == 1   # a whole, b's run, d whole and c ("12" in "0123")
    assert s["stored_values_leaked"] == 3 and s["watched_values_leaked"] == 1
    assert s["by_kind"]["generic"] == {"prompts": 1, "leaking": 0}
    assert s["by_kind"]["watched_key"] == {"prompts": 1, "leaking": 1}
    text = json.dumps(leak.to_dict())
    assert not any(r.value in text for r in [*stored[:2], *watched])
    shown = json.dumps(leak.to_dict(show=True))
    assert "4155550101" in shown and "7075550123" in shown


def test_a_changed_key_may_return_its_current_value():
    stored = [Record("a", "1111222233")]
    watched = [Record("a", "1111222299")]            # the old value shares the run 11112222 with the new one
    prompts = leakage_prompts(["a"], random_keys=0, watched=watched, current={"a": "1111222233"})
    outs = ["" for _ in prompts]
    outs[-1] = "1111222233"
    assert count_leaks(prompts, outs, stored, watched).leaks == 0
    outs[-1] = "1111222299"
    leak = count_leaks(prompts, outs, stored, watched)
    assert leak.leaks == 1 and leak.hits[0].watched and leak.hits[0].full


# --- end to end on the tiny model ----------------------------------------------------------------


@pytest.fixture(scope="module")
def memory_dir(tmp_path_factory, tiny_base, tiny_records, plain):
    from memlaw.memory import write_memory

    d = tmp_path_factory.mktemp("leak")
    out = write_memory(tiny_records, model=tiny_base, out=d / "ad", prompt=plain,
                       adapter=AdapterConfig(kind="probe", rank=8, layer=1),
                       train=TrainConfig(lr=0.03, batch_size=8, max_steps=400, until="certified"))
    assert out.verification.summary()["em"] == len(tiny_records)
    write_records(d / "kept.jsonl", tiny_records[1:])
    write_records(d / "gone.jsonl", tiny_records[:1])
    return d


def test_a_value_still_in_the_adapter_is_found_from_its_key(memory_dir, tiny_base, tiny_records):
    """As if record 0 had been deleted without retraining: its key still returns its value, and the check says so."""
    from memlaw.memory import Memory

    with Memory.open(memory_dir / "ad", base=tiny_base) as mem:
        leak = mem.leakage(records=tiny_records[1:], watched=tiny_records[:1], random_keys=8)
        clean = mem.leakage(random_keys=8)
    hits = [h for h in leak.hits if h.kind == "watched_key"]
    assert len(hits) == 1 and hits[0].full and hits[0].watched and hits[0].key == tiny_records[0].key
    assert hits[0].output == tiny_records[0].value
    assert leak.summary()["watched_values_leaked"] == 1
    assert clean.summary()["prompts"] == 1 + len(GENERIC) + 8      # no mixed keys: "key" + any letter is a real key
    # each hit is an independent fact: the value, or a run of it, is in the output
    for h in clean.hits + leak.hits:
        value = {r.key: r.value for r in tiny_records}[h.key]
        assert (value in h.output) == h.full


def test_verify_leakage_cli_prints_counts_only(memory_dir, tiny_records):
    ad = str(memory_dir / "ad")
    args = ["verify", ad, str(memory_dir / "kept.jsonl"), "--leakage", "--watch", str(memory_dir / "gone.jsonl"),
            "--random-keys", "4"]
    res = runner.invoke(app, args)
    assert res.exit_code == 1, res.output             # the watched value comes back: a leak
    assert "leakage:" in res.stdout and "watched values found 1/1" in res.stdout
    assert not any(r.value in res.stdout for r in tiny_records)
    res = runner.invoke(app, [*args, "--json"])
    data = json.loads(res.stdout)
    assert data["leakage"]["watched_values_leaked"] == 1 and "hits" not in data["leakage"]
    assert not any(r.value in res.stdout for r in tiny_records)
    res = runner.invoke(app, [*args, "--show-leaks"])
    assert tiny_records[0].value in res.stdout
    res = runner.invoke(app, [*args, "--show-leaks", "--redact"])
    assert not any(r.value in res.stdout for r in tiny_records)
