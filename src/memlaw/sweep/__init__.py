"""Sweeps: a grid of cells (one write + verify each), run locally or on Ray, stored in the results store.

    from memlaw.store import open_store
    from memlaw.sweep import load_sweep, run_sweep

    with open_store("runs.db") as store:
        summary = run_sweep(load_sweep("configs/sweep-smollm2-phonebook.yaml"), store)
"""

from __future__ import annotations

from typing import Any

from memlaw.errors import ConfigError
from memlaw.sweep.cell import CellResult, run_cell
from memlaw.sweep.grid import BenchmarkConfig, CellConfig, SweepConfig, load_sweep, sweep_from_dict
from memlaw.sweep.local import run_local
from memlaw.sweep.progress import CellCallback, CellEvent, SweepSummary

EXECUTORS = ("local", "ray")


def run_sweep(sweep: SweepConfig, store, *, executor: str = "local", on_cell: CellCallback | None = None,
              **options: Any) -> SweepSummary:
    """Run the cells of `sweep` missing from `store` on `executor` ("local" or "ray").

    `options` go to `run_local` (base, device, on_step, stack, workers) or `run_ray` (address, num_gpus, num_cpus,
    actors, device, init_kwargs).
    """
    if executor == "local":
        return run_local(sweep, store, on_cell=on_cell, **options)
    if executor == "ray":
        from memlaw.sweep.ray import run_ray  # Ray is imported only when asked for

        return run_ray(sweep, store, on_cell=on_cell, **options)
    raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")


__all__ = ["run_sweep", "run_cell", "run_local", "load_sweep", "sweep_from_dict", "SweepConfig", "CellConfig",
           "BenchmarkConfig", "CellResult", "CellEvent", "SweepSummary", "EXECUTORS"]
