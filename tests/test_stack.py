"""Multi-adapter training: K probes in one pass give what K separate writes give."""

import dataclasses
import random

import pytest
import torch

from memlaw.adapters import make_adapter
from memlaw.adapters.probe import ProbeAdapter
from memlaw.adapters.stack import ProbeStack
from memlaw.config import AdapterConfig, ObjectiveConfig, PromptConfig, TrainConfig
from memlaw.encode import encode
from memlaw.forward import TeacherForcer
from memlaw.records import Record
from memlaw.train import write, write_many
from memlaw.forward import answer_probs


def _memory(seed, n, digits):
    rng = random.Random(seed)
    return [Record(f"key {c}", "".join(rng.choice("0123456789") for _ in range(digits))) for c in "abcdefgh"[:n]]


SHARED = PromptConfig(template="plain", format="Recall the value stored under {key}:")


@pytest.fixture(params=["plain", "shared prompt"])
def setup(request, tiny_base, plain):
    """Three memories; with a shared prompt, training passes run its tokens once per adapter."""
    prompt = plain if request.param == "plain" else SHARED
    encs = [encode(_memory(s, n, d), tiny_base.tokenizer, prompt) for s, n, d in [(1, 8, 6), (2, 5, 4), (3, 3, 9)]]
    cfgs = [AdapterConfig(kind="probe", rank=r, layer=1, dropout=0.0) for r in (8, 2, 4)]
    train = TrainConfig(until="budget", max_steps=25, lr=3e-2, batch_size=4, check_every=5,
                        shared_min_rows=1)         # batches of 4 share the prompt too (the default waits for 12)
    return encs, cfgs, train


@pytest.mark.parametrize("objective,dropout", [("sft", 0.0), ("memft-ot", 0.0), ("sft", 0.1)])
def test_stack_equals_separate_writes(tiny_base, setup, objective, dropout):
    """With dropout on too: each adapter draws its masks from its own generator, seeded like `write`'s."""
    encs, cfgs, train = setup
    cfgs = [dataclasses.replace(c, dropout=dropout) for c in cfgs]
    trains = [dataclasses.replace(train, seed=s) for s in (0, 1, 2)]       # one seed per memory
    obj = ObjectiveConfig(name=objective)
    alone = []
    for enc, cfg, tr in zip(encs, cfgs, trains):
        ad = make_adapter(cfg, tiny_base, seed=7)
        ad.attach(tiny_base)
        res = write(tiny_base, ad, enc, obj, tr)
        ad.detach()
        alone.append((ad, res))
    stack = ProbeStack([make_adapter(cfg, tiny_base, seed=7) for cfg in cfgs])
    stack.attach(tiny_base)
    results = write_many(tiny_base, stack, encs, [obj] * 3, trains)
    stack.detach()
    for k, ((ad, res), joint) in enumerate(zip(alone, results)):
        assert joint.steps == res.steps
        assert [h["lr"] for h in joint.history] == [h["lr"] for h in res.history]
        assert [h["loss"] for h in joint.history] == pytest.approx([h["loss"] for h in res.history], abs=1e-4)
        p = stack.unstack(k)
        torch.testing.assert_close(p.A, ad.A.detach(), atol=2e-4, rtol=1e-3)
        torch.testing.assert_close(p.B, ad.B.detach(), atol=2e-4, rtol=1e-3)
        assert [h["certified"] for h in joint.history] == [h["certified"] for h in res.history]
        # padding of the smaller ranks stayed exactly zero
        assert torch.count_nonzero(stack.A[k, :, cfgs[k].rank:]) == 0 and torch.count_nonzero(stack.B[k, cfgs[k].rank:]) == 0


def test_probe_dropout_is_a_replayable_bernoulli_mask():
    """A separate run's mask is x·A·B · bernoulli(0.9) / 0.9 drawn from the global generator, on any
    device (not CUDA's fused dropout, whose draws a stack could not replay from its own generators);
    checked against a draw from a generator seeded the same. Off in eval."""
    probe = ProbeAdapter(8, 3, layer=0, dropout=0.1)
    with torch.no_grad():
        probe.B.normal_()
    x = torch.randn(4, 6, 8)
    delta = x @ probe.A @ probe.B
    probe.train()
    torch.manual_seed(11)
    got = probe._delta(x)
    mask = torch.empty_like(delta).bernoulli_(0.9, generator=torch.Generator().manual_seed(11))
    assert torch.equal(got, delta * (mask / 0.9))
    assert 0 < int((mask == 0).sum()) < mask.numel() // 4          # about a tenth dropped
    stack = ProbeStack([probe])
    stack.seed_dropout([11])
    stack.train()
    stack.parts = [(0, 4, 6)]
    assert torch.equal(stack._dropout(delta), got)                  # the stack replays the same mask
    probe.eval()
    assert torch.equal(probe._delta(x), delta)


def test_probe_dropout_does_not_use_torch_dropout(monkeypatch):
    """torch's dropout is ATen's bernoulli draw on CPU but a fused kernel with other draws on CUDA,
    which a stack cannot replay: neither the probe nor the stack may call it."""
    def refuse(*args, **kwargs):
        raise AssertionError("torch.nn.functional.dropout called")

    monkeypatch.setattr(torch.nn.functional, "dropout", refuse)
    probe = ProbeAdapter(8, 3, layer=0, dropout=0.1)
    probe.train()
    x = torch.randn(2, 5, 8)
    probe._delta(x)
    stack = ProbeStack([probe])
    stack.train()
    stack._dropout(torch.randn(2, 5, 8))                          # no parts: the whole batch at once
    stack.seed_dropout([0])
    stack.parts = [(0, 2, 5)]
    stack._dropout(torch.randn(2, 5, 8))


def test_stack_p_t_match_unstacked(tiny_base, setup):
    encs, cfgs, _ = setup
    stack = ProbeStack([make_adapter(cfg, tiny_base, seed=k) for k, cfg in enumerate(cfgs)])
    with torch.no_grad():
        stack.B.normal_(0, 0.3)
        for k, cfg in enumerate(cfgs):
            stack.B[k, cfg.rank:] = 0
    stack.attach(tiny_base)
    stack.eval()
    stack.index = 1
    joint = answer_probs(TeacherForcer(tiny_base, encs[1], start_layer=1))
    stack.detach()
    p = stack.unstack(1)
    p.attach(tiny_base)
    p.eval()
    alone = answer_probs(TeacherForcer(tiny_base, encs[1], start_layer=1))
    p.detach()
    for i in alone:
        torch.testing.assert_close(joint[i].p, alone[i].p, atol=1e-5, rtol=1e-5)


def test_stack_until_certified_freezes_finished_adapters(tiny_base, plain):
    encs = [encode(_memory(s, n, d), tiny_base.tokenizer, plain) for s, n, d in [(1, 8, 6), (2, 5, 4), (3, 3, 9)]]
    cfgs = [AdapterConfig(kind="probe", rank=r, layer=1, dropout=0.0) for r in (8, 2, 4)]   # (the tiny model
    # certifies these within the budget with plain prompts only)
    train = TrainConfig(until="certified", max_steps=300, lr=3e-2, batch_size=8, check_every=5)
    stack = ProbeStack([make_adapter(cfg, tiny_base, seed=0) for cfg in cfgs])
    stack.attach(tiny_base)
    results = write_many(tiny_base, stack, encs, [ObjectiveConfig()] * 3, [train] * 3)
    stack.detach()
    for k, res in enumerate(results):
        if res.certified:
            p = stack.unstack(k)
            p.attach(tiny_base)
            p.eval()
            probs = answer_probs(TeacherForcer(tiny_base, encs[k], start_layer=1))
            p.detach()
            assert all(bool((x.p > 0.5).all()) for x in probs.values())
    assert sum(r.certified for r in results) >= 2
