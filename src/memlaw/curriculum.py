"""The PhoneBook curriculum's schedule (reference_method §4.2): which records train at each optimizer step.

MemFT-SW on PhoneBook is a data schedule plus the OT mask (`memlaw.objectives`): the active set grows
as nested prefixes (20/40/60/80/100 % of the records, in whole batches) of one fixed permutation, each
stage for a number of epochs. The paper's stage ends, in epochs against SFT's 200, depend on the set's
size (`PAPER_SCHEDULES`); memlaw states them in epochs of the training budget, so one schedule serves
any budget. `curriculum_plan` turns them into optimizer steps, either compressed into the budget (the
same number of updates as SFT) or as written (the paper's larger budget).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from memlaw.config import ObjectiveConfig, TrainConfig
from memlaw.errors import ConfigError

PAPER_SCHEDULES: tuple[tuple[int, tuple[float, ...]], ...] = (
    (0, (0.1, 0.2, 0.3, 0.4, 1.5)),          # PB1000, PB2000: 100, 200 entries; epochs 20/40/60/80/300
    (400, (0.15, 0.3, 0.45, 0.6, 1.75)),     # PB4000, PB8000: 400, 800 entries; 30/60/90/120/350
    (1200, (0.3, 0.6, 0.9, 1.2, 2.5)),       # PB12000: 1200 entries; 60/120/180/240/500
    (1600, (0.4, 0.8, 1.2, 1.6, 3.0)),       # PB16000, PB24000: 1600, 2400 entries; 80/160/240/320/600
    (3200, (0.5, 1.0, 1.5, 2.0, 3.5)),       # PB32000: 3200 entries; 100/200/300/400/700
)
"""The paper's PhoneBook curriculum (reference_method §2.2, Qwen3-8B rows) by set size: (fewest entries,
stage ends in units of SFT's 200-epoch budget) for the stages of 20/40/60/80/100% of the entries. The
Qwen3 rows, because Qwen3, SmolLM2 and Gemma 3 all give a 10-digit number 10 tokens (so entries = ℓ/10);
a set smaller than the paper's smallest (100 entries) takes its schedule."""


def paper_boundaries(n_records: int) -> tuple[float, ...]:
    """The paper's stage ends for a set of `n_records` entries (`PAPER_SCHEDULES`), in budget epochs."""
    return next(ends for fewest, ends in reversed(PAPER_SCHEDULES) if n_records >= fewest)


def stage_size(n_records: int, ratio: float, batch_size: int) -> int:
    """Records active in a stage of `ratio` (reference_method §4.2), in whole batches:
        n_active = min(⌊N/B⌋·B, max(B, ⌊⌊N·ratio⌋/B⌋·B)),   N if N < B or ratio ≥ 1.
    Departure from the paper: at ratio ≥ 1 every record is active. The paper's `drop_last` leaves the
    last N mod B records of the permutation untrained forever, which makes certifying them impossible;
    whenever B divides N (all the paper's settings) the two agree.
    """
    N, B = n_records, batch_size
    if N < B or ratio >= 1.0:
        return N
    return min(N // B * B, max(B, int(N * ratio) // B * B))


@dataclass(frozen=True, slots=True)
class CurriculumPlan:
    """Which prefix of the curriculum's permutation trains at each optimizer step.

    Stage k trains the first `sizes[k]` records of the permutation from step `ends[k-1]` (0 for the
    first) to step `ends[k]`; `ends[-1]` is the number of optimizer steps the write runs (its LR
    schedule's length).
    """

    sizes: tuple[int, ...]
    ends: tuple[int, ...]

    @property
    def total(self) -> int:
        return self.ends[-1]

    def stage(self, step: int) -> int:
        """The stage that optimizer step `step` (0-based: steps already done) belongs to."""
        return next((k for k, end in enumerate(self.ends) if step < end), len(self.ends) - 1)

    def size(self, step: int) -> int:
        return self.sizes[self.stage(step)]


def curriculum_plan(n_records: int, batch_size: int, budget_steps: int, ratios: Sequence[float],
                    boundaries: Sequence[float] | None = None, *, equal_budget: bool = True) -> CurriculumPlan:
    """Stage sizes and the optimizer steps at which the stages end.

    With stage ends e_k in epochs of the training budget (e_0 = 0; None: `paper_boundaries(N)`), stage k
    runs (e_k − e_{k−1}) budget-epochs over its n_k = `stage_size` records, which takes
        w_k = (e_k − e_{k−1}) · S · n_k / N   optimizer steps   (S = `budget_steps`: one budget-epoch
    over all N records is S steps; stage k sees n_k of them). So the paper's budget (`equal_budget`
    false) is T = S · Σ_k (e_k − e_{k−1}) n_k / N steps, and its PB1000 row (N = 100, B = 10, S = 2000)
    gives the 2600 steps of reference_method §4.2. With `equal_budget` the stages keep their shares of
    those steps and T = S. Each stage ends at round(T · Σ_{j≤k} w_j / Σ_j w_j).
    """
    if len(ratios) != (5 if boundaries is None else len(boundaries)) or not ratios:
        raise ConfigError("curriculum ratios and boundaries must be non-empty and of the same length")
    ends = paper_boundaries(n_records) if boundaries is None else tuple(boundaries)
    sizes = tuple(stage_size(n_records, r, batch_size) for r in ratios)
    work = [(e - prev) * n / n_records for prev, e, n in zip((0.0, *ends[:-1]), ends, sizes)]
    total = budget_steps if equal_budget else max(1, round(budget_steps * sum(work)))
    cum = [sum(work[: k + 1]) / sum(work) for k in range(len(work))]
    return CurriculumPlan(sizes, tuple(round(total * c) for c in cum[:-1]) + (total,))


def curriculum_order(n_records: int, seed: int) -> Tensor:
    """The curriculum's one fixed permutation π = randperm(N, Generator seeded `seed`); stages take prefixes."""
    return torch.randperm(n_records, generator=torch.Generator().manual_seed(seed))


def write_steps(objective: ObjectiveConfig, train: TrainConfig, n_records: int) -> int:
    """Optimizer steps a write's LR schedule spans (the cap of `until="certified"`): the training budget,
    or the curriculum's own total at the paper's budget (`equal_budget: false`)."""
    steps = train.budget_steps(n_records)
    if objective.name != "memft-sw-curriculum" or objective.equal_budget:
        return steps
    return curriculum_plan(n_records, train.batch_size, steps, objective.curriculum_ratios,
                           objective.curriculum_boundaries, equal_budget=False).total


__all__ = ["PAPER_SCHEDULES", "paper_boundaries", "stage_size", "CurriculumPlan", "curriculum_plan",
           "curriculum_order", "write_steps"]
