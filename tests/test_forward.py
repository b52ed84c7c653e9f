"""Each fast path gives the plain path's answer logits (float32, tolerance 1e-5)."""

import pytest
import torch

from memlaw.adapters import make_adapter
from memlaw.config import AdapterConfig, PromptConfig
from memlaw.encode import encode
from memlaw.forward import TeacherForcer


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
