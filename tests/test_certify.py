"""The certificate's pass (`memlaw.certify`) gives the plain pass's p_t, whichever rows share its batches.

Records of several lengths, so that rows go into several length buckets, and prompts with and
without a shared template head (the head is computed once per length). Tolerances (max |Δp_t|
against the plain full-model pass on a padded batch, the pass `verify(fast=False)` runs):
- float32: 1e-5, as for every fast path (tests/test_fastpaths.py); measured 0.0 with the shared
  head, 5.4e-7 without;
- bf16: 0.02. Measured 0.0 on the trained records below. sdpa in bf16 rounds a position differently
  with the length of the padded row it sits in, and the certificate's pass pads nothing, so on
  longer records it sits where the plain pass run one record at a time sits: 0.0 from that, 7.4e-4
  from the padded batch (`test_bf16_padding_moves_the_plain_pass_as_far`); 7.9e-3 on another record set,
  and 0.014 on 17 mixed-length SmolLM2 records (where p_t of both passes are 0.024 from a KV-cache decode's).
"""

import random

import pytest
import torch

from memlaw.adapters import make_adapter
from memlaw.certify import certificate_probs
from memlaw.config import AdapterConfig, ObjectiveConfig, PromptConfig, TrainConfig
from memlaw.encode import encode
from memlaw.forward import TeacherForcer, answer_probs, shared_prompt_len, token_stats
from memlaw.models import load_base
from memlaw.records import Record
from memlaw.train import write
from memlaw.verify import verify

FAST = 1e-5
TOL = {"float32": FAST, "bfloat16": 0.02}     # bf16: the plain pass's own padding dependence (see above)
SHARED = PromptConfig(template="plain", format="Recall the value stored under {key}:")
PROMPTS = {"shared head": SHARED, "plain": PromptConfig(template="plain")}


@pytest.fixture(scope="module")
def bases(tiny_base):
    return {"float32": tiny_base, "bfloat16": load_base("tiny", dtype="bfloat16")}


def _records() -> list[Record]:
    """Eight keys of three lengths and values of 3-7 digits, so rows fall into several length buckets."""
    rng = random.Random(5)
    return [Record("k" * (i % 3) + f"key {c}", "".join(rng.choice("0123456789") for _ in range(3 + i % 5)))
            for i, c in enumerate("abcdefgh")]


@pytest.fixture(scope="module")
def trained(tiny_base):
    """Per prompt: the encoded records and a probe trained on them (float32): some certify, some do not."""
    out = {}
    for (name, prompt), steps in zip(PROMPTS.items(), (300, 150)):
        enc = encode(_records(), tiny_base.tokenizer, prompt)
        ad = make_adapter(AdapterConfig(kind="probe", rank=8, layer=1), tiny_base, seed=1)
        ad.attach(tiny_base)
        train = TrainConfig(until="budget", max_steps=steps, lr=3e-2, batch_size=8)
        write(tiny_base, ad, enc, ObjectiveConfig(), train)
        ad.detach()
        out[name] = enc, ad.eval()
    return out


def _adapter(base, kind: str, trained_probe=None):
    if trained_probe is not None:
        trained_probe.attach(base)
        return trained_probe
    ad = make_adapter(AdapterConfig(kind=kind, rank=4, layer=1 if kind == "probe" else None), base, seed=2)
    ad.attach(base)
    with torch.no_grad():
        for p in ad.parameters():
            p.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    ad.eval()
    return ad


def _max_dp(a, b) -> float:
    assert a.keys() == b.keys()
    return max(float((a[i].p - b[i].p).abs().max()) for i in a)


@pytest.mark.parametrize("kind", ["probe", "lora"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_certificate_probs_equal_the_plain_pass(bases, trained, dtype, kind, prompt):
    base = bases[dtype]
    enc, probe = trained[prompt]
    assert (shared_prompt_len(enc) > 0) == (prompt == "shared head")
    assert len({len(p) + len(a) for p, a in zip(enc.prompt_ids, enc.value_ids)}) >= 4
    ad = _adapter(base, kind, probe if kind == "probe" else None)
    try:
        plain = answer_probs(TeacherForcer(base, enc, plain=True))
        fast = certificate_probs(base, enc, batch_size=3)
    finally:
        ad.detach()
    assert _max_dp(fast, plain) <= TOL[dtype]
    for i in plain:
        assert len(fast[i].p) == len(enc.answer_ids(i))
        torch.testing.assert_close(fast[i].nll, plain[i].nll, atol=TOL[dtype] * 4, rtol=0)
        if dtype == "float32":
            assert torch.equal(fast[i].correct, plain[i].correct)
    if kind == "probe":                          # trained: some tokens on each side of 0.5
        assert min(float(p.p.min()) for p in plain.values()) < 0.5 < max(float(p.p.max()) for p in plain.values())


@pytest.mark.parametrize("prompt", PROMPTS)
def test_bf16_padding_moves_the_plain_pass_as_far(bases, prompt):
    """Longer records (8-51 tokens) in bf16: the plain pass moves with the padding of its batch, and the
    certificate's pass (which pads nothing) is no further from the padded pass than the plain pass
    run one record at a time is."""
    base = bases["bfloat16"]
    rng = random.Random(5)
    records = [Record("k" * (i % 3) + f"key {c}", "".join(rng.choice("0123456789") for _ in range(3 + 2 * (i % 6))))
               for i, c in enumerate("abcdefghijkl")]
    enc = encode(records, base.tokenizer, PROMPTS[prompt])
    ad = _adapter(base, "probe")
    try:
        padded = answer_probs(TeacherForcer(base, enc, plain=True))
        alone = {i: answer_probs(TeacherForcer(base, enc, plain=True), [i], chunk=1)[i] for i in padded}
        fast = certificate_probs(base, enc, batch_size=3)
    finally:
        ad.detach()
    spread = _max_dp(padded, alone)                 # measured 7.0e-4 (shared head), 3.9e-4 (plain)
    assert FAST < spread <= TOL["bfloat16"]
    assert _max_dp(fast, padded) <= spread + FAST


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_records_p_t_do_not_depend_on_its_batch(bases, dtype):
    """Alone, in batches of 1, and with every other record: the same numbers (a verdict is the record's own)."""
    base = bases[dtype]
    enc = encode(_records(), base.tokenizer, SHARED)
    ad = _adapter(base, "probe")
    try:
        together = certificate_probs(base, enc)
        ones = certificate_probs(base, enc, batch_size=1)
        alone = {i: certificate_probs(base, enc, [i])[i] for i in (0, 4, 7)}
        backwards = certificate_probs(base, enc, list(reversed(range(len(enc)))), batch_size=2)
    finally:
        ad.detach()
    for other in (ones, backwards):
        assert _max_dp(other, together) == 0.0
    assert max(float((alone[i].p - together[i].p).abs().max()) for i in alone) == 0.0


@pytest.mark.parametrize("kind", ["probe", "lora"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_threads_give_the_one_thread_numbers(bases, dtype, kind):
    """On several CPU threads, chunks run side by side, each on one torch thread: the numbers are the
    one-thread pass's bit for bit (the probe's hook keeps each thread's MLP input apart), in order, and
    torch's thread count is restored."""
    base = bases[dtype]
    enc = encode(_records(), base.tokenizer, SHARED)
    ad = _adapter(base, kind)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = certificate_probs(base, enc, batch_size=1)
        torch.set_num_threads(2)
        seen = []
        for _ in range(10):                            # chunks of one row: 8 passes, two at a time
            two = certificate_probs(base, enc, batch_size=1, on_chunk=lambda probs, n: seen.append(len(probs)))
            assert torch.get_num_threads() == 2
            assert all(torch.equal(two[i].p, one[i].p) and torch.equal(two[i].correct, one[i].correct) for i in one)
        assert seen == list(range(1, len(enc) + 1)) * 10
    finally:
        torch.set_num_threads(before)
        ad.detach()


def test_without_a_usable_shared_head_rows_run_in_full(bases, monkeypatch):
    """A sliding-window model whose rows outgrow the window keeps no shared head (its cache would drop it)."""
    base = bases["float32"]
    enc = encode(_records(), base.tokenizer, SHARED)
    ad = _adapter(base, "probe")
    try:
        plain = answer_probs(TeacherForcer(base, enc, plain=True))
        monkeypatch.setattr(base.model.config, "sliding_window", 4, raising=False)
        calls = []
        hook = base.model.model.register_forward_pre_hook(lambda m, a, kw: calls.append(kw), with_kwargs=True)
        try:
            fast = certificate_probs(base, enc)
        finally:
            hook.remove()
    finally:
        ad.detach()
    assert all(kw.get("use_cache") is False for kw in calls)
    assert _max_dp(fast, plain) <= FAST


def test_token_stats_equal_one_log_softmax_and_argmax():
    """Blocks of positions give the numbers of one call; the argmax keeps the first of tied maxima."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(21, 300, generator=gen).bfloat16()
    logits[3, 7] = logits[3, 9] = logits[3].max() + 1          # a tie: argmax is 7, so target 9 is not correct
    targets = torch.randint(0, 300, (21,), generator=gen)
    targets[3], targets[4] = 9, int(logits[4].float().argmax())
    nll, correct = token_stats(logits, targets, block=4)
    want = -torch.log_softmax(logits.float(), -1).gather(-1, targets[:, None]).squeeze(-1)
    assert torch.equal(nll, want)
    assert torch.equal(correct, logits.argmax(-1) == targets)
    assert not correct[3] and correct[4]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_verify_verdicts_equal_the_plain_pass(bases, trained, dtype):
    """`verify` (the certificate's pass) and `verify(fast=False)` (the plain pass): the same verdicts."""
    base = bases[dtype]
    enc, probe = trained["shared head"]
    ad = _adapter(base, "probe", probe)
    try:
        fast = verify(base, ad, enc, recall=False, batch_size=4)
        plain = verify(base, ad, enc, recall=False, fast=False)
    finally:
        ad.detach()
    assert 0 < fast.summary()["certified"] < len(enc)
    for a, b in zip(fast.records, plain.records):
        assert (a.certified, a.stubborn, a.earliest_stubborn, a.tf_correct) == \
               (b.certified, b.stubborn, b.earliest_stubborn, b.tf_correct)
        assert abs(a.min_p - b.min_p) <= FAST
