"""Local executor: one process, the base model loaded once and kept resident across the cells."""

from __future__ import annotations

import logging
import time

from memlaw.errors import ConfigError
from memlaw.models import BaseModel, load_base, resolve_dtype
from memlaw.store import Store
from memlaw.sweep.cell import cell_records, run_group
from memlaw.sweep.grid import SweepConfig, stack_groups
from memlaw.sweep.progress import CellCallback, SweepSummary, Tracker, cell_cost, pending_cells
from memlaw.train import StepCallback

logger = logging.getLogger(__name__)


def run_local(sweep: SweepConfig, store: Store, *, base: BaseModel | None = None, device: str = "auto",
              on_cell: CellCallback | None = None, on_step: StepCallback | None = None,
              stack: int | None = None) -> SweepSummary:
    """Run every cell of `sweep` that `store` does not hold yet, storing each as it finishes.

    Args:
        sweep: the grid.
        store: finished cells are skipped; each new cell is stored in one transaction.
        base: a loaded base model to use (must be `sweep.model` in `sweep.dtype`); loaded once if None.
        device: where to load the base ("auto": cuda if available).
        on_cell: progress over cells (plan event first, then one per finished cell, with ETA).
        on_step: progress inside the running cell's write loop (of a stacked group: one bar for the group).
        stack: train up to this many probe cells in one pass (`SweepConfig.stack`, which it overrides).

    Raises:
        ConfigError: a length the benchmark cannot reach, or a `base` that is not the sweep's model.
    """
    started = time.perf_counter()
    todo = pending_cells(sweep, store.finished_keys())
    skipped = len(sweep.cells()) - len(todo)
    if not todo:
        return Tracker({}, skipped, on_cell).summary(sweep, "local")
    if base is None:
        base = load_base(sweep.model, dtype=sweep.dtype, device=device)
    elif base.name != sweep.model or base.dtype != resolve_dtype(sweep.dtype, base.device):
        raise ConfigError(f"sweep {sweep.name!r} is for {sweep.model!r} in {sweep.dtype}; the base given is "
                          f"{base.name!r} in {base.dtype}")
    # Build every cell's records before the first write: a bad length fails now, not an hour in.
    costs = {c.key: cell_cost(c, len(cell_records(c.benchmark, c.length, base.tokenizer))) for c in todo}
    tracker = Tracker(costs, skipped, on_cell, started=started)
    stack = sweep.stack if stack is None else stack
    for group in stack_groups(todo, stack):  # only unfinished cells, so a resumed sweep stacks what is left
        fresh = [c for c in group if not store.is_done(c.key)]
        for key in {c.key for c in group} - {c.key for c in fresh}:
            tracker.skip(key)                # another writer on this store got there first
        if not fresh:
            continue
        results = run_group(fresh, base, on_step=on_step, token_probs=sweep.token_probs,
                            locality=sweep.locality)  # a group of one: run_cell
        for result in results:               # each cell in its own transaction, as it would be alone
            tracker.finished(result, store.add_cell(result, sweep=sweep.name))
    return tracker.summary(sweep, "local")


__all__ = ["run_local"]
