"""Each fast path gives the plain path's answer logits (float32, tolerance 1e-5)."""

import pytest
import torch

from memlaw.adapters import make_adapter
from memlaw.config import AdapterConfig, PromptConfig
from memlaw.encode import encode
from memlaw.forward import TeacherForcer, top_token


@pytest.fixture
def attached(tiny_base, tiny_records):
    enc = encode(tiny_records, tiny_base.tokenizer, PromptConfig())
    ad = make_adapter(AdapterConfig(kind="probe", rank=4, layer=2), tiny_base, seed=1)
    with torch.no_grad():
        ad.B.normal_(0, 0.5)  # a nonzero adapter, so the fast path must carry it too
    ad.attach(tiny_base)
    ad.eval()
    yield enc, ad
    ad.detach()


@pytest.mark.parametrize("cache_prefix,answer_logits", [(True, True), (True, False), (False, True)])
def test_fast_paths_match_plain(tiny_base, attached, cache_prefix, answer_logits):
    enc, ad = attached
    rows = [0, 3, 5, 7]
    plain, _ = TeacherForcer(tiny_base, enc, plain=True).logits(rows)
    fast_tf = TeacherForcer(tiny_base, enc, start_layer=ad.first_layer, cache_prefix=cache_prefix,
                            answer_logits=answer_logits)
    assert (fast_tf.prefix is not None) == cache_prefix
    fast, batch = fast_tf.logits(rows)
    m = batch.mask
    torch.testing.assert_close(fast[m], plain[m], atol=1e-5, rtol=1e-5)


def test_prefix_is_unaffected_by_adapter_and_gradients_flow(tiny_base, attached):
    enc, ad = attached
    tf = TeacherForcer(tiny_base, enc, start_layer=ad.first_layer)
    logits, batch = tf.logits([1, 2])
    loss = torch.log_softmax(logits.float(), -1).gather(-1, batch.targets[..., None]).squeeze(-1)[batch.mask].mean()
    loss.backward()
    assert ad.A.grad is not None and ad.B.grad is not None and ad.B.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_base.model.parameters())


def test_layers_restored_after_fast_pass(tiny_base, attached):
    enc, ad = attached
    before = list(tiny_base.layers)
    TeacherForcer(tiny_base, enc, start_layer=2).logits([0])
    assert all(a is b for a, b in zip(before, tiny_base.layers))


SHARED = PromptConfig(template="plain", format="Recall the value stored under {key}:")


@pytest.fixture
def shared_enc(tiny_base, tiny_records):
    return encode(tiny_records, tiny_base.tokenizer, SHARED)


def test_shared_prompt_len_is_the_template_prefix(tiny_base, shared_enc, tiny_records):
    from memlaw.forward import SHARED_MIN, shared_prompt_len

    tok = tiny_base.tokenizer
    literal = len(tok("Recall the value stored under ", add_special_tokens=True).input_ids)   # BOS + the text
    assert shared_prompt_len(shared_enc) == literal - 1 or shared_prompt_len(shared_enc) == literal
    # every prompt starts with those tokens, and the next token differs between two records' prompts
    P = shared_prompt_len(shared_enc)
    assert len({tuple(p[:P]) for p in shared_enc.prompt_ids}) == 1
    # the records' keys all start "key ", but that is not the template's: the shared part stops before it
    assert len({tuple(p[: P + 1]) for p in shared_enc.prompt_ids}) == 1 and P < len(shared_enc.prompt_ids[0]) - 5
    assert shared_prompt_len(encode(tiny_records, tok, PromptConfig(template="plain"))) == 0 < SHARED_MIN


@pytest.mark.parametrize("kind,cache_prefix", [("probe", True), ("probe", False), ("lora", False)])
def test_shared_prompt_pass_matches_plain_with_gradients(tiny_base, shared_enc, kind, cache_prefix):
    """Logits within 1e-5 of the plain pass; the adapter's gradients within 1e-4 of the unshared pass's
    (relative to their norm: float32 sums over a different number of rows round differently)."""
    ad = make_adapter(AdapterConfig(kind=kind, rank=4, layer=2 if kind == "probe" else None), tiny_base, seed=1)
    ad.attach(tiny_base)
    try:
        with torch.no_grad():
            for p in ad.parameters():
                p.normal_(0, 0.3)
        ad.eval()
        rows = [0, 3, 5, 7]
        plain, _ = TeacherForcer(tiny_base, shared_enc, plain=True).logits(rows)
        grads = []
        for shared in (False, True):
            tf = TeacherForcer(tiny_base, shared_enc, start_layer=ad.first_layer, cache_prefix=cache_prefix,
                               shared_prompt=shared)
            assert (tf.shared > 0) == shared
            logits, batch = tf.logits(rows)
            m = batch.mask
            # float32 sums in another order: 1.07e-5 measured on one thread (LoRA), so 3e-5
            torch.testing.assert_close(logits[m], plain[m], atol=3e-5, rtol=1e-5)
            torch.log_softmax(logits.float(), -1).gather(-1, batch.targets[..., None])[..., 0][m].sum().backward()
            grads.append([p.grad.clone() for p in ad.parameters()])
            for p in ad.parameters():
                p.grad = None
            with tf.full_prompt():
                assert tf.shared == 0
        for a, b in zip(*grads):
            assert a.norm() > 0 and float((b - a).norm() / a.norm()) < 1e-4      # measured 1.1e-5 (LoRA)
    finally:
        ad.detach()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_top_token_is_argmax_ties_and_nan_included(dtype):
    gen = torch.Generator().manual_seed(0)
    for values, shape in [(3, (16, 4096)), (50, (2, 5, 4096)), (2, (7, 11))]:     # few values: many ties
        x = torch.randint(0, values, shape, generator=gen).to(dtype)
        x[0, ..., -1] = values                                                     # a unique maximum, last
        assert torch.equal(top_token(x), x.argmax(-1))
        assert torch.equal(top_token(x[..., ::3]), x[..., ::3].argmax(-1))         # strided, as gathered rows are
    x = torch.randn(4, 100).to(dtype)
    x[1, 5], x[2, 7], x[2, 9] = float("nan"), float("inf"), float("inf")
    assert torch.equal(top_token(x), x.argmax(-1)) and top_token(x)[1:3].tolist() == [5, 7]
