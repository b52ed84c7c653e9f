"""Local executor: the base model loaded once and kept resident across the cells, in this process or in
several worker processes on the CPU's cores.

On a CPU a sweep cell's training batches are small (2 to 16 rows): a step's matmuls are bound by
reading the weights, and torch's threads share one step poorly. Cells running side by side, each in
its own process on its own core(s), use the cores better (`workers`, "auto" on the command line).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections import deque
from multiprocessing.connection import Connection, wait

import torch

from memlaw import errors
from memlaw.encode import resolve_prompt, terminator_ids
from memlaw.errors import ConfigError, MemlawError
from memlaw.locality import Continuations, decode_continuations, expect_continuations, prompt_set
from memlaw.models import BaseModel, load_base, resolve_dtype
from memlaw.store import Store
from memlaw.sweep.cell import CellResult, cell_records, run_group
from memlaw.sweep.grid import CellConfig, SweepConfig, stack_groups
from memlaw.sweep.progress import CellCallback, SweepSummary, Tracker, cell_cost, pending_cells
from memlaw.train import StepCallback

logger = logging.getLogger(__name__)

MAX_AUTO_WORKERS = 8
"""`workers="auto"` starts at most this many processes, however many cores the machine has."""


def run_local(sweep: SweepConfig, store: Store, *, base: BaseModel | None = None, device: str = "auto",
              on_cell: CellCallback | None = None, on_step: StepCallback | None = None,
              stack: int | None = None, workers: int | str = 1) -> SweepSummary:
    """Run every cell of `sweep` that `store` does not hold yet, storing each as it finishes.

    Args:
        sweep: the grid.
        store: finished cells are skipped; each new cell is stored in one transaction.
        base: a loaded base model to use (must be `sweep.model` in `sweep.dtype`); loaded once if None.
            With several workers it only counts the cells' records: each worker loads the model by name.
        device: where to load the base ("auto": cuda if available).
        on_cell: progress over cells (plan event first, then one per finished cell, with ETA).
        on_step: progress inside the running cell's write loop (of a stacked group: one bar for the group);
            with one worker only.
        stack: train up to this many probe cells in one pass (`SweepConfig.stack`, which it overrides).
        workers: processes running cells side by side on the CPU, each with `thread_budget() // workers`
            torch threads (1: this process, on its own threads; "auto": `auto_workers`). A CPU sweep only.

    Raises:
        ConfigError: a length the benchmark cannot reach, a `base` that is not the sweep's model, or
            several workers asked for on a GPU.
        MemlawError: a worker process died; the cells finished before are stored.
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
    groups = stack_groups(todo, stack)   # only unfinished cells, so a resumed sweep stacks what is left
    n = auto_workers(base, len(groups)) if workers == "auto" else int(workers)
    if n > 1 and str(base.device) != "cpu":
        raise ConfigError(f"several workers run cells side by side on a CPU; the base is on {base.device} "
                          "(on a GPU, stack cells instead, or use the ray executor for several GPUs)")
    if n > 1 and len(groups) > 1:
        # longest first, so the cells still running at the end are short ones and no worker idles long
        by_cost = sorted(groups, key=lambda g: -sum(costs[c.key] for c in g))
        _run_in_workers(sweep, store, tracker, deque(by_cost), min(n, len(groups)), base)
        return tracker.summary(sweep, "local")
    for group in groups:
        fresh = _fresh(group, store, tracker)
        if fresh:
            results = run_group(fresh, base, on_step=on_step, token_probs=sweep.token_probs,
                                locality=sweep.locality)  # a group of one: run_cell
            _store(results, store, sweep, tracker)
    return tracker.summary(sweep, "local")


def auto_workers(base: BaseModel, groups: int) -> int:
    """Worker processes for `workers="auto"`: on a CPU one per thread of `thread_budget`, at most
    `MAX_AUTO_WORKERS`, as many as the available memory holds (each keeps its own copy of the model and
    its activations, taken as three times the weights plus 1 GiB) and no more than there are cells to
    run; on a GPU one."""
    if str(base.device) != "cpu":
        return 1
    weights = sum(p.numel() * p.element_size() for p in base.model.parameters())
    free = available_memory()
    fit = MAX_AUTO_WORKERS if free is None else free // (3 * weights + 2**30)
    return max(1, min(thread_budget(), MAX_AUTO_WORKERS, fit, groups))


def thread_budget() -> int:
    """The CPU threads a sweep may use: torch's thread count (by default one per physical core; less where
    the user set OMP_NUM_THREADS or `torch.set_num_threads`), within the cores this process may run on."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(torch.get_num_threads(), cores))


def available_memory() -> int | None:
    """Bytes of memory available to new processes (Linux's MemAvailable, else free pages), None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _fresh(group: list[CellConfig], store: Store, tracker: Tracker) -> list[CellConfig]:
    """The cells of `group` not stored yet (another writer on this store may have got there first)."""
    fresh = [c for c in group if not store.is_done(c.key)]
    for key in {c.key for c in group} - {c.key for c in fresh}:
        tracker.skip(key)
    return fresh


def _next_group(queue: deque, store: Store, tracker: Tracker) -> list[CellConfig] | None:
    """The next group in `queue` with a cell not stored yet (taken off the queue), or None when none is left."""
    while queue:
        group = _fresh(queue.popleft(), store, tracker)
        if group:
            return group
    return None


def _store(results: list[CellResult], store: Store, sweep: SweepConfig, tracker: Tracker) -> None:
    for result in results:               # each cell in its own transaction, as it would be alone
        tracker.finished(result, store.add_cell(result, sweep=sweep.name))


def _run_in_workers(sweep: SweepConfig, store: Store, tracker: Tracker, queue: deque, n: int,
                    base: BaseModel) -> None:
    """Run the groups in `queue` on `n` worker processes, each given the next group when it hands one
    back; this process stores every result as it arrives. Any failure stops every worker.

    Meanwhile a thread of this process decodes locality's base continuations at the workers' thread count,
    and this process sends them to every worker once they are ready; a worker takes them when its first
    cell measures locality (waiting for them if they have not come), so that no worker decodes them itself."""
    threads = max(1, thread_budget() // n)
    key = _prompt_set(sweep, queue, base, threads)
    decoded, decoder = (None, None) if key is None else _decode_aside(base, key)
    decoded_end = decoded                # closed at the end, so that a decoding still running cannot block
    # Workers fork from a server process that imported memlaw (and torch) once, before any torch thread
    # pool exists: forking this process instead would copy its thread pools, which is unsafe, and a spawned
    # worker imports everything again.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    links: dict[Connection, multiprocessing.Process] = {}
    running: dict[Connection, list[CellConfig]] = {}
    try:
        for _ in range(n):
            here, there = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(there, sweep.model, sweep.dtype, threads, key), daemon=True)
            proc.start()
            there.close()
            links[here] = proc
        logger.info("local: %d worker processes, %d torch thread(s) each, for %d groups", n, threads, len(queue))
        idle = list(links)
        while idle or running:
            for link in idle:
                group = _next_group(queue, store, tracker)
                if group is None:
                    break
                _send(link, ("group", (group, sweep.token_probs, sweep.locality)), links[link], group)
                running[link] = group
            idle = []
            if not running:              # the queue is empty and every worker idle
                break
            for link in wait(list(running) + ([decoded] if decoded is not None else [])):
                if link is decoded:      # the continuations are ready (or None: each worker decodes its own)
                    continuations = decoded.recv()
                    for worker, proc in links.items():
                        _send(worker, ("continuations", continuations), proc, running.get(worker))
                    decoded = None
                    continue
                group = running.pop(link)
                try:
                    kind, payload = link.recv()
                except (EOFError, OSError):          # closed, or reset by a killed worker
                    raise _died(links[link], group) from None
                if kind == "error":
                    raise _rebuilt(*payload)
                _store(payload, store, sweep, tracker)
                idle.append(link)
    finally:
        for link, proc in links.items():
            try:
                link.send(None)          # done: the worker returns
            except OSError:
                pass
            link.close()
        for proc in links.values():
            proc.join(timeout=5 if not running else 0)
            if proc.is_alive():
                proc.terminate()
                proc.join()
        if decoder is not None:
            decoded_end.close()
            decoder.join()               # no torch work of the sweep's left running in this process


def _send(link: Connection, message: tuple, proc: multiprocessing.Process, group: list[CellConfig] | None) -> None:
    try:
        link.send(message)
    except OSError:
        raise _died(proc, group) from None


def _prompt_set(sweep: SweepConfig, queue: deque, base: BaseModel, threads: int) -> tuple | None:
    """The key of locality's prompt set in the workers (`memlaw.locality.prompt_set` at their thread
    count), if the sweep measures locality and its cells share one prompt spec; else None."""
    prompts = {cell.prompt for group in queue for cell in group}
    if not sweep.locality or len(prompts) != 1:
        return None
    try:
        spec = resolve_prompt(prompts.pop(), base.tokenizer)
        return prompt_set(base, spec, terminator_ids(base.tokenizer, spec), threads=threads)
    except MemlawError:                  # e.g. a chat template this tokenizer lacks: each cell reports it
        return None


def _decode_aside(base: BaseModel, key: tuple) -> tuple[Connection, threading.Thread]:
    """Start decoding the continuations of `key` in a thread of this process (on the key's thread count:
    torch's count is per thread, so this process's own is left as it is); the connection gives the
    `Continuations`, or None if decoding failed."""
    out, into = multiprocessing.Pipe(duplex=False)

    def decode() -> None:
        try:
            continuations = decode_continuations(base, key)
        except Exception as e:           # the workers decode their own
            logger.warning("locality's continuations could not be decoded ahead: %s", e)
            continuations = None
        try:
            into.send(continuations)
        except OSError:                  # the sweep stopped first
            pass
        into.close()

    thread = threading.Thread(target=decode, name="memlaw-locality-continuations", daemon=True)
    thread.start()
    return out, thread


def _died(proc: multiprocessing.Process, group: list[CellConfig] | None) -> MemlawError:
    """The error for a worker found dead when it was sent, or was running, `group` (None: idle)."""
    proc.join(timeout=1)
    where = f" at cell {group[0].key[:12]}" if group else ""
    return MemlawError(f"a sweep worker died{where} (exit code {proc.exitcode}); "
                       "finished cells are stored, run the sweep again to resume")


def _rebuilt(name: str, text: str) -> Exception:
    """A worker's error in this process: memlaw's own class (so the CLI's exit code holds), else MemlawError."""
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, MemlawError):
        return cls(text)
    return MemlawError(f"a sweep worker failed: {name}: {text}")


def _worker(link: Connection, model: str, dtype: str, threads: int, key: tuple | None) -> None:
    """A worker process: load the base model once, then run each group it is sent until it is sent None.
    Locality's continuations of `key` come from the sweep's process (`_run_in_workers`)."""
    torch.set_num_threads(threads)

    def fetch() -> Continuations | None:      # inside a cell, the only message that can come is this one
        message = link.recv()
        if message is None:
            raise EOFError("the sweep stopped")
        return message[1]

    try:
        base = load_base(model, dtype=dtype, device="cpu")
        if key is not None:
            expect_continuations(base, key, fetch)
        while (message := link.recv()) is not None:
            kind, payload = message
            if kind == "continuations":   # came between cells: the next locality takes them (None: decodes)
                expect_continuations(base, key, lambda got=payload: got)
                continue
            group, token_probs, locality = payload
            link.send(("done", run_group(group, base, token_probs=token_probs, locality=locality)))
    except (EOFError, BrokenPipeError, KeyboardInterrupt):  # the parent went away, or Ctrl-C reached us all
        return
    except Exception as e:               # sent back as its class name and text: memlaw's own errors are rebuilt
        try:
            link.send(("error", (type(e).__name__, str(e))))
        except OSError:
            pass


__all__ = ["run_local", "auto_workers", "thread_budget", "available_memory", "MAX_AUTO_WORKERS"]
