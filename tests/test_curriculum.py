"""The curriculum's schedule (memlaw.curriculum) against the paper's epoch loop, computed independently here."""

import math

import pytest
import torch

from memlaw.config import ObjectiveConfig
from memlaw.curriculum import PAPER_SCHEDULES, curriculum_order, curriculum_plan, paper_boundaries, write_steps
from memlaw.errors import ConfigError
from memlaw.objectives import make_objective


def ref_n_active(N, ratio, B):
    """The paper's stage size: min(⌊N/B⌋·B, max(B, ⌊⌊N·ratio⌋/B⌋·B)), N when N < B."""
    if N < B:
        return N
    return min(N // B * B, max(B, math.floor(math.floor(N * ratio) / B) * B))


RATIOS = (0.2, 0.4, 0.6, 0.8, 1.0)
PAPER = {  # reference_method §2.2 and §4.2: Qwen3 PB<L> -> (entries, batch, stage ends in epochs; SFT: 200 epochs)
    1000: (100, 10, (20, 40, 60, 80, 300)), 2000: (200, 10, (20, 40, 60, 80, 300)),
    4000: (400, 10, (30, 60, 90, 120, 350)), 8000: (800, 20, (30, 60, 90, 120, 350)),
    12000: (1200, 40, (60, 120, 180, 240, 500)), 16000: (1600, 40, (80, 160, 240, 320, 600)),
    24000: (2400, 40, (80, 160, 240, 320, 600)), 32000: (3200, 40, (100, 200, 300, 400, 700)),
}
PAPER_PASSES = {1000: 260, 2000: 260, 4000: 290, 8000: 290, 12000: 380, 16000: 440, 24000: 440, 32000: 500}
"""Sample passes in epochs of the full set, reference_method §4.2's table (Qwen rows)."""


def paper_steps(N, B, epoch_ends):
    """The paper's loop, epoch by epoch: the active-set size of every optimizer step (GA 1)."""
    sizes = []
    for e in range(epoch_ends[-1]):
        ratio = next((r for r, end in zip(RATIOS, epoch_ends) if e < end), RATIOS[-1])
        n = N if ratio >= 1.0 else ref_n_active(N, ratio, B)
        sizes += [n] * (n // B if ratio < 1.0 else -(-N // B))
    return sizes


@pytest.mark.parametrize("length", sorted(PAPER))
def test_paper_budget_reproduces_the_paper_schedule_step_by_step(length):
    N, B, ends = PAPER[length]
    sft_steps = 200 * N // B                                     # SFT: 200 epochs of N / B steps
    want = paper_steps(N, B, ends)
    plan = curriculum_plan(N, B, sft_steps, RATIOS, equal_budget=False)   # default: the paper's schedule for N
    assert plan.total == len(want)
    assert [plan.size(s) for s in range(plan.total)] == want
    assert plan.total * B == PAPER_PASSES[length] * N            # the paper's 1.3-2.5x SFT's passes


def test_paper_budget_at_our_scale_is_the_paper_loop_scaled_to_the_budget():
    """PB160 on SmolLM2: 16 entries, batch 8, SFT budget 300 steps = 150 epochs; the paper's epochs
    20/40/60/80/300 of 200 become 15/30/45/60/225 of 150, every stage a whole number of epochs."""
    want = paper_steps(16, 8, (15, 30, 45, 60, 225))
    plan = curriculum_plan(16, 8, 300, RATIOS, equal_budget=False)
    assert [plan.size(s) for s in range(plan.total)] == want and len(want) == 390   # 60 x 8 records, 165 x 16


@pytest.mark.parametrize("N, B, budget", [(16, 8, 300), (40, 8, 200), (100, 10, 2000), (24, 5, 97), (3200, 40, 999)])
def test_equal_budget_compresses_the_paper_schedule_into_the_budget(N, B, budget):
    paper = curriculum_plan(N, B, budget, RATIOS, equal_budget=False)
    equal = curriculum_plan(N, B, budget, RATIOS)
    assert equal.total == budget and paper.total > budget
    assert equal.sizes == paper.sizes == tuple(N if r >= 1 else ref_n_active(N, r, B) for r in RATIOS)
    # the same stages, each ending at the same share of the steps (up to rounding to whole steps)
    for e, p in zip(equal.ends, paper.ends):
        assert abs(e - budget * p / paper.total) <= 0.5 + budget / paper.total
    sizes = [equal.size(s) for s in range(budget)]
    assert sizes == sorted(sizes) and sizes.count(N) == budget - equal.ends[3]


def test_paper_boundaries_by_set_size():
    rows = {n: tuple(e / 200 for e in ends) for n, _, ends in PAPER.values()}
    for n, want in rows.items():
        assert paper_boundaries(n) == pytest.approx(want)
    assert paper_boundaries(16) == paper_boundaries(100) and paper_boundaries(300) == paper_boundaries(200)
    assert paper_boundaries(100_000) == paper_boundaries(3200)
    assert [fewest for fewest, _ in PAPER_SCHEDULES] == sorted(fewest for fewest, _ in PAPER_SCHEDULES)
    # the share of the paper's passes spent on partial sets: 15-40 % by size (the numbers)
    share = {n: sum((e - p) * r for p, e, r in zip((0, *b[:-1]), b, RATIOS[:-1])) / (
        sum((e - p) * r for p, e, r in zip((0, *b[:-1]), b, RATIOS))) for n, b in rows.items()}
    assert min(share.values()) == pytest.approx(40 / 260) and max(share.values()) == pytest.approx(0.4)


def test_curriculum_sets_are_nested_prefixes_of_one_permutation():
    order = curriculum_order(50, 7)
    assert torch.equal(order, torch.randperm(50, generator=torch.Generator().manual_seed(7)))
    assert not torch.equal(order, curriculum_order(50, 8))
    obj = make_objective(ObjectiveConfig(name="memft-sw-curriculum"), 50, seed=7, batch_size=5, budget_steps=100)
    sets = [obj.active(s) for s in range(obj.total_steps)]
    for small, big in zip(sets, sets[1:]):
        assert len(big) >= len(small) and torch.equal(big[: len(small)], small)
    assert sorted(sets[-1].tolist()) == list(range(50))


@pytest.mark.parametrize("N,B", [(105, 10), (25, 10), (7, 10), (1000, 1), (64, 16)])
def test_curriculum_stage_sizes_are_whole_batches(N, B):
    plan = curriculum_plan(N, B, 500, RATIOS)
    assert plan.sizes == tuple(N if r >= 1 or N < B else ref_n_active(N, r, B) for r in RATIOS)
    assert plan.sizes[-1] == N


def test_write_steps_and_explicit_boundaries():
    from memlaw.config import TrainConfig

    train = TrainConfig(batch_size=10, max_steps=2000)
    cur = ObjectiveConfig(name="memft-sw-curriculum")
    assert write_steps(ObjectiveConfig(), train, 100) == write_steps(cur, train, 100) == 2000
    assert write_steps(ObjectiveConfig(name="memft-sw-curriculum", equal_budget=False), train, 100) == 2600
    # explicit ends in budget epochs: stages of 20 % and 100 %, half a budget each -> 0.5*0.2 + 0.5 = 0.6 budgets
    two = ObjectiveConfig(name="memft-sw-curriculum", curriculum_ratios=(0.2, 1.0), curriculum_boundaries=(0.5, 1.0),
                          equal_budget=False)
    assert write_steps(two, train, 100) == 1200
    plan = curriculum_plan(100, 10, 2000, (0.2, 1.0), (0.5, 1.0))
    assert plan.ends == (round(2000 * 0.1 / 0.6), 2000) and plan.sizes == (20, 100)


def test_curriculum_settings_are_checked():
    with pytest.raises(ConfigError, match="5 stages"):
        ObjectiveConfig(name="memft-sw-curriculum", curriculum_ratios=(0.5, 1.0))
    with pytest.raises(ConfigError, match="must increase"):
        ObjectiveConfig(curriculum_boundaries=(0.1, 0.1, 0.3, 0.4, 1.0))
    with pytest.raises(ConfigError, match="curriculum_boundaries"):
        ObjectiveConfig(curriculum_boundaries=(0.1, 0.2, 0.3, 0.4, -1.0))
    with pytest.raises(ConfigError):
        curriculum_plan(10, 2, 50, (0.5, 1.0), (1.0,))
    assert ObjectiveConfig().curriculum_boundaries is None and ObjectiveConfig().equal_budget is True
