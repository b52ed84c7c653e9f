"""Pacing a write toward its certificate: the learning rate, which records train, and when to check.

A write that runs `until="certified"` ends at the first check that certifies every record, so what
it costs is (steps to certified) × (a step) + (its checks). `Pace` holds what lowers the first and
the last without touching the certificate (DESIGN §2), which is only ever granted by a no-dropout
pass over every record, on the weights that are saved:

- early checks: every training pass already gives p_t of its rows (with dropout, under the training
  numerics). A record not certified at its latest check whose training pass puts every answer token
  above 0.5 − `SLACK` is checked at once, alone; when no record is left uncertified, every record is
  checked (the full check that alone can stop the write). The write then stops within a step or two
  of certifying, where a check every `check_every` steps overshoots by up to `check_every − 1`;
- retiring: a record certified with margin (every p_t > 0.5 + `retire_margin` at its latest check)
  leaves the training batches, so steps get cheaper as the memory fills; it is still checked, and
  a check that finds it below that margin puts it back;
- the learning-rate schedule, after `warmup` steps of linear warm-up: `linear` (the paper: decay to
  0 over the budget) or `progress` (decay with the share of answer tokens certified, not with time:
  lr · (1 − (1 − `PROGRESS_FLOOR`) · done), where done is 1 − stubborn/most stubborn, counted in
  the latest training pass of every record).

With `until="budget"` (sweeps, the law) only the schedule applies: every record trains every epoch
and checks run every `check_every` steps, as in the paper.
"""

from __future__ import annotations

import torch
from torch import Tensor

from memlaw.certificate import THRESHOLD, stubborn as stubborn_p
from memlaw.config import TrainConfig

SLACK = 0.1
"""Early checks start once a record's training pass has every p_t > 0.5 − SLACK (dropout lowers it)."""
PROGRESS_FLOOR = 0.25
"""`progress` schedule: the LR left when every answer token is certified."""


def stubborn_nll(nll: Tensor) -> Tensor:
    """Stubborn tokens from their losses: p_t = exp(−ℓ_t) ≤ 0.5."""
    return stubborn_p(torch.exp(-nll))


class Pace:
    """One write's pacing state: per record, its latest training-pass p_t and its latest check."""

    def __init__(self, cfg: TrainConfig, n_records: int, total: int):
        self.cfg, self.n, self.total = cfg, n_records, total
        self.early = cfg.until == "certified" and cfg.early_checks
        self.retiring = cfg.until == "certified" and cfg.retire_margin is not None
        self.seen = torch.zeros(n_records)             # min p_t of each record in its latest training pass
        self.stubborn = torch.zeros(n_records)         # its stubborn tokens there
        self.most = 0.0                                # the most stubborn tokens the memory has had
        self.pending: set[int] = set(range(n_records))  # not certified at its latest check
        self.retired: set[int] = set()                 # certified with margin at its latest check

    def lr(self, step: int) -> float:
        """The learning rate of optimizer step `step` (0-based)."""
        cfg = self.cfg
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        if cfg.schedule == "progress" and self.most > 0:
            done = 1.0 - float(self.stubborn.sum()) / self.most
            return cfg.lr * (1.0 - (1.0 - PROGRESS_FLOOR) * done)
        return cfg.lr * max(0.0, 1.0 - (step - cfg.warmup) / max(1, self.total - cfg.warmup))

    def trains(self, rows: list[int]) -> list[int]:
        """The rows of a drawn batch that still train."""
        return [i for i in rows if i not in self.retired] if self.retired else rows

    @torch.no_grad()
    def observe(self, rows: Tensor, nll: Tensor, mask: Tensor) -> None:
        """Note each row's lowest p_t in this training pass (`nll` (B, T) per token, `mask` answer tokens)."""
        if self.early or self.cfg.schedule == "progress":
            nll = torch.where(mask, nll.detach().float(), torch.zeros_like(nll, dtype=torch.float32))
            rows = rows.cpu()
            self.seen[rows] = torch.exp(-nll.amax(1)).cpu()
            self.stubborn[rows] = (stubborn_nll(nll) & mask).sum(1).float().cpu()
            self.most = max(self.most, float(self.stubborn.sum()))

    def due(self) -> list[int]:
        """Records to check now, alone: uncertified ones whose training pass looks certified."""
        if not self.early:
            return []
        return sorted(i for i in self.pending if float(self.seen[i]) > THRESHOLD - SLACK)

    def checked(self, certified: dict[int, bool], min_p: dict[int, float]) -> None:
        """Record the verdicts of a check over some records."""
        for i, ok in certified.items():
            (self.pending.discard if ok else self.pending.add)(i)
        if self.retiring:
            for i, p in min_p.items():
                keep = certified[i] and p > THRESHOLD + self.cfg.retire_margin
                (self.retired.add if keep else self.retired.discard)(i)
