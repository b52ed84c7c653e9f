import pytest
import torch

from memlaw.adapters import make_adapter
from memlaw.config import AdapterConfig, ObjectiveConfig, TrainConfig
from memlaw.encode import encode
from memlaw.engine import attached
from memlaw.train import write


def _write(base, records, prompt, *, kind="probe", rank=8, objective="sft", seed=0, **train):
    enc = encode(records, base.tokenizer, prompt)
    ad = make_adapter(AdapterConfig(kind=kind, rank=rank, layer=1), base, seed=seed)
    ad.attach(base)
    try:
        cfg = TrainConfig(**{"lr": 3e-2, "batch_size": 8, "seed": seed, **train})
        seen = []
        res = write(base, ad, enc, ObjectiveConfig(name=objective), cfg, on_step=seen.append)
        tensors = [p.detach().clone() for p in ad.parameters()]
    finally:
        ad.detach()
    return res, tensors, seen


def test_until_certified_stops_when_all_certify(tiny_base, tiny_records, plain):
    res, _, seen = _write(tiny_base, tiny_records, plain, until="certified", max_steps=400, check_every=5)
    assert res.certified and res.steps < 400 and res.steps % 5 == 0
    assert res.history[-1]["certified"] == len(tiny_records) and res.history[-1]["stubborn"] == 0
    assert res.time_to_certified is not None
    assert [s.step for s in seen] == list(range(1, res.steps + 1))
    assert seen[-1].certified == len(tiny_records)


def test_write_stops_only_when_the_certificates_own_pass_certifies_too(tiny_base, tiny_records, plain, monkeypatch):
    """The training check and `verify`'s certificate pass batch rows differently; where the latter finds a
    record below the margin (here made to, at its first call), training goes on, and the write ends
    certified by the very pass `verify` runs."""
    import memlaw.train as train_mod
    from memlaw.certificate import certified as is_certified
    from memlaw.certify import certificate_probs
    from memlaw.forward import TokenProbs

    calls = []

    def doubting(base, enc, *a, **kw):
        probs = certificate_probs(base, enc, *a, **kw)
        calls.append({i: bool(is_certified(p.p, 0.0)) for i, p in probs.items()})
        if len(calls) == 1:                          # the first confirmation: record 3 just below 0.5
            p = probs[3]
            probs[3] = TokenProbs(torch.full_like(p.p, 0.45), -torch.log(torch.full_like(p.p, 0.45)), p.correct)
        return probs

    monkeypatch.setattr(train_mod, "certificate_probs", doubting)
    res, tensors, _ = _write(tiny_base, tiny_records, plain, until="certified", max_steps=400, check_every=5)
    n = len(tiny_records)
    assert len(calls) >= 2 and res.certified
    assert [h["certified"] for h in res.history].count(n - 1) >= 1     # the doubted check did not stop it
    first = next(k for k, h in enumerate(res.history) if h["certified"] == n - 1)
    assert res.history[first]["step"] < res.steps and res.history[-1]["certified"] == n
    doubted, after = res.history[first]["step"], res.history[first + 1]["step"]
    assert after == doubted - doubted % 5 + 5      # no early full check before the next regular one (every 5)
    assert all(calls[-1].values())                   # the stop was the certificate pass's own verdict
    enc = encode(tiny_records, tiny_base.tokenizer, plain)
    ad = make_adapter(AdapterConfig(kind="probe", rank=8, layer=1), tiny_base, seed=0)
    with torch.no_grad():
        for p, t in zip(ad.parameters(), tensors):
            p.copy_(t)
    with attached(ad, tiny_base):
        ad.eval()
        again = certificate_probs(tiny_base, enc)
    assert all(is_certified(p.p, 0.0) for p in again.values())


def test_budget_runs_exactly_the_steps_and_lr_decays_to_zero(tiny_base, tiny_records, plain):
    res, _, _ = _write(tiny_base, tiny_records, plain, until="budget", max_steps=20, check_every=10)
    assert res.steps == 20 and [h["step"] for h in res.history] == [10, 20]
    assert res.history[-1]["lr"] == 0.0


def test_epochs_budget(tiny_base, tiny_records, plain):
    res, _, _ = _write(tiny_base, tiny_records, plain, until="budget", epochs=3, batch_size=3, check_every=100)
    assert res.steps == 3 * 3  # ceil(8 / 3) = 3 batches an epoch


@pytest.mark.parametrize("kind", ["probe", "lora"])
def test_same_seed_gives_bit_identical_tensors(tiny_base, tiny_records, plain, kind):
    _, a, _ = _write(tiny_base, tiny_records, plain, kind=kind, until="budget", max_steps=15, seed=4)
    _, b, _ = _write(tiny_base, tiny_records, plain, kind=kind, until="budget", max_steps=15, seed=4)
    _, c, _ = _write(tiny_base, tiny_records, plain, kind=kind, until="budget", max_steps=15, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize("objective", ["memft-ot", "memft-sw", "memft-sw-curriculum"])
def test_memft_objectives_train(tiny_base, tiny_records, plain, objective):
    res, _, _ = _write(tiny_base, tiny_records, plain, objective=objective, until="budget", max_steps=60,
                       check_every=60)
    assert res.history[-1]["stubborn"] < 8 * 7  # started with nearly every token stubborn


def test_fast_paths_do_not_change_training(tiny_base, tiny_records, plain):
    _, fast, _ = _write(tiny_base, tiny_records, plain, until="budget", max_steps=10)
    _, slow, _ = _write(tiny_base, tiny_records, plain, until="budget", max_steps=10, cache_prefix=False,
                        answer_logits=False)
    for x, y in zip(fast, slow):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("kind", ["probe", "lora"])
def test_shared_prompt_does_not_change_training(tiny_base, tiny_records, kind):
    """10 steps with the shared prompt's tokens run once per pass equal 10 steps without (no dropout)."""
    from memlaw.config import PromptConfig

    prompt = PromptConfig(template="plain", format="Recall the value stored under {key}:")
    enc = encode(tiny_records, tiny_base.tokenizer, prompt)
    out = []
    for shared in (True, False):
        ad = make_adapter(AdapterConfig(kind=kind, rank=8, layer=1, dropout=0.0), tiny_base, seed=0)
        ad.attach(tiny_base)
        try:
            res = write(tiny_base, ad, enc, ObjectiveConfig(), TrainConfig(
                until="budget", max_steps=10, lr=3e-2, batch_size=4, check_every=5, shared_prompt=shared,
                shared_min_rows=1))
            out.append(([p.detach().clone() for p in ad.parameters()], res.history))
        finally:
            ad.detach()
    (a, ha), (b, hb) = out
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-3)
    assert [h["loss"] for h in ha] == pytest.approx([h["loss"] for h in hb], abs=1e-4)


def test_train_attention_must_be_known():
    from memlaw.errors import ConfigError

    with pytest.raises(ConfigError, match="attention must be 'auto', 'math' or 'model', got 'flash'"):
        TrainConfig(until="certified", attention="flash")


def test_early_checks_stop_at_a_full_check_no_earlier_than_certification(tiny_base, tiny_records, plain):
    """Checks never change training, so a run checked every step shows where certification first holds;
    early checks stop there or later, on a full check that certifies every record, without periodic checks."""
    every, _, _ = _write(tiny_base, tiny_records, plain, until="certified", max_steps=400, check_every=1,
                         early_checks=False)
    early, _, _ = _write(tiny_base, tiny_records, plain, until="certified", max_steps=400, check_every=1000)
    assert every.certified and early.certified
    first = next(h["step"] for h in every.history if h["certified"] == len(tiny_records))
    assert every.steps == first
    assert first <= early.steps < first + 10
    assert [h["certified"] for h in early.history] == [len(tiny_records)]       # one full check, the last


def test_budget_runs_make_no_early_checks_and_retire_nothing(tiny_base, tiny_records, plain, monkeypatch):
    import memlaw.train as train

    seen = []
    real = train.check
    monkeypatch.setattr(train, "check", lambda *a, **k: seen.append(k.get("rows")) or real(*a, **k))
    res, _, _ = _write(tiny_base, tiny_records, plain, until="budget", max_steps=30, check_every=10,
                       retire_margin=0.0)
    assert res.steps == 30 and seen == [None, None, None]


def test_retired_records_leave_the_batches_and_are_still_checked(tiny_base, tiny_records, plain, monkeypatch):
    from memlaw.forward import TeacherForcer

    sizes = []
    real = TeacherForcer.logits
    monkeypatch.setattr(TeacherForcer, "logits", lambda self, rows, *a: sizes.append(len(rows)) or real(self, rows, *a))
    res, _, _ = _write(tiny_base, tiny_records, plain, until="certified", max_steps=400, check_every=1,
                       retire_margin=0.05)
    assert res.certified and res.history[-1]["certified"] == len(tiny_records)
    trained = sizes  # every logits call: training passes (batch 8 or fewer) and checks (all 8 or some)
    assert min(trained) < len(tiny_records) and max(trained) == len(tiny_records)
    assert any(0 < h["certified"] < len(tiny_records) for h in res.history)


def test_warmup_then_linear_decay():
    from memlaw.pace import Pace

    pace = Pace(TrainConfig(lr=0.1, max_steps=12, warmup=4), 3, total=12)
    assert [round(pace.lr(s), 6) for s in range(12)] == [0.025, 0.05, 0.075, 0.1, 0.1, 0.0875, 0.075, 0.0625, 0.05,
                                                         0.0375, 0.025, 0.0125]
    assert Pace(TrainConfig(lr=0.1, max_steps=10), 3, total=10).lr(0) == 0.1


def test_progress_schedule_decays_with_the_share_of_tokens_certified():
    from memlaw.pace import PROGRESS_FLOOR, Pace

    pace = Pace(TrainConfig(lr=1.0, max_steps=10, schedule="progress"), 2, total=10)
    assert pace.lr(0) == 1.0                                   # nothing seen yet
    # record 0: p = e^-1 (stubborn), e^-0.1; record 1: e^-1, and a padded token that must not count
    pace.observe(torch.tensor([0, 1]), torch.tensor([[1.0, 0.1], [1.0, 1.0]]), torch.tensor([[True, True], [True, False]]))
    assert pace.lr(1) == 1.0                                   # 2 stubborn of the 2 it has had: no progress
    pace.observe(torch.tensor([0]), torch.tensor([[0.1, 0.1]]), torch.tensor([[True, True]]))
    assert pace.lr(2) == pytest.approx(1.0 - (1.0 - PROGRESS_FLOOR) * 0.5)   # half the stubborn tokens gone
    pace.observe(torch.tensor([1]), torch.tensor([[0.5, 9.0]]), torch.tensor([[True, False]]))
    assert pace.lr(3) == pytest.approx(PROGRESS_FLOOR)


@pytest.mark.parametrize("kind", ["probe", "lora"])
def test_learning_rate_defaults_per_adapter_kind(tiny_base, tiny_records, plain, kind):
    from memlaw.config import CERTIFY_LR, DEFAULT_LR

    default = TrainConfig(until="certified")
    assert default.lr is None and default.for_kind(kind).lr == CERTIFY_LR[kind]       # a certify write's default
    assert TrainConfig(until="budget", max_steps=4).for_kind(kind).lr == DEFAULT_LR[kind]   # a budget run's (sweeps)
    assert TrainConfig(until="certified", lr=0.3).for_kind(kind).lr == 0.3
    enc = encode(tiny_records, tiny_base.tokenizer, plain)
    ad = make_adapter(AdapterConfig(kind=kind, rank=4, layer=1), tiny_base, seed=0)
    ad.attach(tiny_base)
    try:
        res = write(tiny_base, ad, enc, ObjectiveConfig(), TrainConfig(until="budget", max_steps=4, check_every=1))
    finally:
        ad.detach()
    assert [h["lr"] for h in res.history] == pytest.approx([DEFAULT_LR[kind] * (1 - s / 4) for s in (1, 2, 3, 4)])


def test_sweep_cells_and_saved_memories_hold_the_learning_rate_that_ran(tiny_base, tiny_records, plain, tmp_path):
    from memlaw.adapters import read_meta
    from memlaw.config import DEFAULT_LR
    from memlaw.memory import write_memory
    from memlaw.sweep import sweep_from_dict

    grid = {"name": "g", "model": "tiny", "ranks": [1], "lengths": [10], "adapter": {"kind": "lora"},
            "train": {"max_steps": 2}}
    assert [c.train.lr for c in sweep_from_dict(grid).cells()] == [DEFAULT_LR["lora"]]
    write_memory(tiny_records, model=tiny_base, out=tmp_path / "m", prompt=plain, recall=False,
                 adapter=AdapterConfig(kind="lora", rank=2), train=TrainConfig(until="budget", max_steps=2))
    assert read_meta(tmp_path / "m")["training"]["train"]["lr"] == DEFAULT_LR["lora"]


def test_curriculum_at_the_paper_budget_runs_the_formula_steps(tiny_base, tiny_records, plain):
    """8 records, batch 2: stages of 2, 2, 4, 6, 8 records (20-80 % in whole batches, then all); the
    paper's schedule for small sets ends its stages at 0.1/0.2/0.3/0.4/1.5 budgets, so a budget of 40
    steps runs round(40 · (0.1 · (2 + 2 + 4 + 6) / 8 + 1.1 · 8 / 8)) = 51 steps, the LR reaching 0 at the last."""
    enc = encode(tiny_records, tiny_base.tokenizer, plain)
    runs = {}
    for name, equal in (("sft", True), ("memft-sw-curriculum", True), ("memft-sw-curriculum", False)):
        ad = make_adapter(AdapterConfig(rank=4, layer=1), tiny_base, seed=0)
        with attached(ad, tiny_base):
            runs[name, equal] = write(tiny_base, ad, enc, ObjectiveConfig(name=name, equal_budget=equal),
                                      TrainConfig(lr=3e-2, batch_size=2, max_steps=40, check_every=1000))
    assert runs["sft", True].steps == runs["memft-sw-curriculum", True].steps == 40
    paper = runs["memft-sw-curriculum", False]
    assert paper.steps == 51 and paper.history[-1]["step"] == 51 and paper.history[-1]["lr"] == 0.0


def test_curriculum_batches_come_from_the_active_set_of_their_step(tiny_base, tiny_records, plain):
    from memlaw.curriculum import curriculum_order, curriculum_plan
    from memlaw.train import _Run

    enc = encode(tiny_records, tiny_base.tokenizer, plain)
    cfg = TrainConfig(lr=3e-2, batch_size=2, max_steps=60, seed=3)
    run = _Run(tiny_base, enc, ObjectiveConfig(name="memft-sw-curriculum"), cfg, start_layer=1)
    plan, order = curriculum_plan(8, 2, 60, (0.2, 0.4, 0.6, 0.8, 1.0)), curriculum_order(8, 3).tolist()
    seen: dict[int, set[int]] = {}
    for step in range(run.total):
        run.step = step
        rows = run.next_rows()
        assert set(rows) <= set(order[: plan.size(step)]), step
        seen.setdefault(plan.stage(step), set()).update(rows)
    assert [sorted(seen[k]) for k in range(5)] == [sorted(order[:n]) for n in plan.sizes]   # each stage trains all of its set
