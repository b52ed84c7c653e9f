import math

import torch

from memlaw.adapters import make_adapter
from memlaw.config import AdapterConfig, ObjectiveConfig, PromptConfig, TrainConfig
from memlaw.encode import encode
from memlaw.forward import TeacherForcer
from memlaw.records import Record
from memlaw.train import write
from memlaw.forward import answer_probs, TokenProbs
from memlaw.verify import base_answer_losses, greedy, record_verdict, score_recall, verify


def test_answer_probs_match_softmax_of_full_model(tiny_base, tiny_records):
    enc = encode(tiny_records, tiny_base.tokenizer, PromptConfig())
    probs = answer_probs(TeacherForcer(tiny_base, enc))
    for i in (0, 5):
        seq = enc.prompt_ids[i] + enc.answer_ids(i)
        with torch.no_grad():
            logits = tiny_base.model(torch.tensor([seq])).logits[0].float()
        P = len(enc.prompt_ids[i])
        for t, tok in enumerate(enc.answer_ids(i)):
            p = torch.softmax(logits[P - 1 + t], -1)[tok]
            assert math.isclose(float(probs[i].p[t]), float(p), rel_tol=1e-5)
            assert bool(probs[i].correct[t]) == (int(logits[P - 1 + t].argmax()) == tok)


def test_record_verdict_definitions():
    p = torch.tensor([0.9, 0.5, 0.7, 0.2, 0.99])
    v = record_verdict("k", TokenProbs(p, -p.log(), torch.tensor([1, 0, 1, 0, 1], dtype=torch.bool)), n_value=3)
    assert not v.certified and v.stubborn == 2 and v.earliest_stubborn == 1  # p = 0.5 is stubborn
    assert v.n_terminator == 2 and v.tf_correct == 2 and math.isclose(v.min_p, 0.2, rel_tol=1e-6)
    ok = record_verdict("k", TokenProbs(torch.tensor([0.51, 0.6]), torch.zeros(2), torch.ones(2, dtype=torch.bool)), 1)
    assert ok.certified and ok.earliest_stubborn is None
    assert not record_verdict("k", TokenProbs(torch.tensor([0.51, 0.6]), torch.zeros(2), torch.ones(2, dtype=torch.bool)), 1,
                              margin=0.05).certified


def test_score_recall_first_failure_and_em(tiny_base):
    tok = tiny_base.tokenizer
    enc = encode([Record("a", "123")], tok, PromptConfig(template="plain"))
    v = enc.value_ids[0]
    eos = enc.terminator[0]
    assert score_recall(enc, 0, v + [eos])[:3] == (True, 3, None)
    assert score_recall(enc, 0, [v[0], v[2], v[1], eos])[:3] == (False, 1, 1)
    assert score_recall(enc, 0, v + [v[0]])[:3] == (False, 3, 3)  # no terminator: the value does not end
    assert score_recall(enc, 0, [eos])[:3] == (False, 0, 0)


def test_batched_greedy_equals_one_at_a_time(tiny_base, tiny_records):
    enc = encode(tiny_records, tiny_base.tokenizer, PromptConfig())
    batched = greedy(tiny_base, enc.prompt_ids, 8, enc.terminator[0], batch_size=8)
    single = [greedy(tiny_base, [p], 8, enc.terminator[0])[0] for p in enc.prompt_ids]
    assert batched == single
    for p, out in zip(enc.prompt_ids, single):  # and equal to a plain argmax loop with no cache
        ids = list(p)
        for _ in range(len(out)):
            with torch.no_grad():
                ids.append(int(tiny_base.model(torch.tensor([ids])).logits[0, -1].argmax()))
        assert ids[len(p):] == out


def test_certified_records_are_recalled_exactly(tiny_base, tiny_records, plain):
    enc = encode(tiny_records, tiny_base.tokenizer, plain)
    losses = base_answer_losses(tiny_base, enc)
    ad = make_adapter(AdapterConfig(kind="probe", rank=8, layer=1), tiny_base)
    ad.attach(tiny_base)
    try:
        write(tiny_base, ad, enc, ObjectiveConfig(), TrainConfig(until="budget", max_steps=150, lr=3e-2, batch_size=8,
                                                                    check_every=150))
        v = verify(tiny_base, ad, enc, base_losses=losses)
    finally:
        ad.detach()
    s = v.summary()
    assert 0 < s["certified"]  # some certified, to make the implication below bite
    for r in v.records:
        if r.certified:
            assert r.em and r.first_failure is None and r.free_correct == r.n_value
    assert s["certificate_violations"] == 0
    assert s["delta_loss"] > 0 and math.isclose(s["delta_loss"], s["L_base"] - s["L_final"])
