"""What both executors share: picking the cells still to run, storing results, progress events with an ETA."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from memlaw.curriculum import write_steps
from memlaw.sweep.cell import CellResult
from memlaw.sweep.grid import CellConfig, SweepConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CellEvent:
    """One progress event: the plan (`result` None, `done` 0) or one more finished cell."""

    done: int                    # cells finished in this run
    total: int                   # cells this run has to do (the grid less the finished ones)
    skipped: int                 # cells already in the store
    failed: int                  # cells of this run stored as failed
    elapsed: float               # seconds since the run started
    eta_s: float | None          # seconds left, from the cost of the cells done and to do (None at the start)
    result: CellResult | None = None
    stored: bool = False         # False: another writer stored this key first

    @property
    def cells_per_hour(self) -> float | None:
        return 3600.0 * self.done / self.elapsed if self.done and self.elapsed > 0 else None


CellCallback = Callable[[CellEvent], None]


@dataclass(frozen=True)
class SweepSummary:
    name: str
    grid: int          # cells in the grid
    skipped: int       # already finished before this run
    ran: int           # run and stored now (done or failed)
    failed: int
    wall_s: float      # the whole run: loading the model (or starting Ray) included
    executor: str

    @property
    def cells_per_hour(self) -> float | None:
        return 3600.0 * self.ran / self.wall_s if self.ran and self.wall_s > 0 else None

    def as_text(self) -> str:
        rate = self.cells_per_hour
        return (f"sweep {self.name}: {self.grid} cells, {self.skipped} already stored, {self.ran} run "
                f"({self.failed} failed) in {self.wall_s:.1f} s on {self.executor}"
                + (f", {rate:.1f} cells/hour" if rate else ""))

    def to_dict(self) -> dict:
        return {"name": self.name, "grid": self.grid, "skipped": self.skipped, "ran": self.ran, "failed": self.failed,
                "wall_s": round(self.wall_s, 3), "cells_per_hour": self.cells_per_hour, "executor": self.executor}


def pending_cells(sweep: SweepConfig, finished: set[str]) -> list[CellConfig]:
    """The grid's cells whose keys are not finished, in grid order."""
    return [c for c in sweep.cells() if c.key not in finished]


def cell_cost(cell: CellConfig, n_records: int) -> float:
    """Relative cost of a cell for the ETA: records seen in training (steps × batch) plus one verify pass."""
    batch = min(cell.train.batch_size, n_records)
    return float(write_steps(cell.objective, cell.train, n_records) * batch + n_records)


class Tracker:
    """Counts finished cells and turns their cost into an ETA; calls `on_cell` with each event."""

    def __init__(self, costs: dict[str, float], skipped: int, on_cell: CellCallback | None, *,
                 started: float | None = None):
        """`started`: `time.perf_counter()` when the run began (model loading, actor start-up); the
        summary's wall time counts from it, the ETA from now (the first cell)."""
        self.costs, self.skipped, self.on_cell = costs, skipped, on_cell
        self.total, self.done, self.failed, self.cost_done = len(costs), 0, 0, 0.0
        self.t0 = time.perf_counter()
        self.started = self.t0 if started is None else started
        self._emit(None, False)

    def finished(self, result: CellResult, stored: bool) -> None:
        self.done += 1
        self.failed += result.status == "failed"
        self.cost_done += self.costs.get(result.key, 0.0)
        logger.info("cell %s %s (%d/%d)", result.key[:12], result.status, self.done, self.total)
        self._emit(result, stored)

    def skip(self, key: str) -> None:
        """A planned cell turned out finished (stored by another writer meanwhile): drop it from the plan."""
        self.costs.pop(key, None)
        self.total -= 1
        self.skipped += 1

    def _emit(self, result: CellResult | None, stored: bool) -> None:
        if self.on_cell is None:
            return
        elapsed = time.perf_counter() - self.t0
        left = sum(self.costs.values()) - self.cost_done
        eta = elapsed / self.cost_done * left if self.cost_done > 0 else None
        self.on_cell(CellEvent(self.done, self.total, self.skipped, self.failed, elapsed, eta, result, stored))

    def summary(self, sweep: SweepConfig, executor: str) -> SweepSummary:
        return SweepSummary(sweep.name, len(sweep.cells()), self.skipped, self.done, self.failed,
                            time.perf_counter() - self.started, executor)


__all__ = ["CellEvent", "CellCallback", "SweepSummary", "Tracker", "pending_cells", "cell_cost"]
