"""Objectives against their formulas, written out again here as plain Python loops."""

import math
import random

import pytest
import torch
import torch.nn.functional as F

from memlaw.config import ObjectiveConfig
from memlaw.errors import ConfigError
from memlaw.curriculum import curriculum_order
from memlaw.objectives import (
    SWState,
    make_objective,
    memft_loss_func,
    ot_weights,
    sft_weights,
    sw_weights,
    token_nll,
    weighted_loss,
)

LN2 = math.log(2.0)


def random_batch(seed, B=4, T=12, V=7):
    """Random logits and targets with right padding; token_loss/correct derived as the train loop does."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g) * 2
    targets = torch.randint(0, V, (B, T), generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None] < lengths[:, None]
    targets = torch.where(mask, targets, -100)
    loss = token_nll(logits, targets, mask)
    correct = (logits.argmax(-1) == targets) & mask
    return logits, targets, mask, loss, correct


# ---- reference implementations (loops over Python floats) ----


def ref_ot(loss, mask, tau, fallback):
    w = [[1.0 if m and math.exp(-x) < tau else 0.0 for x, m in zip(row, mrow)] for row, mrow in zip(loss, mask)]
    if not any(any(r) for r in w):
        w = [[1.0 if m else 0.0 for m in mrow] for mrow in mask] if fallback == "sft" else w
    return w


SW_DEFAULTS = dict(
    tau=0.5, kappa=10.0, window=50, decay=20.0, floor=0.01, patience=3, expansion_step=0.5, expansion_max=4.0
)


def ref_sw(loss, mask, correct, state, rows, **kw):
    """state: dict record -> [a_prev, P, E], updated in place. Returns weights and W per row."""
    p = {**SW_DEFAULTS, **kw}
    out, widths = [], []
    for row, mrow, crow, rec in zip(loss, mask, correct, rows):
        errors = [t for t in range(len(row)) if mrow[t] and not crow[t]]
        has_err = bool(errors)
        a = errors[0] if has_err else 0
        a_prev, P, E = state.setdefault(rec, [-1, 0, 1.0])
        stuck = has_err and a == a_prev
        P = P + 1 if stuck else 0
        E = min(E + p["expansion_step"], p["expansion_max"]) if P >= p["patience"] else 1.0
        a_prev = a if has_err else -1
        state[rec] = [a_prev, P, E]
        W = p["window"] * E
        w = []
        for t, (x, m) in enumerate(zip(row, mrow)):
            b = 1 / (1 + math.exp(-p["kappa"] * (x + math.log(p["tau"])))) if m else 0.0
            if not has_err:
                mt = 1.0
            elif t - a < W:
                mt = math.exp(-max(t - a, 0) / p["decay"])
            else:
                mt = p["floor"]
            w.append(b * mt)
        out.append(w)
        widths.append(W)
    if sum(map(sum, out)) <= 1e-5:
        out = [[1.0 if m else 0.0 for m in mrow] for mrow in mask]
    return out, widths


# ---- token_nll, weighted_loss, sft ----


def test_token_nll_matches_cross_entropy_and_zero_at_padding():
    logits, targets, mask, loss, _ = random_batch(0)
    for b in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            want = F.cross_entropy(logits[b, t], targets[b, t]).item() if mask[b, t] else 0.0
            assert loss[b, t].item() == pytest.approx(want, abs=1e-6)
    half = token_nll(logits.bfloat16(), targets, mask)
    assert half.dtype == torch.float32 and half.shape == mask.shape
    torch.testing.assert_close(half, token_nll(logits.bfloat16().float(), targets, mask))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cache_bytes", [1 << 20, 4 * 50 * 3])      # one chunk; chunks of 3 rows and a short last one
def test_token_nll_value_and_gradient_equal_float32_cross_entropy(monkeypatch, dtype, cache_bytes):
    """The chunked CE against F.cross_entropy on the float32 copy (what token_nll computed before):
    values within float32 rounding, logit gradients within one rounding of the logits' dtype."""
    from memlaw.objectives import _ChunkedNLL

    monkeypatch.setattr(_ChunkedNLL, "CACHE_BYTES", cache_bytes)
    g = torch.Generator().manual_seed(3)
    B, T, V = 4, 5, 50
    logits = (torch.randn(B, T, V, generator=g) * 4).to(dtype).requires_grad_(True)
    targets = torch.randint(0, V, (B, T), generator=g)
    mask = torch.rand(B, T, generator=g) > 0.25
    w = torch.rand(B, T, generator=g)
    nll = token_nll(logits, targets, mask)
    (nll * w).sum().backward()
    got_grad, logits.grad = logits.grad.clone(), None
    safe = torch.where(mask, targets, torch.full_like(targets, -100))
    want = F.cross_entropy(logits.float().flatten(0, 1), safe.flatten(), ignore_index=-100, reduction="none")
    (want.view(B, T) * w).sum().backward()
    assert nll.dtype == torch.float32
    torch.testing.assert_close(nll, want.view(B, T), atol=1e-5, rtol=1e-6)
    assert torch.all(nll[~mask] == 0) and torch.all(got_grad[~mask] == 0)
    assert got_grad.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 2 ** -8                # bf16: 8 significant bits
    torch.testing.assert_close(got_grad.float(), logits.grad.float(), atol=tol, rtol=tol)


def test_weighted_loss_value_and_gradient_only_on_weighted_tokens():
    _, _, mask, loss, _ = random_batch(1)
    leaf = loss.clone().requires_grad_(True)
    w = ot_weights(loss, mask, 0.5, "skip")
    assert 0 < w.sum() < mask.sum()
    out = weighted_loss(leaf, w)
    assert out.item() == pytest.approx(((loss * w).sum() / w.sum()).item(), rel=1e-6)
    out.backward()
    assert torch.equal(leaf.grad != 0, w != 0)
    torch.testing.assert_close(leaf.grad, w / w.sum())


def test_weighted_loss_all_zero_weights_is_zero_without_nan():
    leaf = torch.rand(3, 5).requires_grad_(True)
    out = weighted_loss(leaf, torch.zeros(3, 5))
    out.backward()
    assert out.item() == 0.0 and torch.equal(leaf.grad, torch.zeros(3, 5))


def test_sft_is_mean_answer_token_loss():
    _, _, mask, loss, _ = random_batch(2)
    assert torch.equal(sft_weights(mask), mask.float())
    assert weighted_loss(loss, sft_weights(mask)).item() == pytest.approx(loss[mask].mean().item(), rel=1e-6)


# ---- memft-ot ----


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("tau", [0.3, 0.5, 0.9])
@pytest.mark.parametrize("fallback", ["sft", "skip"])
def test_ot_weights_match_loop(seed, tau, fallback):
    _, _, mask, loss, _ = random_batch(seed)
    w = ot_weights(loss, mask, tau, fallback)
    assert w.dtype == torch.float32
    assert w.tolist() == ref_ot(loss.tolist(), mask.tolist(), tau, fallback)


def test_ot_no_token_below_threshold_both_fallbacks():
    mask = torch.tensor([[True, True, False], [True, False, False]])
    loss = torch.tensor([[0.1, 0.2, 9.0], [0.3, 9.0, 9.0]])  # padding loss is never looked at
    assert torch.equal(ot_weights(loss, mask, 0.5, "sft"), mask.float())
    assert torch.equal(ot_weights(loss, mask, 0.5, "skip"), torch.zeros(2, 3))


def test_ot_all_below_threshold_is_the_mask():
    mask = torch.tensor([[True, True, False]])
    loss = torch.tensor([[2.0, 3.0, 0.0]])
    for fallback in ("sft", "skip"):
        assert torch.equal(ot_weights(loss, mask, 0.5, fallback), mask.float())


@pytest.mark.parametrize("tau", [0.5, 0.25, 0.7])
def test_ot_threshold_is_strict(tau):
    at = torch.tensor(-math.log(tau), dtype=torch.float32)  # p = tau, as float32 rounds it
    above = torch.nextafter(at, torch.tensor(10.0))  # p just below tau
    loss = torch.stack([at, above, at])[None]
    mask = torch.ones(1, 3, dtype=torch.bool)
    assert ot_weights(loss, mask, tau, "skip").tolist() == [[0.0, 1.0, 0.0]]


def test_ot_threshold_at_half_from_logits():
    logits = torch.zeros(1, 1, 2)  # p = 0.5 exactly
    loss = token_nll(logits, torch.tensor([[0]]), torch.ones(1, 1, dtype=torch.bool))
    assert ot_weights(loss, torch.ones(1, 1, dtype=torch.bool), 0.5, "skip").sum() == 0


@pytest.mark.parametrize("seed", range(3))
def test_ot_tau_one_equals_sft(seed):
    _, _, mask, loss, _ = random_batch(seed)
    loss[0, 0] = 0.0  # p rounded to 1 still counts
    for fallback in ("sft", "skip"):
        assert torch.equal(ot_weights(loss, mask, 1.0, fallback), sft_weights(mask))


def test_ot_padding_never_weighted():
    mask = torch.tensor([[True, False, False], [False, False, False]])
    loss = torch.tensor([[0.1, 5.0, 5.0], [5.0, 5.0, 5.0]])
    for fallback in ("sft", "skip"):
        assert (ot_weights(loss, mask, 0.5, fallback)[~mask] == 0).all()


def test_ot_rejects_unknown_fallback():
    with pytest.raises(ConfigError, match="fallback"):
        ot_weights(torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool), 0.5, "none")


# ---- memft-sw ----


@pytest.mark.parametrize("seed", range(4))
def test_sw_weights_match_loop_over_steps_and_shuffled_batches(seed):
    """Several steps, records in shuffled rows; small windows so the floor and growth are exercised."""
    rng = random.Random(seed)
    N, T, kw = 6, 10, dict(window=3, decay=2.0, patience=2, expansion_step=0.5, expansion_max=2.0)
    patterns = {r: [[rng.random() < 0.7 for _ in range(T)] for _ in range(2)] for r in range(N)}
    state, ref_state = SWState.new(N), {}
    for step in range(12):
        rows = rng.sample(range(N), 4)
        _, _, mask, loss, _ = random_batch(100 * seed + step, B=4, T=T)
        correct = torch.tensor([patterns[r][rng.random() < 0.2] for r in rows]) & mask
        w = sw_weights(loss, mask, correct, state, torch.tensor(rows), **kw)
        want, _ = ref_sw(loss.tolist(), mask.tolist(), correct.tolist(), ref_state, rows, **kw)
        torch.testing.assert_close(w, torch.tensor(want), atol=1e-6, rtol=1e-5)
        for r, want_state in ref_state.items():
            got = [state.anchor_prev[r].item(), state.patience_count[r].item(), state.expansion[r].item()]
            assert got == want_state


def one_record(T, errors, length=None):
    """Loss 1.0 everywhere (b = σ(κ(1 − ln 2))), teacher-forced errors at the given positions."""
    length = T if length is None else length
    mask = (torch.arange(T) < length)[None]
    correct = torch.ones(1, T, dtype=torch.bool)
    correct[0, list(errors)] = False
    return torch.full((1, T), 1.0) * mask, mask, correct


B_AT_1 = 1 / (1 + math.exp(-10 * (1.0 - LN2)))


def test_sw_anchor_at_first_and_last_answer_position():
    T = 8
    for anchor in (0, T - 1):
        loss, mask, correct = one_record(T, [anchor])
        w = sw_weights(loss, mask, correct, SWState.new(1), torch.tensor([0]))[0]
        for t in range(T):
            assert w[t].item() == pytest.approx(B_AT_1 * math.exp(-max(t - anchor, 0) / 20), rel=1e-6)


def test_sw_anchor_is_first_error_and_ignores_padding():
    loss, mask, correct = one_record(10, [2, 5, 8], length=6)  # error at 8 is padding
    loss[0, 6:] = 7.0
    state = SWState.new(1)
    w = sw_weights(loss, mask, correct, state, torch.tensor([0]))
    assert state.anchor_prev.tolist() == [2]
    assert (w[0, 6:] == 0).all()
    loss, mask, correct = one_record(10, [8], length=6)  # only error is padding: no anchor
    w = sw_weights(loss, mask, correct, state, torch.tensor([0]))
    assert state.anchor_prev.tolist() == [-1] and (w[0, 6:] == 0).all()


def test_sw_record_without_error_has_m_one():
    loss, mask, correct = one_record(70, [])
    w = sw_weights(loss, mask, correct, SWState.new(1), torch.tensor([0]))
    torch.testing.assert_close(w, torch.full((1, 70), B_AT_1))


def test_sw_soft_threshold_is_half_at_p_half():
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss = torch.tensor([[LN2, 0.0]])
    w = sw_weights(loss, mask, torch.ones(1, 2, dtype=torch.bool), SWState.new(1), torch.tensor([0]))
    assert w[0, 0].item() == pytest.approx(0.5) and w[0, 1].item() == pytest.approx(1 / (1 + 2**10))


def widths_from_weights(w, anchor):
    """W recovered from the weights: the first offset t − a where m drops to the floor."""
    m = (w[0] / B_AT_1).tolist()
    return next(t - anchor for t in range(anchor, len(m)) if m[t] == pytest.approx(0.01, rel=1e-5))


def test_sw_window_grows_after_three_stuck_steps_then_resets():
    T, anchor = 260, 3
    state = SWState.new(1)
    rows = torch.tensor([0])
    loss, mask, correct = one_record(T, [anchor])
    widths = []
    for _ in range(10):
        w = sw_weights(loss, mask, correct, state, rows)
        widths.append(widths_from_weights(w, anchor))
    # step 1 sets the anchor; steps 2, 3, 4 repeat it (P = 1, 2, 3): E grows from the 3rd repeat, capped at 4
    assert widths == [50, 50, 50, 75, 100, 125, 150, 175, 200, 200]
    loss, mask, correct = one_record(T, [anchor + 1])  # anchor moves: reset
    assert widths_from_weights(sw_weights(loss, mask, correct, state, rows), anchor + 1) == 50
    assert state.patience_count.tolist() == [0] and state.expansion.tolist() == [1.0]
    for _ in range(3):
        w = sw_weights(loss, mask, correct, state, rows)
    assert widths_from_weights(w, anchor + 1) == 75
    no_err = one_record(T, [])
    sw_weights(*no_err, state, rows)  # no error: reset, a_prev = −1
    assert (state.anchor_prev.tolist(), state.patience_count.tolist(), state.expansion.tolist()) == ([-1], [0], [1.0])
    assert widths_from_weights(sw_weights(loss, mask, correct, state, rows), anchor + 1) == 50


def test_sw_state_is_per_record_whatever_the_row():
    T = 12
    recs = {0: one_record(T, [2]), 1: one_record(T, [5]), 2: one_record(T, [])}
    orders = [[0, 1, 2], [2, 0, 1], [1, 2, 0], [0, 2, 1], [2, 1, 0]]
    kw = dict(window=4, decay=3.0)
    batched, alone = SWState.new(3), SWState.new(3)
    for order in orders:
        loss = torch.cat([recs[r][0] for r in order])
        mask = torch.cat([recs[r][1] for r in order])
        correct = torch.cat([recs[r][2] for r in order])
        w = sw_weights(loss, mask, correct, batched, torch.tensor(order), **kw)
        for i, r in enumerate(order):
            w1 = sw_weights(*recs[r], alone, torch.tensor([r]), **kw)
            torch.testing.assert_close(w[i : i + 1], w1)
    for name in ("anchor_prev", "patience_count", "expansion"):
        assert torch.equal(getattr(batched, name), getattr(alone, name))
    assert batched.expansion.tolist() == [2.0, 2.0, 1.0]


def test_sw_falls_back_to_mask_below_total_floor():
    mask, correct, rows = torch.tensor([[True, False]]), torch.ones(1, 2, dtype=torch.bool), torch.tensor([0])
    b_min = 1 / (1 + 2**10)  # σ(−κ ln 2) at ℓ = 0, above the paper's 1e-5 floor
    w = sw_weights(torch.zeros(1, 2), mask, correct, SWState.new(1), rows)
    assert w[0, 0].item() == pytest.approx(b_min) and w[0, 1] == 0
    w = sw_weights(torch.zeros(1, 2), mask, correct, SWState.new(1), rows, min_total=2 * b_min)
    assert torch.equal(w, mask.float())  # total weight under the floor: SFT on the answer tokens
    nothing = torch.zeros(1, 2, dtype=torch.bool)
    assert torch.equal(sw_weights(torch.zeros(1, 2), nothing, correct, SWState.new(1), rows), torch.zeros(1, 2))


def test_sw_weights_are_detached():
    loss, mask, correct = one_record(5, [1])
    loss = loss.requires_grad_(True)
    assert not sw_weights(loss, mask, correct, SWState.new(1), torch.tensor([0])).requires_grad


# ---- Objective ----


def test_make_objective_dispatch():
    _, _, mask, loss, correct = random_batch(3)
    rows = torch.arange(4)
    assert torch.equal(make_objective(ObjectiveConfig(name="sft"), 4).weights(loss, mask, correct, rows), mask.float())
    ot = make_objective(ObjectiveConfig(name="memft-ot", tau=0.3), 4)
    assert torch.equal(ot.weights(loss, mask, correct, rows), ot_weights(loss, mask, 0.3, "sft"))
    sw = make_objective(ObjectiveConfig(name="memft-sw", window=4), 4)
    want = sw_weights(loss, mask, correct, SWState.new(4), rows, window=4)
    assert torch.equal(sw.weights(loss, mask, correct, rows), want)
    for obj in (ot, sw):
        assert obj.active(0) is None and obj.stage(5) == 0
    assert sw.name == "memft-sw" and sw.state is not None


def test_curriculum_objective_skips_and_schedules():
    cfg = ObjectiveConfig(name="memft-sw-curriculum", fallback="sft")
    obj = make_objective(cfg, 100, seed=42, batch_size=10, budget_steps=2600)
    mask = torch.ones(2, 3, dtype=torch.bool)
    easy = torch.full((2, 3), 0.1)
    assert torch.equal(obj.weights(easy, mask, mask, torch.arange(2)), torch.zeros(2, 3))  # zero_bp, not SFT
    order = curriculum_order(100, 42)
    # equal budget: the paper's 2600 steps for PB1000 are this budget, so its step boundaries hold exactly
    for step, size in [(0, 20), (39, 20), (40, 40), (119, 40), (120, 60), (239, 60), (240, 80), (399, 80),
                       (400, 100), (2599, 100)]:
        assert torch.equal(obj.active(step), order[:size]), step
    assert obj.total_steps == 2600


# ---- memft_loss_func (outside memlaw) ----


def hf_batch(seed, B=3, S=9, V=11):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, S, V, generator=g) * 2
    labels = torch.randint(0, V, (B, S), generator=g)
    labels[:, :3] = -100  # prompt
    labels[1, 7:] = -100  # padding
    return logits, labels


@pytest.mark.parametrize("objective", ["sft", "memft-ot", "memft-sw"])
def test_loss_func_shifts_like_hf_and_weights(objective):
    logits, labels = hf_batch(0)
    got = memft_loss_func(objective, tau=0.5)({"logits": logits}, labels)
    ell, w = [], []
    for b in range(labels.shape[0]):
        row_l, row_m, row_c = [], [], []
        for i in range(labels.shape[1] - 1):  # position i predicts token i + 1
            y = labels[b, i + 1].item()
            row_m.append(y != -100)
            row_l.append(F.cross_entropy(logits[b, i], torch.tensor(max(y, 0))).item() if y != -100 else 0.0)
            row_c.append(y != -100 and logits[b, i].argmax().item() == y)
        ell.append(row_l)
        if objective == "sft":
            w.append([float(m) for m in row_m])
        elif objective == "memft-ot":
            w.append(row_m)
        else:
            w.append((row_l, row_m, row_c))
    if objective == "memft-ot":
        w = ref_ot(ell, w, 0.5, "sft")
    elif objective == "memft-sw":
        w, _ = ref_sw(ell, [x[1] for x in w], [x[2] for x in w], {}, range(len(w)))
    want = sum(a * c for ra, rc in zip(ell, w) for a, c in zip(ra, rc)) / sum(map(sum, w))
    assert got.item() == pytest.approx(want, rel=1e-5)
    if objective == "sft":
        hf = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        assert got.item() == pytest.approx(hf.item(), rel=1e-6)
    half = memft_loss_func(objective, gradient_accumulation_steps=2)((logits,), labels)
    assert half.item() == pytest.approx(got.item() / 2, rel=1e-6)


def test_loss_func_sw_state_per_batch_row():
    logits, labels = hf_batch(1)
    state = SWState.new(3)
    stateful = memft_loss_func("memft-sw", sw_state=state, window=2)
    stateless = memft_loss_func("memft-sw", window=2)
    for _ in range(4):  # same batch: every row with an error keeps its anchor
        stateful({"logits": logits}, labels)
    has_err = state.anchor_prev >= 0
    assert has_err.any()
    assert state.patience_count[has_err].tolist() == [3] * int(has_err.sum())
    assert state.expansion[has_err].tolist() == [1.5] * int(has_err.sum())
    assert stateful({"logits": logits}, labels) != stateless({"logits": logits}, labels)  # W = 4 vs 2
    assert stateless({"logits": logits}, labels) == memft_loss_func("memft-sw", window=2)({"logits": logits}, labels)


def test_loss_func_rejects_unknown_objective():
    with pytest.raises(ConfigError, match="memft-ot"):
        memft_loss_func("memft-sw-curriculum")


def test_loss_func_trains_a_tiny_llama_with_trainer(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    model = LlamaForCausalLM(cfg)
    rng = random.Random(0)
    data = []
    for i in range(8):  # prompt of 3 ids, answer of 4-6 ids
        prompt, answer = [1, 2 + i, 3], [rng.randrange(10, 64) for _ in range(rng.randint(4, 6))]
        data.append({"input_ids": prompt + answer, "labels": [-100] * 3 + answer})

    def collate(items):
        S = max(len(x["input_ids"]) for x in items)
        pad = lambda xs, v: [x + [v] * (S - len(x)) for x in xs]  # noqa: E731
        ids = torch.tensor(pad([x["input_ids"] for x in items], 0))
        return {
            "input_ids": ids,
            "attention_mask": torch.tensor(pad([[1] * len(x["input_ids"]) for x in items], 0)),
            "labels": torch.tensor(pad([x["labels"] for x in items], -100)),
        }

    loss_fn = memft_loss_func("memft-ot", tau=0.5)
    batch = collate(data)
    with torch.no_grad():
        first = loss_fn(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]), batch["labels"])
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=12, learning_rate=1e-2,
        logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collate, compute_loss_func=loss_fn)
    trainer.train()
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 12
    assert logged[0] == pytest.approx(first.item(), rel=1e-5)  # the whole dataset is one batch
    assert logged[-1] < 0.7 * logged[0]
