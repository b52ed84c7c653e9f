"""Locality: base model against base + adapter on neutral prompts (memlaw.locality, DESIGN §2).

Checked against an independent computation on the tiny model in float32: continuations from
transformers' `generate`, one prompt at a time; distributions from the whole model called as a user
would (`model(input_ids).logits`), softmax and KL in float64 numpy; greedy agreement from decoding the
adapted model itself.
"""

import logging
from importlib.resources import files

import numpy as np
import pytest
import torch

from memlaw.adapters import make_adapter
from memlaw.config import AdapterConfig, ObjectiveConfig, PromptConfig, TrainConfig
from memlaw.encode import encode, prompt_ids, resolve_prompt, terminator_ids
from memlaw.engine import attached, write_and_verify
import memlaw.locality as locality_mod
from memlaw.locality import (Continuations, decode_continuations, expect_continuations, greedy_padded,
                             keep_continuations, locality, neutral_prompts, prompt_set)
from memlaw.verify import greedy

PROMPTS = ["Why is the sky blue?", "Name a fruit.", "How do bees help flowers?", "Hi", "Count to five, please."]
SPECS = [PromptConfig(), PromptConfig(template="plain"), PromptConfig(template="plain", format="Q: {key}\nA:")]


def _spec(base, spec):
    spec = resolve_prompt(spec, base.tokenizer)
    return spec, terminator_ids(base.tokenizer, spec)


def _perturb(adapter, scale, seed=1):
    """Add seeded noise to every weight of an attached adapter (B too, so it adds something)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(torch.randn(p.shape, generator=gen).to(p.dtype) * scale)


def test_neutral_prompt_set_ships_with_its_licence():
    prompts = neutral_prompts()
    assert 32 <= len(prompts) <= 64 and len(set(prompts)) == len(prompts)
    assert all(p == p.strip() and 0 < len(p) < 100 for p in prompts)
    folder = files("memlaw").joinpath("data/locality")
    assert "MIT License" in folder.joinpath("LICENSE").read_text(encoding="utf-8")


@pytest.mark.parametrize("kind", ["probe", "lora"])
@pytest.mark.parametrize("spec", SPECS[:2], ids=["chat", "plain"])
def test_an_adapter_that_adds_zero_costs_nothing_exactly(tiny_base, kind, spec):
    spec, term = _spec(tiny_base, spec)
    adapter = make_adapter(AdapterConfig(kind=kind, rank=4), tiny_base, seed=0)    # B = 0: adds exactly 0
    with attached(adapter, tiny_base):
        zero = [bool((p == 0).all()) for p in adapter.parameters()]
        assert sum(zero) == len(zero) // 2 > 0                  # every B (and no A) is zero
        got = locality(tiny_base, adapter, spec, term, prompts=PROMPTS, new_tokens=12)
    assert (got.identical, got.agreement, got.greedy_prefix) == (1.0, 1.0, 1.0)
    assert (got.kl_mean, got.kl_max, got.kl_first) == (0.0, 0.0, 0.0)
    assert got.n_prompts == len(PROMPTS) and 0 < got.positions <= 12 * len(PROMPTS)


def _independent(base, adapter, spec, term, n_new):
    """Continuations by HF generate, KL by numpy in float64 on full-model logits, greedy by decoding."""
    tok, stop = base.tokenizer, term[0]
    ids = [prompt_ids(t, tok, spec) for t in PROMPTS]
    kls, same, prefix, lengths = [], [], 0, 0
    for p in ids:
        with adapter.disabled():
            c = greedy(base, [p], n_new, stop, hf_generate=True)[0]
        g = greedy(base, [p], n_new, stop, hf_generate=True)[0]            # the adapted model's own greedy
        x = torch.tensor([p + c])
        with torch.no_grad():
            with adapter.disabled():
                P = base.model(input_ids=x).logits[0, len(p) - 1: len(p) - 1 + len(c)].double().numpy()
            Q = base.model(input_ids=x).logits[0, len(p) - 1: len(p) - 1 + len(c)].double().numpy()
        P = np.exp(P - P.max(-1, keepdims=True))
        P /= P.sum(-1, keepdims=True)
        Q = np.exp(Q - Q.max(-1, keepdims=True))
        Q /= Q.sum(-1, keepdims=True)
        kls.append((P * (np.log(P) - np.log(Q))).sum(-1))
        same.append(g == c)
        prefix += next((t for t in range(len(c)) if t >= len(g) or g[t] != c[t]), len(c))
        lengths += len(c)
    return kls, same, prefix / lengths, lengths


@pytest.mark.parametrize("kind", ["probe", "lora"])
@pytest.mark.parametrize("spec", SPECS, ids=["chat", "plain", "plain-format"])
def test_kl_and_agreement_match_an_independent_computation(tiny_base, kind, spec):
    spec, term = _spec(tiny_base, spec)
    adapter = make_adapter(AdapterConfig(kind=kind, rank=4, layer=1 if kind == "probe" else None), tiny_base, seed=0)
    with attached(adapter, tiny_base):
        _perturb(adapter, 0.06 if kind == "probe" else 0.006)   # small: some continuations change, some not
        got = locality(tiny_base, adapter, spec, term, prompts=PROMPTS, new_tokens=10, batch_size=2)
        kls, same, prefix, positions = _independent(tiny_base, adapter, spec, term, 10)
    flat = np.concatenate(kls)
    assert got.positions == positions
    assert got.kl_mean == pytest.approx(flat.mean(), rel=1e-4, abs=1e-9)
    assert got.kl_max == pytest.approx(flat.max(), rel=1e-4)
    assert got.kl_first == pytest.approx(np.mean([k[0] for k in kls]), rel=1e-4, abs=1e-9)
    assert got.kl_mean > 1e-4                                  # the perturbation is visible
    assert 0 < got.identical < 1                               # so that the next line tells something
    assert got.identical == pytest.approx(np.mean(same))      # greedy decoding of the adapted model agrees
    assert got.greedy_prefix == pytest.approx(prefix)
    assert 0 <= got.agreement <= 1 and got.greedy_prefix <= got.agreement


@pytest.mark.parametrize("kind", ["probe", "lora"])
@pytest.mark.parametrize("room", [1 << 30, 0], ids=["kept", "too-big"])
def test_a_later_call_reads_the_kept_base_logits_and_gives_a_cold_calls_numbers(tiny_base, kind, room, monkeypatch):
    """The base side is kept by the first call, made with another adapter attached: a later call must
    give exactly what a call with nothing kept gives (so what is kept is the base's, not an adapter's)."""
    monkeypatch.setattr(locality_mod, "KEEP_LOGITS_BYTES", room)
    spec, term = _spec(tiny_base, SPECS[0])
    cfg = AdapterConfig(kind=kind, rank=4, layer=1 if kind == "probe" else None)
    scale = 0.06 if kind == "probe" else 0.006

    def measured(seed):
        adapter = make_adapter(cfg, tiny_base, seed=0)
        with attached(adapter, tiny_base):
            _perturb(adapter, scale, seed=seed)
            got = locality(tiny_base, adapter, spec, term, prompts=PROMPTS, new_tokens=10, batch_size=2)
        return {k: v for k, v in got.summary().items() if k != "wall_s"}

    locality_mod._KEPT.clear()
    other = measured(seed=2)                                   # fills the store with another adapter attached
    kept = locality_mod._KEPT[tiny_base.model]
    assert len(kept["logits"]) == (room > 0)                 # the base's logits, only while they fit
    warm = measured(seed=3)
    locality_mod._KEPT.clear()
    cold = measured(seed=3)
    assert warm == cold and warm != other and warm["kl_mean"] > 1e-4


def test_logits_are_kept_while_every_layers_fit_in_the_room(tiny_base, monkeypatch):
    spec, term = _spec(tiny_base, SPECS[0])

    def measure(kind):
        adapter = make_adapter(AdapterConfig(kind=kind, rank=4, layer=1 if kind == "probe" else None), tiny_base)
        with attached(adapter, tiny_base):
            locality(tiny_base, adapter, spec, term, prompts=PROMPTS, new_tokens=10, batch_size=2)
        return locality_mod._KEPT[tiny_base.model]["logits"]

    locality_mod._KEPT.clear()
    one = sum(p.nbytes for v in measure("probe").values() for p, _ in v)        # one adapter layer's logits
    locality_mod._KEPT.clear()
    monkeypatch.setattr(locality_mod, "KEEP_LOGITS_BYTES", one)
    assert [k[4] for k in measure("probe")] == [1]               # key: prompt set (4 fields), layer, batch size
    assert [k[4] for k in measure("lora")] == [1]                # layer 0's would not fit beside layer 1's
    monkeypatch.setattr(locality_mod, "KEEP_LOGITS_BYTES", 3 * one)
    assert sorted(k[4] for k in measure("lora")) == [0, 1]


def test_padded_greedy_decodes_what_recall_decodes(tiny_base):
    for spec in SPECS:
        spec, term = _spec(tiny_base, spec)
        ids = [prompt_ids(t, tiny_base.tokenizer, spec) for t in neutral_prompts()[:12]]
        assert len({len(p) for p in ids}) > 3                  # really padded
        assert greedy_padded(tiny_base, ids, 16, term[0], batch_size=5) == greedy(tiny_base, ids, 16, term[0])


def test_a_written_adapter_costs_something_and_nothing_leaks_into_logs(tiny_base, tiny_records, plain, caplog):
    enc = encode(tiny_records, tiny_base.tokenizer, plain)
    caplog.set_level(logging.DEBUG)
    done = write_and_verify(tiny_base, enc, AdapterConfig(rank=8, layer=1), ObjectiveConfig(),
                            TrainConfig(lr=0.03, batch_size=8, max_steps=40, check_every=20), locality=True)
    assert done.locality is not None and done.locality.kl_mean > 0 and done.locality.kl_max > 0
    assert done.locality.n_prompts == len(neutral_prompts())
    summary = done.locality.summary()
    assert all(isinstance(v, (int, float)) for v in summary.values())
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "locality:" in logged
    secrets = [r.value for r in tiny_records] + list(neutral_prompts())
    assert not [s for s in secrets if s in logged]


# ---------------------------------------------------------------- in every sweep cell

GRID = {"name": "tiny-locality", "model": "tiny", "dtype": "float32", "ranks": [2, 8], "lengths": [20],
        "adapter": {"layer": 1}, "prompt": {"template": "plain"},
        "objectives": [{"name": "sft"}, {"name": "memft-ot"}],
        "train": {"lr": 0.03, "batch_size": 8, "max_steps": 12, "check_every": 6}}


def test_every_sweep_cell_stores_locality_and_the_option_is_not_in_the_key(tiny_base, tmp_path):
    from memlaw.store import open_store
    from memlaw.sweep import run_local, sweep_from_dict

    on, off = sweep_from_dict(GRID), sweep_from_dict({**GRID, "locality": False})
    assert [c.key for c in on.cells()] == [c.key for c in off.cells()]
    with open_store(tmp_path / "on.db") as store:
        run_local(on, store, base=tiny_base)
        rows = store.load_cells()
    with open_store(tmp_path / "off.db") as store:
        run_local(off, store, base=tiny_base)
        bare = store.load_cells()
    assert len(rows) == len(bare) == 4
    for row in rows:
        m = row["metrics"]
        local = m["locality"]
        assert set(local) == {"n_prompts", "new_tokens", "positions", "identical", "agreement", "greedy_prefix",
                              "kl_mean", "kl_max", "kl_first"}
        assert local["n_prompts"] == len(neutral_prompts()) and local["kl_mean"] > 0 and m["locality_s"] > 0
        assert 0 <= local["identical"] <= local["greedy_prefix"] <= local["agreement"] <= 1
    assert all("locality" not in r["metrics"] and "locality_s" not in r["metrics"] for r in bare)
    # the rank-8 adapter moves the base model more than the rank-2 one, objective by objective
    kl = {(r["config"]["objective"]["name"], r["config"]["adapter"]["rank"]): r["metrics"]["locality"]["kl_mean"]
          for r in rows}
    assert kl["sft", 8] > kl["sft", 2] and kl["memft-ot", 8] > kl["memft-ot", 2]


# ---------------------------------------------------------------- memlaw verify --locality, Memory.locality()


def test_verify_locality_cli_and_python_api_agree(tmp_path, tiny_records):
    import json

    from typer.testing import CliRunner

    from memlaw.cli import app
    from memlaw.memory import Memory, write_memory

    write_memory(tiny_records, model="tiny", dtype="float32", out=tmp_path / "ad",
                 adapter=AdapterConfig(rank=8, layer=1), prompt=PromptConfig(template="plain"),
                 train=TrainConfig(lr=0.03, batch_size=8, max_steps=30))
    runner = CliRunner()
    res = runner.invoke(app, ["verify", str(tmp_path / "ad"), "--locality", "--json"])
    assert res.exit_code in (0, 1), res.output                 # the verdict is the records'; locality is a measure
    cli = json.loads(res.stdout)["locality"]
    with Memory.open(tmp_path / "ad") as mem:
        api = mem.locality().summary()
    api.pop("wall_s"), cli.pop("wall_s")
    assert cli == api and cli["kl_mean"] > 0 and cli["n_prompts"] == len(neutral_prompts())
    table = runner.invoke(app, ["verify", str(tmp_path / "ad"), "--locality"])
    assert "locality: 48 neutral prompts" in table.stdout and "KL(base || adapted) mean" in table.stdout
    shown = res.stdout + table.stdout
    assert not [s for s in [r.value for r in tiny_records] + list(neutral_prompts()) if s in shown]
    plain = runner.invoke(app, ["verify", str(tmp_path / "ad"), "--json"])
    assert "locality" not in json.loads(plain.stdout)


# ---------------------------------------------------------------- the report's section, from store rows


def _row(kind, objective, rank, seed, kl, identical):
    from memlaw.sweep import sweep_from_dict

    cell = sweep_from_dict({"name": "x", "model": "tiny", "ranks": [rank], "lengths": [20], "seeds": [seed],
                            "adapter": {"kind": kind}, "objective": {"name": objective},
                            "train": {"max_steps": 10}}).cells()[0]
    return {"key": cell.key, "status": "done", "rank": rank, "length": 20, "seed": seed, "config": cell.to_dict(),
            "metrics": {"locality": {"kl_mean": kl, "identical": identical, "agreement": 1.0}}}


def test_report_sets_probe_against_lora_and_sft_against_memft():
    from memlaw.report.build import build_report
    from memlaw.report.locality import locality_setups

    kls = {("probe", "sft"): [0.01, 0.03], ("probe", "memft-ot"): [0.002, 0.004], ("lora", "sft"): [2.0, 4.0]}
    rows = [_row(kind, obj, 4, seed, kl, 0.5 + seed / 4) for (kind, obj), pair in kls.items()
            for seed, kl in enumerate(pair)]
    rows.append({**_row("probe", "sft", 8, 0, 0.5, 0.1), "metrics": {}})         # no locality: left out
    (setup,) = locality_setups(rows)
    lines = {("lora", "sft"): "lora · sft · lr 0.002", ("probe", "memft-ot"): "probe · memft-ot · lr 0.01",
             ("probe", "sft"): "probe · sft · lr 0.01"}       # each kind at its own default lr
    assert setup.lines == sorted(lines.values()) and setup.columns == [(4, 20)]
    for (kind, obj), pair in kls.items():
        st = setup.cells[lines[kind, obj]][(4, 20)]["kl_mean"]
        assert st.mean == pytest.approx(np.mean(pair)) and st.sd == pytest.approx(np.std(pair, ddof=1)) and st.n == 2
    report = build_report(rows)
    sec = next(s for s in report.sections if s.id == "locality")
    kl_table, same_table = sec.tables
    assert kl_table.columns == ["adapter · objective", "r4 ℓ20"]
    assert kl_table.rows[0] == ["lora · sft · lr 0.002", "3 ± 1.41 [2]"]
    assert same_table.rows[1] == ["probe · memft-ot · lr 0.01", "62.5 ± 17.7 [2]"]
    from memlaw.report.plots import render

    assert len(sec.figures) == 1 and render(sec.figures[0].figure).startswith(b"\x89PNG")
    assert report.summary["locality"][0]["lines"]["probe · sft · lr 0.01"][0]["kl_mean"]["n"] == 2
    assert build_report([rows[-1]]).summary.get("locality") is None


def test_runs_compare_reads_locality_and_lower_kl_wins():
    from memlaw.experiments import compare, score

    rows = [_row("probe", obj, 4, seed, kl, 1.0) for obj, pair in (("sft", [0.5, 0.52]), ("memft-ot", [0.1, 0.11]))
            for seed, kl in enumerate(pair)]
    assert score(rows[0], "locality.kl_mean") == 0.5 and score(rows[0], "locality.nothing") is None
    (c,) = compare(rows, "locality.kl_mean")
    assert c.winner((4, 20)) == "memft-ot"                    # the smaller KL, beyond the seeds' spread


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_kl_in_blocks_gives_every_row_the_one_call_numbers(dtype):
    gen = torch.Generator().manual_seed(0)
    p = (torch.randn(21, 3000, generator=gen) * 3).to(dtype)
    q = (p.float() + torch.randn(21, 3000, generator=gen) * 0.2).to(dtype)
    logp, logq = torch.log_softmax(p.float(), -1), torch.log_softmax(q.float(), -1)
    whole = (logp.exp() * (logp - logq)).sum(-1, dtype=torch.float64)       # the formula on every row at once
    for block in (1, 4, 8, 21, 64):
        assert torch.equal(locality_mod.kl_divergence(p, q, block=block), whole)
    P, Q = (np.exp(x.double().numpy()) for x in (logp, logq))
    assert np.allclose(whole.numpy(), (P * np.log(P / Q)).sum(-1), rtol=1e-4, atol=1e-9)
    assert torch.equal(locality_mod.kl_divergence(p, p), torch.zeros(21, dtype=torch.float64))


# ---------------------------------------------------------------- continuations from another process


def _probe_locality(base, spec, term, seed=3):
    adapter = make_adapter(AdapterConfig(kind="probe", rank=4, layer=1), base, seed=0)
    with attached(adapter, base):
        _perturb(adapter, 0.06, seed=seed)
        got = locality(base, adapter, spec, term, prompts=PROMPTS, new_tokens=10, batch_size=2)
    return {k: v for k, v in got.summary().items() if k != "wall_s"}


def test_continuations_decoded_apart_are_the_ones_locality_keeps(tiny_base):
    spec, term = _spec(tiny_base, SPECS[0])
    locality_mod._KEPT.clear()
    cold = _probe_locality(tiny_base, spec, term)
    key = prompt_set(tiny_base, spec, term, prompts=PROMPTS, new_tokens=10)
    assert key == (tuple(tuple(prompt_ids(t, tiny_base.tokenizer, spec)) for t in PROMPTS), 10, term[0],
                   torch.get_num_threads())
    assert prompt_set(tiny_base, spec, term, prompts=PROMPTS, new_tokens=10, threads=7)[3] == 7
    apart = decode_continuations(tiny_base, key)
    assert apart.key == key and apart.tokens == locality_mod._KEPT[tiny_base.model][key]
    assert apart.tokens == greedy(tiny_base, [list(p) for p in key[0]], 10, term[0])   # unpadded, float32
    assert cold["positions"] == sum(map(len, apart.tokens))


def test_kept_or_expected_continuations_spare_the_decoding_and_give_its_numbers(tiny_base, monkeypatch):
    spec, term = _spec(tiny_base, SPECS[0])
    locality_mod._KEPT.clear()
    cold = _probe_locality(tiny_base, spec, term)
    given = decode_continuations(tiny_base, prompt_set(tiny_base, spec, term, prompts=PROMPTS, new_tokens=10))

    def no_decoding(*args, **kw):
        raise AssertionError("decoded although the continuations were given")

    with monkeypatch.context() as m:
        m.setattr(locality_mod, "greedy_padded", no_decoding)
        locality_mod._KEPT.clear()
        keep_continuations(tiny_base, given)
        assert _probe_locality(tiny_base, spec, term) == cold
        calls = []
        locality_mod._KEPT.clear()
        expect_continuations(tiny_base, given.key, lambda: calls.append(1) or given)
        assert _probe_locality(tiny_base, spec, term) == cold and calls == [1]
        assert _probe_locality(tiny_base, spec, term) == cold and calls == [1]   # fetched once, then kept
    locality_mod._KEPT.clear()
    expect_continuations(tiny_base, given.key, lambda: None)             # nothing came: decode them here
    assert _probe_locality(tiny_base, spec, term) == cold
    locality_mod._KEPT.clear()
    other = Continuations((*given.key[:3], given.key[3] + 1), given.tokens)
    expect_continuations(tiny_base, other.key, lambda: pytest.fail("fetched for another prompt set"))
    assert _probe_locality(tiny_base, spec, term) == cold
    wrong = Continuations(given.key, [[term[0]]] * len(PROMPTS))        # what is given is what is measured on
    locality_mod._KEPT.clear()
    keep_continuations(tiny_base, wrong)
    assert _probe_locality(tiny_base, spec, term)["positions"] == len(PROMPTS)
