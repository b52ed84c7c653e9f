"""The write loop: train an attached adapter on a memory until a budget is spent or every record certifies.

DESIGN §6: AdamW (wd 0), linear decay to 0 with no warm-up, gradient clipping at 1.0, adapter weights
and optimizer state in float32 even when the base runs in bf16. Every `check_every` steps one
no-dropout teacher-forced pass over the memory gives the stubborn and certified counts (the stop
rule `until="certified"`), reusing the cached prefix.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor

from memlaw.config import ObjectiveConfig, TrainConfig
from memlaw.encode import Encoded
from memlaw.errors import DivergedError
from memlaw.certificate import certified as is_certified, stubborn as is_stubborn
from memlaw.certify import certificate_probs
from memlaw.forward import TeacherForcer, TokenProbs, answer_probs, joint_logits, top_token, training_attention
from memlaw.objectives import make_objective, token_nll, weighted_loss
from memlaw.pace import Pace

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StepInfo:
    """What a progress callback sees after an optimizer step (counts only at check steps)."""

    step: int
    total: int
    loss: float
    stubborn: int | None
    certified: int | None
    n_records: int
    elapsed: float


@dataclass
class TrainResult:
    steps: int
    certified: bool                  # every record certified at the last check
    time_to_certified: float | None  # wall seconds until every record certified (None: never)
    wall_s: float
    history: list[dict] = field(default_factory=list)   # one row per check

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.wall_s if self.wall_s > 0 else 0.0


StepCallback = Callable[[StepInfo], None]
CheckCallback = Callable[[int, dict[int, TokenProbs]], None]


def check(tf: TeacherForcer, adapter, margin: float, chunk: int = 64,
          rows: list[int] | None = None) -> tuple[dict[int, TokenProbs], int, int]:
    """No-dropout pass over the memory (or `rows` of it): (probs, stubborn tokens, certified records)."""
    adapter.eval()
    with tf.full_prompt():
        probs = answer_probs(tf, rows, chunk=chunk)
    adapter.train()
    stubborn = sum(int(is_stubborn(p.p).sum()) for p in probs.values())
    certified = sum(is_certified(p.p, margin) for p in probs.values())
    return probs, stubborn, certified


class _Run:
    """One memory's training state: objective, teacher-forcer, batch order, step count, history."""

    def __init__(self, base, enc: Encoded, objective: ObjectiveConfig, cfg: TrainConfig, start_layer: int):
        self.enc, self.cfg, self.n = enc, cfg, len(enc)
        self.obj = make_objective(objective, self.n, seed=cfg.seed, batch_size=cfg.batch_size,
                                  budget_steps=cfg.budget_steps(self.n))
        self.total = self.obj.total_steps               # the LR schedule's length; the cap for until="certified"
        self.tf = TeacherForcer(base, enc, start_layer=start_layer, cache_prefix=cfg.cache_prefix,
                                answer_logits=cfg.answer_logits, shared_prompt=cfg.shared_prompt,
                                shared_min_rows=cfg.shared_min_rows)
        self.pace = Pace(cfg, self.n, self.total)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.queue: list[list[int]] = []
        self.stage = 0                                  # the curriculum stage the queue was drawn in
        self.step, self.done, self.t_cert, self.loss = 0, False, None, float("nan")
        self.hold = 0                                   # early checks wait until after this step
        self.history: list[dict] = []

    def next_rows(self) -> list[int]:
        """The next batch; a new epoch draws a fresh order of the objective's active records that still
        train (all of them when every one has retired). A new curriculum stage starts a new epoch."""
        if self.obj.stage(self.step) != self.stage:
            self.stage, self.queue = self.obj.stage(self.step), []
        while self.queue:
            if rows := self.pace.trains(self.queue.pop(0)):
                return rows
        active = self.obj.active(self.step)
        pool = list(range(self.n)) if active is None else active.tolist()
        pool = torch.tensor(self.pace.trains(pool) or pool)
        order = pool[torch.randperm(len(pool), generator=self.gen)].tolist()
        self.queue = [order[lo: lo + self.cfg.batch_size] for lo in range(0, len(order), self.cfg.batch_size)]
        return self.queue.pop(0)

    def loss_of(self, logits, batch):
        """Weighted loss of one batch and whether any token carries weight (a sync point)."""
        nll = token_nll(logits, batch.targets, batch.mask)
        # an argmax over the vocabulary at every answer token: 7% of a probe step, so only when read
        correct = (top_token(logits) == batch.targets) & batch.mask if self.obj.needs_correct else None
        w = self.obj.weights(nll, batch.mask, correct, batch.rows)
        self.pace.observe(batch.rows, nll, batch.mask)
        return weighted_loss(nll, w), bool(w.any())

    def lr(self, ahead: int = 0) -> float:
        """The scheduled LR at step `self.step + ahead`."""
        return self.pace.lr(self.step + ahead)

    def after_step(self, adapter, t0: float, lr: float, on_check: CheckCallback | None,
                   as_saved: Callable[[], AbstractContextManager] = nullcontext) -> tuple[int | None, int | None]:
        """Count the step; at check steps run the no-dropout pass and apply the stop rule.

        The pass runs inside `as_saved()`, which puts the weights that will be saved in place.

        Between check steps, records the pace finds due are checked alone, and once none is left
        uncertified every record is checked (`memlaw.pace`).

        Raises:
            DivergedError: the step's loss is NaN or infinite (it is read every step anyway).
        """
        self.step += 1
        if not math.isfinite(self.loss):
            raise DivergedError(f"training diverged: the loss is {self.loss} at step {self.step} (lr {self.cfg.lr:g}); "
                                f"nothing was saved: lower the learning rate")
        stubborn = certified = None
        full = self.step % self.cfg.check_every == 0 or self.step == self.total
        if not full and self.step > self.hold and (due := self.pace.due()):
            with as_saved():
                probs, _, _ = check(self.tf, adapter, self.cfg.margin, rows=due)
            self._verdicts(probs)
            full = not self.pace.pending
        if full:
            with as_saved():
                probs, stubborn, certified = check(self.tf, adapter, self.cfg.margin)
                self._verdicts(probs)
                if self.cfg.until == "certified" and certified == self.n:
                    certified = self._confirm(adapter)
                    # the records it doubted sit at the margin and would bring a full check every step:
                    # no early checks until the next regular one
                    if certified < self.n:
                        self.hold = self.step - self.step % self.cfg.check_every + self.cfg.check_every
            elapsed = time.perf_counter() - t0
            self.history.append({"step": self.step, "loss": self.loss, "stubborn": stubborn, "certified": certified,
                                 "lr": lr, "elapsed": elapsed})
            if on_check is not None:
                on_check(self.step, probs)
            if certified == self.n and self.t_cert is None:
                self.t_cert = elapsed
            if self.cfg.until == "certified" and certified == self.n:
                self.done = True
        if self.step >= self.total:
            self.done = True
        return stubborn, certified

    def _confirm(self, adapter) -> int:
        """Records the certificate's own pass (`memlaw.certify`, what `verify` runs) certifies, once the
        training check certified every one: the two passes batch rows differently, so in bf16 a p_t
        near the margin can land on either side (PhoneBook 64: 2 of 3 seeds stopped with 62 and 63 of 64
        certified before this). The write stops only when both certify every record; the records the
        certificate's pass does not certify stay in training."""
        adapter.eval()
        probs = certificate_probs(self.tf.base, self.enc)
        adapter.train()
        self._verdicts(probs)
        return sum(is_certified(p.p, self.cfg.margin) for p in probs.values())

    def _verdicts(self, probs: dict[int, TokenProbs]) -> None:
        m = self.cfg.margin
        self.pace.checked({i: is_certified(p.p, m) for i, p in probs.items()},
                          {i: float(p.p.min()) for i, p in probs.items()})

    def result(self, t0: float, params: Iterable[Tensor]) -> TrainResult:
        """The run's result, once the adapter's final `params` are checked to be finite (DivergedError if not)."""
        if not all(bool(torch.isfinite(w).all()) for w in params):      # one sync per run
            raise DivergedError(f"training diverged: the adapter weights are not finite after step {self.step} "
                                f"(lr {self.cfg.lr:g}); nothing was saved: lower the learning rate")
        wall = time.perf_counter() - t0
        certified = bool(self.history) and self.history[-1]["certified"] == self.n
        return TrainResult(self.step, certified, self.t_cert, wall, self.history)


def write(base, adapter, enc: Encoded, objective: ObjectiveConfig, cfg: TrainConfig, *,
          on_step: StepCallback | None = None, on_check: CheckCallback | None = None) -> TrainResult:
    """Train `adapter` (already attached to `base`) on the encoded memory.

    Args:
        base: the frozen base model.
        adapter: an attached adapter; its parameters are the only ones trained.
        enc: the encoded memory.
        objective: which per-token weighting (sft, memft-*).
        cfg: optimizer, budget, stop rule, fast paths.
        on_step: called after every optimizer step (progress bars, Ray, notebooks).
        on_check: called at every check with the step and every record's p_t (probability grids).
    """
    cfg = cfg.for_kind(adapter.kind)
    torch.manual_seed(cfg.seed)                      # dropout masks
    run = _Run(base, enc, objective, cfg, adapter.first_layer)
    low = base.dtype if adapter.kind == "lora" and cfg.lora_compute == "auto" else torch.float32
    fp32 = _Float32Masters(list(adapter.parameters()), low)
    opt = torch.optim.AdamW(fp32.masters, lr=run.lr(), weight_decay=0.0)
    adapter.train()
    t0 = time.perf_counter()
    try:
        while not run.done:
            with training_attention(cfg.attention, base.device):
                loss, any_weight = run.loss_of(*run.tf.logits(run.next_rows()))
            if any_weight:                           # zero weights mean a skipped step (zero gradient)
                for group in opt.param_groups:
                    group["lr"] = run.lr()
                loss.backward()
                fp32.grads_to_masters()
                torch.nn.utils.clip_grad_norm_(fp32.masters, cfg.clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                fp32.masters_to_params()
            run.loss = float(loss.detach())          # the schedule advances on skipped steps too (paper)
            stubborn, certified = run.after_step(adapter, t0, run.lr(ahead=1), on_check,
                                                 fp32.float32)   # checks see the weights that will be saved
            if on_step is not None:
                on_step(StepInfo(run.step, run.total, run.loss, stubborn, certified, run.n,
                                 time.perf_counter() - t0))
    finally:
        fp32.restore()
    adapter.eval()
    result = run.result(t0, adapter.parameters())
    logger.info("write: %d steps in %.1f s, certified %s", result.steps, result.wall_s, result.certified)
    return result


class _Float32Masters:
    """Adapter parameters that compute in `dtype` while AdamW updates float32 master copies.

    With `dtype` float32 the masters are the parameters themselves and every call is a no-op.
    `restore` leaves float32 parameters holding the masters' values (the weights that get saved,
    certified and recalled).
    """

    def __init__(self, params: list[Tensor], dtype: torch.dtype):
        self.params = params
        self.mixed = dtype != torch.float32
        if not self.mixed:
            self.masters = params
            return
        self.masters = [p.detach().float().clone().requires_grad_(True) for p in params]
        for p in params:
            p.data = p.data.to(dtype)

    def grads_to_masters(self) -> None:
        if self.mixed:
            for p, m in zip(self.params, self.masters):
                m.grad, p.grad = p.grad.float(), None

    @torch.no_grad()
    def masters_to_params(self) -> None:
        if self.mixed:
            for p, m in zip(self.params, self.masters):
                p.copy_(m)

    @contextmanager
    def float32(self) -> Iterator[None]:
        """The float32 masters in the parameters' place while inside (no copy), the compute copies after."""
        if not self.mixed:
            yield
            return
        low = [p.data for p in self.params]
        for p, m in zip(self.params, self.masters):
            p.data = m.detach()
        try:
            yield
        finally:
            for p, x in zip(self.params, low):
                p.data = x

    def restore(self) -> None:
        if self.mixed:
            for p, m in zip(self.params, self.masters):
                p.data = m.detach().clone()
                p.grad = None


def write_many(base, stack, encs: list[Encoded], objectives: list[ObjectiveConfig], cfgs: list[TrainConfig], *,
               on_step: Callable[[int, StepInfo], None] | None = None,
               on_check: Callable[[int, int, dict[int, TokenProbs]], None] | None = None) -> list[TrainResult]:
    """Train K probe adapters (a `ProbeStack`, attached) on K memories in one forward pass per step.

    Each adapter sees exactly what `write` would give it: its own batches, objective, LR schedule,
    gradient clipping, dropout masks (its own generator, seeded `cfgs[k].seed` as `write` seeds the
    global one) and AdamW moments (a vectorised AdamW with per-adapter step counts), and it stops on
    its own rule; a stopped adapter is frozen. Only the pass is shared.

    Args:
        on_step: called with (k, StepInfo) after every step of each adapter still training.
        on_check: called with (k, step, every record's p_t) at each of adapter k's checks.

    Returns:
        One `TrainResult` per adapter; its wall time runs until that adapter stopped.
    """
    K = len(encs)
    cfgs = [c.for_kind("probe") for c in cfgs]
    if len({c.attention for c in cfgs}) > 1:
        raise ValueError("write_many: every adapter's TrainConfig needs the same attention (one pass)")
    runs = [_Run(base, e, o, c, stack.first_layer) for e, o, c in zip(encs, objectives, cfgs)]
    stack.seed_dropout([c.seed for c in cfgs])
    moments = [(p, torch.zeros_like(p), torch.zeros_like(p)) for p in (stack.A, stack.B)]
    dev = stack.A.device
    t_adam = torch.zeros(K, device=dev)
    clip = torch.tensor([c.clip for c in cfgs], device=dev)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    results: list[TrainResult | None] = [None] * K
    stack.train()
    t0 = time.perf_counter()
    while not all(r.done for r in runs):
        live = [k for k, r in enumerate(runs) if not r.done]
        parts = [(runs[k].tf, runs[k].next_rows()) for k in live]

        def on_pass(shared: int, head: bool) -> None:   # which adapter each row of this decoder call uses
            if head:                                    # one row per adapter: its shared prompt
                stack.index = torch.tensor(live, device=dev)
                stack.parts = [(k, 1, shared) for k in live]
                return
            stack.index = torch.cat([torch.full((len(rows),), k, device=dev) for k, (_, rows) in zip(live, parts)])
            stack.parts = [(k, len(rows), _seq_len(runs[k].enc, rows) - shared) for k, (_, rows) in zip(live, parts)]

        with training_attention(cfgs[0].attention, base.device):
            outs = joint_logits(parts, on_pass)
        total, stepping = 0.0, torch.zeros(K, dtype=torch.bool, device=dev)
        for k, (logits, batch) in zip(live, outs):
            loss, any_weight = runs[k].loss_of(logits, batch)
            runs[k].loss = float(loss.detach())
            if any_weight:
                total = total + loss
                stepping[k] = True
        lrs = torch.tensor([r.lr() for r in runs], device=dev)
        if stepping.any():
            total.backward()
            stack.clip_(clip)
            t_adam += stepping.float()
            for p, mom, var in moments:
                _adamw_(p, mom, var, stepping, t_adam, lrs, beta1, beta2, eps)
            stack.A.grad = stack.B.grad = None
        stack.index = stack.parts = None
        for k in live:
            r = runs[k]
            next_lr = r.lr(ahead=1)                  # what `write` logs: the LR after this step
            checked = None if on_check is None else (lambda step, probs, k=k: on_check(k, step, probs))
            stubborn, certified = r.after_step(_Slice(stack, k), t0, next_lr, checked)
            if on_step is not None:
                on_step(k, StepInfo(r.step, r.total, r.loss, stubborn, certified, r.n, time.perf_counter() - t0))
            if r.done:
                results[k] = r.result(t0, (stack.A[k], stack.B[k]))
    stack.eval()
    return results  # type: ignore[return-value]   (every run is done, so every result is set)


def _seq_len(enc: Encoded, rows: list[int]) -> int:
    """Padded length of a batch of `rows`: its longest prompt + answer (what `collate` pads to)."""
    return max(len(enc.prompt_ids[i]) + len(enc.answer_ids(i)) for i in rows)


@torch.no_grad()
def _adamw_(p, m, v, stepping, t, lrs, beta1, beta2, eps) -> None:
    """AdamW (weight decay 0) on the adapters marked `stepping`, each with its own step count and LR."""
    g = p.grad
    sel = stepping[:, None, None]
    m.copy_(torch.where(sel, beta1 * m + (1 - beta1) * g, m))
    v.copy_(torch.where(sel, beta2 * v + (1 - beta2) * g * g, v))
    tt = t.clamp(min=1)[:, None, None]
    step_size = (lrs[:, None, None] / (1 - beta1 ** tt))
    denom = v.sqrt() / (1 - beta2 ** tt).sqrt() + eps
    p.sub_(torch.where(sel, step_size * m / denom, torch.zeros_like(p)))


class _Slice:
    """Adapter k of a stack, as `check` sees it: eval/train toggles the stack, the pass uses slice k."""

    def __init__(self, stack, k: int):
        self.stack, self.k = stack, k

    def eval(self):
        self.stack.eval()
        self.stack.index = self.k
        return self

    def train(self, mode: bool = True):
        self.stack.train(mode)
        self.stack.index = None
        return self
