"""Local executor: one process, the base model loaded once and kept resident across the cells."""

from __future__ import annotations

import logging
import time

from memlaw.errors import ConfigError
from memlaw.models import BaseModel, load_base, resolve_dtype
from memlaw.store import Store
from memlaw.sweep.cell import cell_records, run_cell
from memlaw.sweep.grid import SweepConfig
from memlaw.sweep.progress import CellCallback, SweepSummary, Tracker, cell_cost, pending_cells
from memlaw.train import StepCallback

logger = logging.getLogger(__name__)


def resolve_device(device: str = "auto") -> str:
    """"auto": cuda where torch sees a GPU, else cpu."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_local(sweep: SweepConfig, store: Store, *, base: BaseModel | None = None, device: str = "auto",
              on_cell: CellCallback | None = None, on_step: StepCallback | None = None) -> SweepSummary:
    """Run every cell of `sweep` that `store` does not hold yet, storing each as it finishes.

    Args:
        sweep: the grid.
        store: finished cells are skipped; each new cell is stored in one transaction.
        base: a loaded base model to use (must be `sweep.model` in `sweep.dtype`); loaded once if None.
        device: where to load the base ("auto": cuda if available).
        on_cell: progress over cells (plan event first, then one per finished cell, with ETA).
        on_step: progress inside the running cell's write loop.

    Raises:
        ConfigError: a length the benchmark cannot reach, or a `base` that is not the sweep's model.
    """
    started = time.perf_counter()
    todo = pending_cells(sweep, store.finished_keys())
    skipped = len(sweep.cells()) - len(todo)
    if not todo:
        return Tracker({}, skipped, on_cell).summary(sweep, "local")
    if base is None:
        base = load_base(sweep.model, dtype=sweep.dtype, device=resolve_device(device))
    elif base.name != sweep.model or base.dtype != resolve_dtype(sweep.dtype, base.device):
        raise ConfigError(f"sweep {sweep.name!r} is for {sweep.model!r} in {sweep.dtype}; the base given is "
                          f"{base.name!r} in {base.dtype}")
    # Build every cell's records before the first write: a bad length fails now, not an hour in.
    costs = {c.key: cell_cost(c, len(cell_records(c.benchmark, c.length, base.tokenizer))) for c in todo}
    tracker = Tracker(costs, skipped, on_cell, started=started)
    for cell in todo:
        if store.is_done(cell.key):          # another writer on this store got there first
            tracker.skip(cell.key)
            continue
        result = run_cell(cell, base, on_step=on_step, token_probs=sweep.token_probs)
        stored = store.add_cell(result, sweep=sweep.name)
        tracker.finished(result, stored)
    return tracker.summary(sweep, "local")


__all__ = ["run_local", "resolve_device"]
