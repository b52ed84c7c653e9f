import pytest
import torch

from memlaw.adapters import make_adapter
from memlaw.config import AdapterConfig, ObjectiveConfig, TrainConfig
from memlaw.encode import encode
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


def test_train_attention_must_be_known():
    from memlaw.errors import ConfigError

    with pytest.raises(ConfigError, match="attention must be 'auto', 'math' or 'model', got 'flash'"):
        TrainConfig(until="certified", attention="flash")
