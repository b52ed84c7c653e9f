"""Training objectives: per-token losses, answer masks and per-record state in, per-token weights out.

Every objective is a weighting of the per-token cross-entropy ℓ_t = −log p_t followed by one
reduction, `weighted_loss` = Σ w·ℓ / Σ w over the micro-batch (`paper/reference_method.md` §2–4).
Weights are constants (detached): gradients flow only through ℓ_t of tokens with w_t > 0, and an
all-zero weight tensor means "skip this step" (zero gradient).

Layout: tensors are (B, T) where row b is one record of the micro-batch and column t its t-th answer
token (t = 0 is the first value token, terminator tokens last), right-padded; `mask` marks real
answer tokens and `rows` (B,) gives each row's record index within the memory, so per-record state
survives any batching or shuffling. Nothing here calls `.item()`: decisions stay on the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from memlaw.config import ObjectiveConfig
from memlaw.curriculum import curriculum_order, curriculum_plan
from memlaw.errors import ConfigError

IGNORE = -100
"""Label id that Hugging Face losses ignore."""
LN2 = math.log(2.0)
TINY = torch.finfo(torch.float32).tiny
SW_MIN_TOTAL = 1e-5
"""Paper's total-weight floor for the spatial window: below it the micro-batch falls back to SFT."""


def token_nll(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Per-token cross-entropy ℓ_t = −log p_t in float32, shape (B, T); 0 where `~mask`.

    Args:
        logits: (B, T, V) scores for each answer position, any float dtype (upcast to float32; the
            paper's code takes the CE of bf16 logits, whose spacing near ln 2 is ≈ 0.004).
        targets: (B, T) token ids; values at padding are ignored (may be −100 or anything).
        mask: (B, T) bool, True at real answer tokens.
    """
    safe = torch.where(mask, targets, torch.zeros_like(targets))
    nll = _ChunkedNLL.apply(logits.flatten(0, 1), safe.flatten(), mask.flatten().float())
    return nll.view(targets.shape)


class _ChunkedNLL(torch.autograd.Function):
    """Cross-entropy over a few rows at a time, so each row's float32 copy stays in cache.

    The same float32 arithmetic as `F.cross_entropy(logits.float())` (max-shifted log-sum-exp;
    gradient softmax − one-hot, cast to the logits' dtype), without materialising the (N, V) float32
    copy, log-softmax, zero-filled one-hot and their backward (docs/performance.md has what it saved;
    bench/step_profile.py shows what is left). On other devices the rows go in one chunk.
    """

    CACHE_BYTES = 1 << 20

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, keep: Tensor) -> Tensor:
        n, v = logits.shape       # one chunk off CPU: a GPU pays per kernel launch, not per cache miss
        step = max(1, _ChunkedNLL.CACHE_BYTES // (4 * v)) if logits.device.type == "cpu" else max(n, 1)
        lse = torch.empty(n, dtype=torch.float32, device=logits.device)
        hit = torch.empty_like(lse)
        for lo in range(0, n, step):
            z = logits[lo: lo + step].float()
            lse[lo: lo + step] = torch.logsumexp(z, -1)
            hit[lo: lo + step] = z.gather(-1, targets[lo: lo + step, None]).squeeze(-1)
        ctx.save_for_backward(logits, targets, keep, lse)
        ctx.step = step
        return (lse - hit) * keep

    @staticmethod
    def backward(ctx, grad: Tensor):
        logits, targets, keep, lse = ctx.saved_tensors
        scale = (grad * keep)[:, None]
        out = torch.empty_like(logits)
        minus_one = torch.full((1, 1), -1.0, device=logits.device).expand(ctx.step, 1)
        for lo in range(0, logits.shape[0], ctx.step):
            p = torch.exp(logits[lo: lo + ctx.step].float() - lse[lo: lo + ctx.step, None])   # softmax
            p.scatter_add_(-1, targets[lo: lo + ctx.step, None], minus_one[: p.shape[0]])   # − one-hot
            out[lo: lo + ctx.step] = p.mul_(scale[lo: lo + ctx.step])
        return out, None, None


def weighted_loss(token_loss: Tensor, weights: Tensor) -> Tensor:
    """Σ w·ℓ / Σ w over the micro-batch, a float32 scalar; every objective ends here.

    The denominator is clamped at the smallest normal float32, so all-zero weights give a loss of 0
    with zero gradient instead of NaN (the "skip" case), while soft weights summing below 1 (SW) are
    normalised exactly.
    """
    w = weights.detach().float()
    return (token_loss.float() * w).sum() / w.sum().clamp(min=TINY)


def sft_weights(mask: Tensor) -> Tensor:
    """SFT: every answer token weighs 1, so `weighted_loss` is the mean answer-token CE."""
    return mask.float()


def ot_weights(token_loss: Tensor, mask: Tensor, threshold: float = 0.5, fallback: str = "sft") -> Tensor:
    """MemFT-OT weights w_t = 1[p_t < τ] on answer tokens (reference_method §3), shape (B, T).

    p_t < τ ⇔ ℓ_t > −ln τ (strict: a token with p_t = τ is not weighted). The comparison happens in
    the dtype of `token_loss`, so a loss that rounds to −ln τ counts as "at the threshold". τ ≥ 1
    weights every answer token: a softmax probability is < 1, and ℓ_t that underflows to 0 must
    not drop out of the denominator (so τ = 1 is exactly SFT).

    Args:
        token_loss: (B, T) per-token CE.
        mask: (B, T) answer-token mask.
        threshold: τ.
        fallback: when no token of the micro-batch is below τ: `"sft"` weights every answer token
            (the paper's `only_threshold`), `"skip"` returns all zeros (zero gradient,
            `only_threshold_zero_bp`). Chosen with `torch.where`, no host sync.
    """
    if fallback not in ("sft", "skip"):
        raise ConfigError(f"fallback must be 'sft' or 'skip', got {fallback!r}")
    if threshold >= 1.0:
        return mask.float()
    hard = mask & (token_loss.detach() > -math.log(threshold))  # python scalar: compared in ℓ's dtype
    if fallback == "sft":
        hard = torch.where(hard.any(), hard, mask)
    return hard.float()


@dataclass(eq=False)
class SWState:
    """Per-record state of the spatial window (reference_method §4.1), one entry per record.

    anchor_prev: (N,) long, the record's anchor at its last step, −1 when it had no error.
    patience_count: (N,) long, consecutive steps with the same anchor (P).
    expansion: (N,) float32, window multiplier E ∈ [1, expansion_max]; W = window · E.
    """

    anchor_prev: Tensor
    patience_count: Tensor
    expansion: Tensor

    @classmethod
    def new(cls, n_records: int, device: torch.device | str | None = None) -> SWState:
        return cls(
            anchor_prev=torch.full((n_records,), -1, dtype=torch.long, device=device),
            patience_count=torch.zeros(n_records, dtype=torch.long, device=device),
            expansion=torch.ones(n_records, dtype=torch.float32, device=device),
        )

    def to(self, device: torch.device | str) -> SWState:
        """Move the state to `device` in place and return it."""
        self.anchor_prev, self.patience_count, self.expansion = (
            x.to(device) for x in (self.anchor_prev, self.patience_count, self.expansion)
        )
        return self


@torch.no_grad()
def sw_weights(
    token_loss: Tensor,
    mask: Tensor,
    correct: Tensor,
    state: SWState,
    rows: Tensor,
    *,
    tau: float = 0.5,
    kappa: float = 10.0,
    window: float = 50,
    decay: float = 20.0,
    floor: float = 0.01,
    patience: int = 3,
    expansion_step: float = 0.5,
    expansion_max: float = 4.0,
    min_total: float = SW_MIN_TOTAL,
) -> Tensor:
    """MemFT-SW spatial-window weights w_t = b_t · m_t (reference_method §4.1), detached, shape (B, T).

    Per record (row b, record rows[b]):
        a = first t with mask ∧ ¬correct (teacher-forced argmax error); has_err = such t exists
        b_t = σ(κ(ℓ_t + ln τ))·mask                      (τ = 0.5: σ(κ(ℓ_t − ln 2)), b = ½ at p = ½)
        stuck = has_err ∧ a = a_prev;  P = P+1 if stuck else 0
        E = min(E + expansion_step, expansion_max) if P ≥ patience else 1;  a_prev = a if has_err else −1
        W = window · E   (the updated E: 50, 50, 50, 75, 100, … for an anchor stuck from step 1)
        m_t = exp(−max(t − a, 0)/decay) if t − a < W else floor;  m_t = 1 if not has_err
    If Σ w over the micro-batch ≤ `min_total` the answer mask is returned (the paper's fallback to
    the mean CE). `state` is updated in place at `rows`; rows must be distinct within one call.
    """
    if state.anchor_prev.device != token_loss.device:
        state.to(token_loss.device)
    T = token_loss.shape[1]
    err = mask & ~correct
    has_err = err.any(dim=1)
    pos = torch.arange(T, device=token_loss.device)
    anchor = torch.where(err, pos, T).amin(dim=1) % T  # first error; 0 when there is none (T % T)

    stuck = has_err & (anchor == state.anchor_prev[rows])
    count = torch.where(stuck, state.patience_count[rows] + 1, 0)
    grown = (state.expansion[rows] + expansion_step).clamp(max=expansion_max)
    expansion = torch.where(count >= patience, grown, torch.ones_like(grown))
    state.patience_count[rows] = count
    state.expansion[rows] = expansion
    state.anchor_prev[rows] = torch.where(has_err, anchor, -1)

    width = window * expansion  # (B,) W, after this step's update as in the paper
    offset = pos - anchor[:, None]  # (B, T) t − a
    inside = offset < width[:, None]
    m = torch.where(inside, torch.exp(-offset.clamp(min=0).float() / decay), floor)
    m = torch.where(has_err[:, None], m, 1.0)
    b = torch.sigmoid(kappa * (token_loss.detach().float() + math.log(tau))) * mask
    w = b * m
    return torch.where(w.sum() > min_total, w, mask.float())


class Objective:
    """One configured objective: `weights` per micro-batch, `active` records per optimizer step.

    Holds the only state an objective has: the SW per-record window state (`memft-sw`), and the
    curriculum's permutation and plan (`memft-sw-curriculum`).
    """

    def __init__(self, cfg: ObjectiveConfig, n_records: int, seed: int = 0, batch_size: int = 1,
                 budget_steps: int = 1):
        self.cfg, self.n_records, self.seed, self.batch_size = cfg, n_records, seed, batch_size
        self.state = SWState.new(n_records) if cfg.name == "memft-sw" else None
        self.plan = self.order = None
        if cfg.name == "memft-sw-curriculum":
            self.plan = curriculum_plan(n_records, batch_size, budget_steps, cfg.curriculum_ratios,
                                        cfg.curriculum_boundaries, equal_budget=cfg.equal_budget)
            self.order = curriculum_order(n_records, seed)
        self.total_steps = budget_steps if self.plan is None else self.plan.total
        """Optimizer steps of the write: the budget, or the curriculum's at the paper's budget."""

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def needs_correct(self) -> bool:
        """Whether `weights` reads `correct` (the teacher-forced argmax hits): only the SW window does."""
        return self.cfg.name == "memft-sw"

    def weights(self, token_loss: Tensor, mask: Tensor, correct: Tensor | None, rows: Tensor) -> Tensor:
        """Detached (B, T) weights for `weighted_loss`; all zeros means "skip this step". `correct` may
        be None unless `needs_correct`."""
        cfg = self.cfg
        if cfg.name == "sft":
            return sft_weights(mask)
        if cfg.name == "memft-ot":
            return ot_weights(token_loss, mask, cfg.tau, cfg.fallback)
        if cfg.name == "memft-sw-curriculum":  # the paper's zero_bp: no sub-threshold token, no update
            return ot_weights(token_loss, mask, cfg.tau, "skip")
        assert self.state is not None and correct is not None
        return sw_weights(token_loss, mask, correct, self.state, rows, **_sw_kwargs(cfg))

    def stage(self, step: int) -> int:
        """The curriculum stage of optimizer step `step` (0 for every other objective)."""
        return 0 if self.plan is None else self.plan.stage(step)

    def active(self, step: int) -> Tensor | None:
        """Record indices to train on at optimizer step `step` (0-based); None means all records."""
        if self.plan is None:
            return None
        return self.order[: self.plan.size(step)]


def make_objective(cfg: ObjectiveConfig, n_records: int, seed: int = 0, *, batch_size: int = 1,
                   budget_steps: int = 1) -> Objective:
    """Build the objective `cfg.name` for a memory of `n_records` records.

    `seed` fixes the curriculum permutation; `batch_size` (the training micro-batch) sizes its stages
    in whole batches, as the paper's `drop_last` loader does; `budget_steps` (the training budget in
    optimizer steps) lays its stages out (`curriculum_plan`).
    """
    return Objective(cfg, n_records, seed, batch_size, budget_steps)


def _sw_kwargs(cfg: ObjectiveConfig) -> dict[str, Any]:
    return dict(
        tau=cfg.tau, kappa=cfg.kappa, window=cfg.window, decay=cfg.decay, floor=cfg.floor,
        patience=cfg.patience, expansion_step=cfg.expansion_step, expansion_max=cfg.expansion_max,
    )  # fmt: skip


def memft_loss_func(
    objective: str = "memft-ot",
    tau: float = 0.5,
    fallback: str = "sft",
    *,
    sw_state: SWState | None = None,
    gradient_accumulation_steps: int = 1,
    **sw_options: float,
) -> Callable[..., Tensor]:
    """A MemFT loss for Hugging Face `Trainer(compute_loss_func=...)` or TRL `SFTTrainer`, no memlaw needed.

    The returned `loss(outputs, labels, num_items_in_batch=None)` shifts as HF causal LMs do
    (position i predicts labels[i+1]; −100 is ignored), computes per-token CE in float32, weights it
    and returns Σ w·ℓ / Σ w over the micro-batch, divided by `gradient_accumulation_steps` (the
    Trainer treats a `compute_loss_func` loss as already scaled for accumulation; pass your
    `args.gradient_accumulation_steps`). `num_items_in_batch` is ignored: MemFT normalises by the
    weights of each micro-batch, as the paper's code does. On several devices set
    `average_tokens_across_devices=False`, or the Trainer multiplies this per-device mean by the
    number of processes.

    Args:
        objective: `"sft"`, `"memft-ot"` (w = 1[p < tau]) or `"memft-sw"` (spatial window). The
            PhoneBook curriculum is a data schedule, not a loss: use `"memft-ot"` with
            `fallback="skip"` and feed the records by `curriculum_plan` and `curriculum_order`.
        tau: probability threshold (OT mask; centre of the SW soft threshold).
        fallback: OT when no token is below tau: `"sft"` (paper) or `"skip"` (zero gradient).
        sw_state: SW only. None (default): stateless, each call starts from fresh state, so the window
            never grows (W = window). `SWState.new(batch_size)`: state per batch row, as the paper's
            code keeps it; meaningful only when a batch row always holds the same sequence (batch
            size 1 on one long document, the paper's long-context setting).
        sw_options: SW keywords of `sw_weights` (kappa, window, decay, floor, patience, ...).

    Example:
        >>> from transformers import Trainer, TrainingArguments
        >>> from memlaw.objectives import memft_loss_func
        >>> args = TrainingArguments("out", learning_rate=1e-4, gradient_accumulation_steps=2)
        >>> trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=collate,
        ...                   compute_loss_func=memft_loss_func("memft-ot", tau=0.5, gradient_accumulation_steps=2))
        >>> trainer.train()

        TRL (prompt-completion data, so that prompt labels are −100):

        >>> from trl import SFTConfig, SFTTrainer
        >>> trainer = SFTTrainer(model="Qwen/Qwen3-0.6B", train_dataset=ds,
        ...                      args=SFTConfig("out", completion_only_loss=True),
        ...                      compute_loss_func=memft_loss_func("memft-ot"))
    """
    names = ("sft", "memft-ot", "memft-sw")
    if objective not in names:
        raise ConfigError(f"objective must be one of {', '.join(names)}; got {objective!r}")
    if fallback not in ("sft", "skip"):
        raise ConfigError(f"fallback must be 'sft' or 'skip', got {fallback!r}")
    if gradient_accumulation_steps < 1:
        raise ConfigError(f"gradient_accumulation_steps must be >= 1, got {gradient_accumulation_steps}")

    def loss(outputs: Any, labels: Tensor, num_items_in_batch: Any = None) -> Tensor:
        logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]
        logits, targets = logits[:, :-1], labels[:, 1:].to(logits.device)  # (B, S-1, V), (B, S-1)
        mask = targets != IGNORE
        token_loss = token_nll(logits, targets, mask)
        if objective == "sft":
            w = sft_weights(mask)
        elif objective == "memft-ot":
            w = ot_weights(token_loss, mask, tau, fallback)
        else:
            correct = logits.detach().argmax(-1) == targets
            B = targets.shape[0]
            state = sw_state if sw_state is not None else SWState.new(B, token_loss.device)
            rows = torch.arange(B, device=token_loss.device)
            w = sw_weights(token_loss, mask, correct, state, rows, tau=tau, **sw_options)
        return weighted_loss(token_loss, w) / gradient_accumulation_steps

    return loss


__all__ = [
    "token_nll", "weighted_loss", "sft_weights", "ot_weights", "sw_weights", "SWState",
    "Objective", "make_objective", "memft_loss_func",
]  # fmt: skip
