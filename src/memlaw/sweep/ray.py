"""Ray executor: actors each load the base model once and take cells; the driver stores results as they arrive.

Works the same on a laptop (`address=None` starts a local Ray), a multi-GPU node (`num_gpus=1` per
actor: one actor per GPU) and a cluster (`address="auto"` inside a Ray job, or "ray://head:10001").
Only the driver touches the store, so the store never needs to be on a shared filesystem.
`ray` is imported here only, when the executor runs.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from typing import Any

from memlaw.errors import MemlawError
from memlaw.store import Store
from memlaw.sweep.cell import CellResult, cell_records, run_cell
from memlaw.sweep.grid import CellConfig, SweepConfig
from memlaw.sweep.progress import CellCallback, SweepSummary, Tracker, cell_cost, pending_cells

logger = logging.getLogger(__name__)


class CellWorker:
    """The body of a Ray actor: one resident base model, one cell at a time."""

    def __init__(self, model: str, dtype: str, device: str, threads: int | None):
        import torch

        from memlaw.models import load_base

        if threads:  # Ray sets OMP_NUM_THREADS from num_cpus; say it to torch too, so CPU numerics match
            torch.set_num_threads(threads)
        self.base = load_base(model, dtype=dtype, device=device)

    def count_records(self, cells: list[CellConfig]) -> list[int]:
        return [len(cell_records(c.benchmark, c.length, self.base.tokenizer)) for c in cells]

    def run(self, cell: CellConfig, token_probs: bool, locality: bool = True) -> CellResult:
        return run_cell(cell, self.base, token_probs=token_probs, locality=locality)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise MemlawError("the ray executor needs Ray: pip install 'ray>=2.9'") from None
    return ray


def _cause(e: Exception) -> Exception:
    """The MemlawError inside a RayTaskError, if any (so the CLI prints one line, not a remote traceback)."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, MemlawError) else e


def run_ray(sweep: SweepConfig, store: Store, *, address: str | None = None, num_gpus: float = 0.0,
            num_cpus: float = 1.0, actors: int | None = None, device: str = "auto",
            on_cell: CellCallback | None = None, init_kwargs: dict[str, Any] | None = None) -> SweepSummary:
    """Run the cells of `sweep` that `store` lacks on Ray actors; store each result as it arrives.

    Args:
        sweep: the grid.
        store: finished cells are skipped; the driver writes each new cell in one transaction.
        address: None starts a local Ray (unless one is already initialised in this process);
            "auto" joins the cluster this machine belongs to; "ray://host:10001" a remote one.
        num_gpus: GPUs per actor (0: CPU actors). 1 on an 8-GPU node gives 8 actors.
        num_cpus: CPUs per actor (also torch's thread count on CPU actors).
        actors: how many actors (default: as many as the cluster's resources fit, at most one per cell).
        device: "auto" (cuda when the actor has a GPU), "cpu" or "cuda".
        on_cell: progress over cells, as the local executor's.
        init_kwargs: extra arguments for `ray.init` (e.g. runtime_env).
    """
    started = time.perf_counter()
    todo = pending_cells(sweep, store.finished_keys())
    skipped = len(sweep.cells()) - len(todo)
    if not todo:
        return Tracker({}, skipped, on_cell).summary(sweep, "ray")
    ray = _import_ray()
    own_ray = not ray.is_initialized()
    if own_ray:
        # several actors share a node's cores: spinning OpenMP workers would starve each other
        passive = {"env_vars": {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}}
        kwargs = {"include_dashboard": False, "log_to_driver": False, "runtime_env": passive, **(init_kwargs or {})}
        ray.init(address=address, **kwargs)
    try:
        resources = ray.cluster_resources()
        if num_gpus > resources.get("GPU", 0):
            raise MemlawError(f"ray: actors ask for {num_gpus} GPU each, the cluster has {resources.get('GPU', 0):g}")
        n = actors or _fit_actors(resources, num_cpus, num_gpus)
        n = max(1, min(n, len(todo)))
        threads = None if num_gpus else max(1, int(num_cpus))
        remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(CellWorker)
        workers = [remote.remote(sweep.model, sweep.dtype, device, threads) for _ in range(n)]
        logger.info("ray: %d actors (%s CPU, %s GPU each) for %d cells", n, num_cpus, num_gpus, len(todo))
        try:
            counts = ray.get(workers[0].count_records.remote(todo))   # checks every length before any write
        except Exception as e:
            raise _cause(e) from None
        costs = {c.key: cell_cost(c, k) for c, k in zip(todo, counts)}
        tracker = Tracker(costs, skipped, on_cell, started=started)
        _dispatch(ray, workers, deque(todo), store, sweep, tracker)
        for w in workers:
            ray.kill(w)
        return tracker.summary(sweep, "ray")
    finally:
        if own_ray:
            ray.shutdown()


def _dispatch(ray, workers: list, queue: deque, store: Store, sweep: SweepConfig, tracker: Tracker) -> None:
    """Keep every actor busy with one cell; store each result on arrival, then hand that actor the next cell."""
    running: dict[Any, tuple[Any, CellConfig]] = {}

    def submit(worker) -> None:
        while queue:
            cell = queue.popleft()
            if store.is_done(cell.key):      # another writer on this store got there first
                tracker.skip(cell.key)
                continue
            running[worker.run.remote(cell, sweep.token_probs, sweep.locality)] = (worker, cell)
            return

    for w in workers:
        submit(w)
    while running:
        (ref,), _ = ray.wait(list(running), num_returns=1)
        worker, cell = running.pop(ref)
        try:
            result = ray.get(ref)
        except Exception as e:
            for w in workers:                    # stop the other cells: the driver is about to give up
                ray.kill(w)
            cause = _cause(e)
            if cause is not e:
                raise cause from None
            raise MemlawError(f"ray: cell {cell.key[:12]} failed ({type(e).__name__}: {str(e).splitlines()[0]}); "
                              "finished cells are stored, run the sweep again to resume") from e
        tracker.finished(result, store.add_cell(result, sweep=sweep.name))
        submit(worker)


def _fit_actors(resources: dict[str, float], num_cpus: float, num_gpus: float) -> int:
    if num_gpus > 0:
        return int(resources.get("GPU", 0) // num_gpus)
    return int(resources.get("CPU", 1) // max(num_cpus, 1e-9))


__all__ = ["run_ray", "CellWorker"]
