"""No speed without correctness: every fast path gives the plain path's p_t, and certificates still mean recall.

Tolerances (max |Δp_t| over every answer token; measured on the tiny model with a trained probe):
- cached prefix and answer-only logits vs the plain full-model pass: 1e-5 in float32 and in bf16
  (measured: 0.0 in both; they run the same ops on the same numbers). Logit-level checks of the
  same paths, on a subset of rows: tests/test_forward.py.
- multi-adapter (K probes in one joint pass, per-sample bmm) vs each probe alone: 1e-5 in float32,
  1e-2 in bf16 (measured ~4e-9 in both; the bf16 bound leaves room for a logit rounded the other
  way by kernels that block a joint batch of another shape differently). Training
  through the stack equals separate writes: tests/test_stack.py; a stacked sweep stores what
  separate cells store: tests/test_sweep_stack.py.
- bf16 base vs float32 base (the numerics memlaw trains and certifies in on AMX CPUs vs the plain
  ones): 0.05 (measured 0.025). A certificate is only claimed under the numerics used for recall
  (DESIGN §2), which is why the bf16 tests below certify and recall in bf16.
- training attention (`TrainConfig.attention`, sdpa's math kernel on CPU) vs the model's own kernel:
  1e-5 in float32, 0.05 in bf16 (measured 1.0e-6 and 0.011). It only shapes the weights a write reaches:
  certificates and recall run on the model's kernel, and the bf16 certificate test below trains
  with it.
- greedy decoding: the KV-cache loop gives exactly `generate`'s tokens, batched or one at a time.
- LoRA weights computing in bf16 while training (`TrainConfig.lora_compute`, float32 masters) vs
  float32 LoRA weights, same weights, bf16 base: 0.02 (measured 3.0e-3). The masters' AdamW step
  equals a float32 AdamW's exactly, the adapter is float32 after the write, and a bf16 LoRA write's
  certificates imply exact greedy recall.
"""

import random

import pytest
import torch

from memlaw.adapters import make_adapter
from memlaw.adapters.stack import ProbeStack
from memlaw.config import AdapterConfig, ObjectiveConfig, PromptConfig, TrainConfig
from memlaw.encode import encode
from memlaw.forward import TeacherForcer, joint_logits, training_attention
from memlaw.models import load_base
from memlaw.records import Record
from memlaw.train import _Float32Masters, write, write_many
from memlaw.forward import answer_probs
from memlaw.verify import base_answer_losses, greedy, verify

FAST = 1e-5          # fast path vs plain path, same dtype
JOINT_BF16 = 1e-2    # joint pass vs alone, bf16
BF16 = 0.05          # bf16 base vs float32 base
LORA_BF16 = 0.02     # LoRA weights in bf16 vs float32, bf16 base
TRAIN = TrainConfig(until="budget", max_steps=150, lr=3e-2, batch_size=8, check_every=150)


@pytest.fixture(scope="module")
def bases(tiny_base):
    return {"float32": tiny_base, "bfloat16": load_base("tiny", dtype="bfloat16")}


@pytest.fixture(scope="module")
def trained(tiny_base, tiny_records, plain):
    """A probe trained (float32) on the eight tiny records, so p_t sit near and above 0.5."""
    enc = encode(tiny_records, tiny_base.tokenizer, plain)
    ad = make_adapter(AdapterConfig(kind="probe", rank=8, layer=1), tiny_base, seed=1)
    ad.attach(tiny_base)
    write(tiny_base, ad, enc, ObjectiveConfig(), TRAIN)
    ad.detach()
    return enc, ad.eval()


def _max_dp(a, b) -> float:
    assert a.keys() == b.keys()
    return max(float((a[i].p - b[i].p).abs().max()) for i in a)


def _probs(base, adapter, enc, **tf):
    adapter.attach(base)
    try:
        return answer_probs(TeacherForcer(base, enc, **tf))
    finally:
        adapter.detach()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("cache_prefix,answer_logits", [(True, True), (True, False), (False, True)])
def test_fast_p_t_equal_plain_p_t(bases, trained, dtype, cache_prefix, answer_logits):
    enc, ad = trained
    base = bases[dtype]
    plain = _probs(base, ad, enc, plain=True)
    fast = _probs(base, ad, enc, start_layer=ad.first_layer, cache_prefix=cache_prefix, answer_logits=answer_logits)
    assert _max_dp(fast, plain) <= FAST


def test_bf16_p_t_within_stated_tolerance_of_float32(bases, trained):
    enc, ad = trained
    exact = _probs(bases["float32"], ad, enc, plain=True)
    fast_bf16 = _probs(bases["bfloat16"], ad, enc, start_layer=ad.first_layer)
    assert 0 < _max_dp(fast_bf16, exact) <= BF16


@pytest.mark.parametrize("dtype,tol", [("float32", FAST), ("bfloat16", BF16)])
def test_training_attention_p_t_within_stated_tolerance(bases, trained, dtype, tol):
    enc, ad = trained
    base = bases[dtype]
    model = _probs(base, ad, enc, start_layer=ad.first_layer)
    with training_attention("math", base.device):
        math = _probs(base, ad, enc, start_layer=ad.first_layer)
    assert _max_dp(math, model) <= tol


@pytest.mark.parametrize("mode,device,flash", [("auto", "cpu", False), ("math", "cpu", False), ("model", "cpu", True)])
def test_training_attention_picks_the_kernel(bases, trained, mode, device, flash):
    enc, ad = trained
    base = bases["bfloat16"]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with training_attention(mode, device):
            _probs(base, ad, enc, start_layer=ad.first_layer)
    names = {e.key for e in prof.key_averages()}
    assert any("scaled_dot_product" in n or "bmm" in n or "matmul" in n for n in names)
    assert any("flash" in n for n in names) is flash


def _memories(tokenizer, prompt):
    rng = random.Random(3)
    sizes = [(8, 6), (5, 4), (3, 9)]
    return [encode([Record(f"key {c}", "".join(rng.choice("0123456789") for _ in range(d))) for c in "abcdefgh"[:n]],
                   tokenizer, prompt) for n, d in sizes]


@pytest.mark.parametrize("dtype,tol", [("float32", FAST), ("bfloat16", JOINT_BF16)])
def test_joint_pass_p_t_equal_each_adapter_alone(bases, plain, dtype, tol):
    """Three memories with three probes of different ranks in ONE pass vs each probe alone on the plain path."""
    base = bases[dtype]
    encs = _memories(base.tokenizer, plain)
    probes = [make_adapter(AdapterConfig(kind="probe", rank=r, layer=1), base, seed=k) for k, r in enumerate((8, 2, 4))]
    for p in probes:
        with torch.no_grad():
            p.B.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.rank))
    stack = ProbeStack(probes)
    stack.attach(base)
    stack.eval()
    try:
        tfs = [TeacherForcer(base, e, start_layer=1) for e in encs]
        rows = [list(range(len(e))) for e in encs]
        stack.index = torch.cat([torch.full((len(r),), k) for k, r in enumerate(rows)])
        with torch.no_grad():
            joint = joint_logits(list(zip(tfs, rows)))
    finally:
        stack.index = None
        stack.detach()
    for k, (enc, (logits, batch)) in enumerate(zip(encs, joint)):
        alone = _probs(base, probes[k].eval(), enc, plain=True)
        p = torch.softmax(logits.float(), -1).gather(-1, batch.targets[..., None]).squeeze(-1)
        for b, i in enumerate(batch.rows.tolist()):
            n = int(batch.mask[b].sum())
            assert float((p[b, :n].cpu() - alone[i].p).abs().max()) <= tol


def _assert_certified_means_recalled(v) -> None:
    s = v.summary()
    assert s["certified"] > 0                      # some certified, so that the implication bites
    for r in v.records:
        if r.certified:
            assert r.em and r.first_failure is None and r.free_correct == r.n_value
    assert s["certificate_violations"] == 0


def test_bf16_certificates_imply_exact_greedy_recall(bases, tiny_records, plain):
    """Float32 is tests/test_verify.py::test_certified_records_are_recalled_exactly; here bf16 end to end."""
    base = bases["bfloat16"]
    enc = encode(tiny_records, base.tokenizer, plain)
    ad = make_adapter(AdapterConfig(kind="probe", rank=8, layer=1), base, seed=0)
    ad.attach(base)
    try:
        write(base, ad, enc, ObjectiveConfig(), TRAIN)
        v = verify(base, ad, enc, base_losses=base_answer_losses(base, enc))
    finally:
        ad.detach()
    _assert_certified_means_recalled(v)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_stacked_certificates_imply_exact_greedy_recall(bases, plain, dtype):
    """Probes trained K at a time, then unstacked and verified alone, as the stacked sweep does."""
    base = bases[dtype]
    encs = _memories(base.tokenizer, plain)
    stack = ProbeStack([make_adapter(AdapterConfig(kind="probe", rank=8, layer=1), base, seed=k) for k in range(3)])
    stack.attach(base)
    try:
        write_many(base, stack, encs, [ObjectiveConfig()] * 3, [TRAIN] * 3)
    finally:
        stack.detach()
    certified = 0
    for k, enc in enumerate(encs):
        ad = stack.unstack(k)
        ad.attach(base)
        try:
            v = verify(base, ad, enc)
        finally:
            ad.detach()
        certified += v.summary()["certified"]
        assert v.summary()["certificate_violations"] == 0
        assert all(r.em for r in v.records if r.certified)
    assert certified > 0


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_greedy_on_two_threads_gives_the_one_thread_tokens(bases, trained, dtype):
    """Batches decode side by side on two CPU threads, each on one torch thread: the tokens of one thread,
    in the prompts' order, and torch's thread count back where it was."""
    enc, ad = trained
    base = bases[dtype]
    more = encode([Record(f"key {c}{d}", "0") for c in "xyz" for d in "0123"], base.tokenizer, PromptConfig())
    prompts = enc.prompt_ids + more.prompt_ids
    limits = [len(enc.answer_ids(0)) + 2] * len(prompts)
    ad.attach(base)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = greedy(base, prompts, limits, enc.terminator[0], batch_size=3)
        torch.set_num_threads(2)
        two = greedy(base, prompts, limits, enc.terminator[0], batch_size=3)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
        ad.detach()
    assert two == one and len(one) == len(prompts)


@pytest.mark.parametrize("kind", ["probe", "lora"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_greedy_loop_gives_hf_generate_tokens(bases, trained, dtype, kind):
    """The KV-cache loop in `verify.greedy` against transformers' `generate`, batched and one at a time."""
    enc, ad = trained
    base = bases[dtype]
    if kind == "lora":                                            # a nonzero LoRA on every linear layer
        ad = make_adapter(AdapterConfig(kind="lora", rank=4), base, seed=0)
        ad.attach(base)
        with torch.no_grad():
            for p in ad.parameters():
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(p.numel()))
    else:
        ad.attach(base)
    more = encode([Record(f"key {c}{d}", "0") for c in "xyz" for d in "0123"], base.tokenizer, PromptConfig())
    prompts = enc.prompt_ids + more.prompt_ids                    # two prompt lengths, several per batch
    limits = [len(enc.answer_ids(0)) + 2] * len(prompts)
    try:
        loop = greedy(base, prompts, limits, enc.terminator[0], batch_size=5)
        hf = greedy(base, prompts, limits, enc.terminator[0], batch_size=5, hf_generate=True)
        single = [greedy(base, [p], n, enc.terminator[0])[0] for p, n in zip(prompts, limits)]
    finally:
        ad.detach()
    assert loop == hf == single
    if kind == "probe":                                           # the trained probe stops on its own
        assert any(enc.terminator[0] in out for out in loop) and any(len(out) == limits[0] for out in loop)


def _lora(base, seed=0, rank=4):
    """A nonzero LoRA on every linear layer, attached."""
    ad = make_adapter(AdapterConfig(kind="lora", rank=rank), base, seed=seed)
    ad.attach(base)
    with torch.no_grad():
        for p in ad.parameters():
            p.normal_(0, 0.1, generator=torch.Generator().manual_seed(p.numel()))
    return ad


def test_lora_bf16_weights_p_t_within_stated_tolerance(bases, trained):
    enc, _ = trained
    base = bases["bfloat16"]
    ad = _lora(base)
    try:
        tf = TeacherForcer(base, enc)
        full = answer_probs(tf)
        weights = _Float32Masters(list(ad.parameters()), torch.bfloat16)
        assert all(p.dtype == torch.bfloat16 for p in ad.parameters())
        low = answer_probs(tf)
        weights.restore()
        assert all(p.dtype == torch.float32 for p in ad.parameters())
        assert answer_probs(tf).keys() == full.keys()
        assert _max_dp(answer_probs(tf), full) == 0                 # restored: the float32 weights again
    finally:
        ad.detach()
    assert 0 < _max_dp(low, full) <= LORA_BF16


def test_master_weights_step_is_a_float32_adamw_step():
    """Grads of the bf16 compute copies, AdamW on the float32 masters: the same numbers as AdamW on
    float32 weights given those grads, and the compute copies are the masters rounded to bf16."""
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3, generator=g)), torch.nn.Parameter(torch.randn(3, generator=g))]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in params]
    weights = _Float32Masters(params, torch.bfloat16)
    opt = torch.optim.AdamW(weights.masters, lr=0.1, weight_decay=0.0)
    ref_opt = torch.optim.AdamW(ref, lr=0.1, weight_decay=0.0)
    for step in range(3):
        for p, r in zip(params, ref):
            p.grad = torch.randn(p.shape, generator=g).to(torch.bfloat16)
            r.grad = p.grad.float()
        weights.grads_to_masters()
        assert all(p.grad is None for p in params)
        opt.step()
        ref_opt.step()
        weights.masters_to_params()
        for p, m, r in zip(params, weights.masters, ref):
            assert torch.equal(m, r) and torch.equal(p, r.detach().to(torch.bfloat16))
    weights.restore()
    assert all(p.dtype == torch.float32 and torch.equal(p, r) for p, r in zip(params, ref))


def test_master_weights_float32_swaps_the_masters_in_and_back():
    params = [torch.nn.Parameter(torch.randn(4, 3))]
    weights = _Float32Masters(params, torch.bfloat16)
    with torch.no_grad():
        weights.masters[0].add_(1e-3)                          # a change bf16 cannot hold
    weights.masters_to_params()
    low = params[0].data
    with weights.float32():
        assert params[0].dtype == torch.float32 and torch.equal(params[0], weights.masters[0])
    assert params[0].data_ptr() == low.data_ptr() and params[0].dtype == torch.bfloat16   # the same compute copy


def test_float32_master_weights_are_the_parameters():
    params = [torch.nn.Parameter(torch.randn(2, 2))]
    weights = _Float32Masters(params, torch.float32)
    assert weights.masters is params
    params[0].grad = torch.ones(2, 2)
    weights.grads_to_masters()
    weights.masters_to_params()
    weights.restore()
    assert torch.equal(params[0].grad, torch.ones(2, 2))


def test_bf16_lora_certificates_imply_exact_greedy_recall(bases, tiny_records, plain, monkeypatch):
    """A LoRA written on the bf16 base with bf16 compute copies: its checks (and so the stop rule) see
    the float32 weights, it is float32 afterwards, and every certified record is recalled exactly."""
    import memlaw.train

    seen = []
    real_check = memlaw.train.check

    def spy(tf, adapter, margin, **kw):
        seen.append({p.dtype for p in adapter.parameters()})
        return real_check(tf, adapter, margin, **kw)

    monkeypatch.setattr(memlaw.train, "check", spy)
    base = bases["bfloat16"]
    enc = encode(tiny_records, base.tokenizer, plain)
    ad = make_adapter(AdapterConfig(kind="lora", rank=8), base, seed=0)
    ad.attach(base)
    try:
        res = write(base, ad, enc, ObjectiveConfig(), TrainConfig(until="certified", max_steps=300, lr=1e-2,
                                                                  batch_size=8, check_every=10))
        assert all(p.dtype == torch.float32 for p in ad.parameters())
        v = verify(base, ad, enc, base_losses=base_answer_losses(base, enc))
    finally:
        ad.detach()
    assert res.steps > 0 and seen and all(dtypes == {torch.float32} for dtypes in seen)
    assert res.history[-1]["certified"] == v.summary()["certified"]
    _assert_certified_means_recalled(v)
