"""The write loop: train an attached adapter on a memory until a budget is spent or every record certifies.

DESIGN §6: AdamW (wd 0), linear decay to 0 with no warm-up, gradient clipping at 1.0, adapter weights
and optimizer state in float32 even when the base runs in bf16. Every `check_every` steps one
no-dropout teacher-forced pass over the memory gives the stubborn and certified counts (the stop
rule `until="certified"`), reusing the cached prefix.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from memlaw.config import ObjectiveConfig, TrainConfig
from memlaw.encode import Encoded
from memlaw.forward import TeacherForcer
from memlaw.objectives import make_objective, token_nll, weighted_loss
from memlaw.verify import TokenProbs, answer_probs

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


def check(tf: TeacherForcer, adapter, margin: float, chunk: int = 64) -> tuple[dict[int, TokenProbs], int, int]:
    """No-dropout pass over the whole memory: (probs, stubborn tokens, certified records)."""
    adapter.eval()
    probs = answer_probs(tf, chunk=chunk)
    adapter.train()
    stubborn = sum(int((p.p <= 0.5).sum()) for p in probs.values())
    certified = sum(bool((p.p > 0.5 + margin).all()) for p in probs.values())
    return probs, stubborn, certified


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
    n = len(enc)
    total = cfg.budget_steps(n)                      # the LR schedule's length; the cap for until="certified"
    torch.manual_seed(cfg.seed)                      # dropout masks
    order_gen = torch.Generator().manual_seed(cfg.seed)
    params = list(adapter.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / total))
    obj = make_objective(objective, n, seed=cfg.seed, batch_size=cfg.batch_size)
    tf = TeacherForcer(base, enc, start_layer=adapter.first_layer, cache_prefix=cfg.cache_prefix,
                       answer_logits=cfg.answer_logits)
    adapter.train()
    t0 = time.perf_counter()
    history: list[dict] = []
    step, certified_all, t_cert, loss_val = 0, False, None, float("nan")
    while step < total and not certified_all:
        active = obj.active(step / total)
        pool = torch.arange(n) if active is None else active
        order = pool[torch.randperm(len(pool), generator=order_gen)].tolist()
        for lo in range(0, len(order), cfg.batch_size):
            rows = order[lo: lo + cfg.batch_size]
            logits, batch = tf.logits(rows)
            nll = token_nll(logits, batch.targets, batch.mask)
            correct = (logits.argmax(-1) == batch.targets) & batch.mask
            w = obj.weights(nll, batch.mask, correct, batch.rows)
            loss = weighted_loss(nll, w)
            if bool(w.any()):                        # sync point: zero weights mean a skipped step
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
            sched.step()                             # the schedule advances on skipped steps too (paper)
            step += 1
            loss_val = float(loss.detach())
            stubborn = certified = None
            if step % cfg.check_every == 0 or step == total:
                probs, stubborn, certified = check(tf, adapter, cfg.margin)
                elapsed = time.perf_counter() - t0
                history.append({"step": step, "loss": loss_val, "stubborn": stubborn, "certified": certified,
                                "lr": sched.get_last_lr()[0], "elapsed": elapsed})
                if on_check is not None:
                    on_check(step, probs)
                if certified == n and t_cert is None:
                    t_cert = elapsed
                if cfg.until == "certified" and certified == n:
                    certified_all = True
            if on_step is not None:
                on_step(StepInfo(step, total, loss_val, stubborn, certified, n, time.perf_counter() - t0))
            if certified_all or step >= total:
                break
    adapter.eval()
    wall = time.perf_counter() - t0
    final_cert = bool(history) and history[-1]["certified"] == n
    logger.info("write: %d steps in %.1f s, certified %s", step, wall, final_cert)
    return TrainResult(step, final_cert, t_cert, wall, history)
