"""One grid cell: build its records, write them into a fresh adapter, verify. Writes nothing to disk.

`run_cell` prepares the cell (records from the benchmark registry, encoding, L_base) and hands it
to `engine.write_and_verify`; a stacked group trains in one pass and verifies each adapter with
`engine.measure`. The executor (local or Ray) keeps the base model resident, hands it in, and
persists the returned `CellResult` to the store.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from memlaw.adapters import make_adapter
from memlaw.benchmarks.registry import build_cell, value_bits_cell
from memlaw.bits import ValueBits
from memlaw.config import BenchmarkConfig
from memlaw.encode import Encoded, encode
from memlaw.engine import Measured, attached, measure, write_and_verify
from memlaw.errors import ConfigError, MemlawError
from memlaw.forward import TokenProbs
from memlaw.curriculum import write_steps
from memlaw.records import Record
from memlaw.sweep.grid import CellConfig, probs_interval
from memlaw.train import StepCallback
from memlaw.verify import base_answer_losses

logger = logging.getLogger(__name__)

TIMING_KEYS = ("wall_s", "write_s", "steps_per_s", "time_to_certified", "locality_s")
"""Metrics that measure the machine, not the memory: they differ between two runs of one cell."""


@dataclass
class CellResult:
    """What one cell produced: its row (status, metrics, versions) and, if asked, p_t at every check."""

    key: str
    cell: CellConfig
    status: str                                  # "done", or "failed" (a MemlawError: bad cell, not a crash)
    metrics: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    token_probs: list[tuple[int, int, bytes]] = field(default_factory=list)
    """(step, record index, float16 p_t bytes of the record's answer tokens) per check; empty unless asked."""
    error: str | None = None


def cell_records(benchmark: BenchmarkConfig, length: int, tokenizer) -> list[Record]:
    """The records a cell writes (the benchmark's memory of `length` value tokens under `tokenizer`)."""
    return build_cell(benchmark, tokenizer, length)[0]


def versions() -> dict[str, str]:
    """Library versions and the platform, stored with each row."""
    import transformers

    import memlaw

    return {"memlaw": memlaw.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": np.__version__, "python": sys.version.split()[0], "platform": platform.platform()}


def run_cell(cell: CellConfig, base, *, on_step: StepCallback | None = None, token_probs: bool | int = False,
             recall: bool = True, locality: bool = True) -> CellResult:
    """One write + verify for one grid cell. Persisting is the executor's job.

    Args:
        cell: the cell.
        base: the loaded base model; it must be `cell.model` (it is only borrowed: the adapter is
            detached again before returning).
        on_step: progress callback of the write loop.
        token_probs: keep every record's p_t at certificate checks: True at every check, an integer
            N >= 1 at the first check and then at checks at least N steps after the last one kept;
            the last check (the final p_t, which `verify` measures again) is always kept. False: none.
        recall: confirm with greedy decoding (EM, free-run accuracy).
        locality: compare base and base + adapter on neutral prompts (`memlaw.locality`), stored as
            `metrics["locality"]` and its seconds as `locality_s`.

    Returns:
        A `CellResult`; status "failed" with the error text when the cell itself is invalid or its
        write fails (a `MemlawError`, e.g. a length no prefix reaches, or a `DivergedError`: the loss
        or the weights went non-finite). Other exceptions propagate.
    """
    prep = prepare_cell(cell, base)                       # records, encoding, L_base, a fresh adapter
    return prep if isinstance(prep, CellResult) else _write_alone(prep, base, on_step, token_probs, recall, locality)


def _write_alone(prep: _Prepared, base, on_step, token_probs, recall, locality) -> CellResult:
    keeper = ProbsKeeper(token_probs)
    try:
        done = write_and_verify(base, prep.enc, prep.adapter, prep.cell.objective, prep.cell.train,
                                base_losses=prep.losses, held_out=prep.held_out, recall=recall, locality=locality,
                                on_step=on_step, on_check=keeper if keeper.every else None)
    except MemlawError as e:                              # e.g. DivergedError: the loss or weights went non-finite
        return failed(prep.cell, e)
    return cell_result(prep, base, done.train, Measured(done.verification, done.held_out, done.locality), keeper,
                       wall_s=time.perf_counter() - prep.t0)


def run_group(cells: list[CellConfig], base, *, on_step: StepCallback | None = None,
              token_probs: bool | int = False, recall: bool = True, locality: bool = True) -> list[CellResult]:
    """Several `probe` cells (as `stack_groups` forms them) trained in one forward pass per step, each verified alone.

    `ProbeStack` + `write_many` give every cell its own batches, objective, schedule, clipping,
    AdamW state and dropout masks, so each row is what `run_cell` stores up to the floating-point
    effect of the joint batch shape (tests/test_sweep_stack.py states the tolerance), plus
    `stacked: K` in its metrics. A cell's `write_s` is the shared training time until it stopped;
    `wall_s` adds its own preparation and verification. Results come back in the order of `cells`.
    A group whose joint pass fails (one cell diverged) runs its cells one at a time instead, so only
    the cell at fault is stored as failed.
    """
    preps = [prepare_cell(c, base) for c in cells]
    ready = [p for p in preps if isinstance(p, _Prepared)]
    if len(ready) == 1:                                   # a group of one: the plain path, no note
        done = {id(ready[0]): _write_alone(ready[0], base, on_step, token_probs, recall, locality)}
    else:
        done = _run_stacked(ready, base, on_step, token_probs, recall, locality) if ready else {}
    return [p if isinstance(p, CellResult) else done[id(p)] for p in preps]


def _run_stacked(ready: list[_Prepared], base, on_step, token_probs, recall, locality) -> dict[int, CellResult]:
    from memlaw.adapters.stack import ProbeStack
    from memlaw.train import write_many

    K = len(ready)
    keepers = [ProbsKeeper(token_probs) for _ in ready]
    stack = ProbeStack([p.adapter for p in ready])       # copies of the fresh adapters: those stay untrained
    try:
        with attached(stack, base):
            trained = write_many(base, stack, [p.enc for p in ready], [p.cell.objective for p in ready],
                                 [p.cell.train for p in ready], on_step=_lead_progress(on_step, ready),
                                 on_check=(lambda k, step, probs: keepers[k](step, probs)) if keepers[0].every
                                 else None)
    except MemlawError as e:     # one cell diverged and stopped the joint pass: each runs alone, so only it fails
        logger.warning("a stacked group of %d cells stopped (%s); running them one at a time", K, e)
        return {id(p): _write_alone(dataclasses.replace(p, t0=time.perf_counter() - p.prep_s), base, on_step,
                                    token_probs, recall, locality) for p in ready}
    out = {}
    for k, prep in enumerate(ready):
        t_verify = time.perf_counter()
        with attached(stack.unstack(k, dropout=prep.adapter.drop.p), base) as adapter:
            got = measure(base, adapter, prep.enc, margin=prep.cell.train.margin, base_losses=prep.losses,
                          held_out=prep.held_out, recall=recall, locality=locality)
        wall = prep.prep_s + trained[k].wall_s + time.perf_counter() - t_verify
        out[id(prep)] = cell_result(prep, base, trained[k], got, keepers[k], wall_s=wall, stacked=K)
    return out


def _lead_progress(on_step: StepCallback | None, ready: list[_Prepared]):
    """Progress of a stacked group as one bar: each joint step reports its first adapter still training."""
    if on_step is None:
        return None
    total = max(write_steps(p.cell.objective, p.cell.train, len(p.enc)) for p in ready)
    last: list[int] = []

    def forward(k: int, info) -> None:
        if not last or k <= last[0]:                    # the first report of a new joint step
            on_step(dataclasses.replace(info, total=total))
        last[:] = [k]

    return forward


@dataclass
class _Prepared:
    """A cell ready to train: its memory, the base model's losses on it, a fresh adapter."""

    cell: CellConfig
    enc: Encoded
    held_out: Encoded | None     # records to measure generalization on (the linear rule), not trained on
    losses: list[tuple[float, float]]
    adapter: Any
    t0: float                    # when preparing began
    prep_s: float                # how long it took
    bits: ValueBits | None = None  # the values' information under the benchmark's generator


def prepare_cell(cell: CellConfig, base) -> _Prepared | CellResult:
    """Records, encoding, L_base (no adapter attached) and a fresh adapter; a failed result if the cell is invalid."""
    if base.name != cell.model:
        raise ConfigError(f"cell is for model {cell.model!r} but the resident base model is {base.name!r}")
    t0 = time.perf_counter()
    try:
        records, held_out = build_cell(cell.benchmark, base.tokenizer, cell.length)
        enc = encode(records, base.tokenizer, cell.prompt, max_length=base.context_length)
        held = encode(held_out, base.tokenizer, cell.prompt, max_length=base.context_length) if held_out else None
        losses = base_answer_losses(base, enc)            # L_base: once per memory, no adapter attached
        adapter = make_adapter(cell.adapter, base, seed=cell.seed)
        bits = value_bits_cell(cell.benchmark, base.tokenizer, records)
    except MemlawError as e:
        return failed(cell, e)
    return _Prepared(cell, enc, held, losses, adapter, t0, time.perf_counter() - t0, bits)


def failed(cell: CellConfig, error: MemlawError) -> CellResult:
    """The stored row of a cell that could not be run or whose write failed (its error, no metrics)."""
    logger.warning("cell %s failed: %s", cell.key[:12], error)
    return CellResult(cell.key, cell, "failed", versions=versions(), error=str(error))


class ProbsKeeper:
    """The `on_check` callback that keeps p_t at the checks `token_probs` asks for (see `run_cell`)."""

    def __init__(self, token_probs: bool | int):
        self.every = probs_interval(token_probs)
        self.kept: list[tuple[int, int, bytes]] = []
        self.pending: list[tuple[int, dict[int, TokenProbs]]] = []     # the latest check not kept (yet)

    def __call__(self, step: int, probs: dict[int, TokenProbs]) -> None:
        self.pending[:] = [(step, probs)]
        if not self.kept or step - self.kept[-1][0] >= self.every:
            self.kept.extend(_probs_rows(*self.pending.pop()))

    def rows(self) -> list[tuple[int, int, bytes]]:
        if self.pending:                                     # the final p_t is always kept
            self.kept.extend(_probs_rows(*self.pending.pop()))
        return self.kept


def cell_result(prep: _Prepared, base, trained, measured: Measured, keeper: ProbsKeeper, *, wall_s: float,
                stacked: int | None = None) -> CellResult:
    """The stored row of a trained and verified cell (with held-out EM and locality where measured).

    Bits are counted under the benchmark's generator (`prep.bits`): exact where it is known."""
    checked, held = measured.verification, measured.held_out
    if prep.bits is not None:
        checked = dataclasses.replace(checked, bits=prep.bits)
    metrics = {
        **checked.summary(),
        "steps": trained.steps, "certified_all": trained.certified, "write_s": trained.wall_s,
        "steps_per_s": trained.steps_per_s, "time_to_certified": trained.time_to_certified,
        "wall_s": wall_s,
        "dtype": str(base.dtype).removeprefix("torch."), "device": str(base.device),
        **({"threads": torch.get_num_threads()} if base.device.type == "cpu" else {}),  # CPU numerics depend on it
        "history": [{k: v for k, v in h.items() if k != "elapsed"} for h in trained.history],
        "records": record_columns(checked),
    }
    if held is not None:
        h = held.summary()
        metrics["held_out"] = {k: h[k] for k in ("n_records", "em", "em_rate", "free_acc", "tf_acc")}
    if measured.locality is not None:
        local = measured.locality.summary()
        metrics["locality_s"] = local.pop("wall_s")
        metrics["locality"] = local
    if stacked is not None:
        metrics["stacked"] = stacked                # trained in one pass with stacked - 1 other cells
    return CellResult(prep.cell.key, prep.cell, "done", metrics, versions(), keeper.rows())


def _probs_rows(step: int, probs: dict[int, TokenProbs]) -> list[tuple[int, int, bytes]]:
    return [(step, i, probs[i].p.to(torch.float16).numpy().tobytes()) for i in sorted(probs)]


RECORD_COLUMNS = ("n_value", "n_terminator", "certified", "em", "first_failure", "earliest_stubborn", "stubborn",
                  "min_p", "tf_correct", "free_correct", "loss_final", "loss_base")
"""Per-record verdict fields kept in `metrics["records"]` (positions are 0-based answer positions)."""


def record_columns(checked) -> dict[str, list]:
    """Every record's verdict, one list per field in record order (compact JSON for `memlaw.analysis`).

    Positions and counts only: no key, no value, no greedy output (values may be secrets).
    """
    def plain(x):
        return round(x, 6) if isinstance(x, float) else x

    return {name: [plain(getattr(v, name)) for v in checked.records] for name in RECORD_COLUMNS}


def comparable(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics without the timing ones: equal across two runs of one cell on one kind of device."""
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


__all__ = ["CellResult", "run_cell", "run_group", "prepare_cell", "cell_result", "failed", "ProbsKeeper", "cell_records",
           "versions", "comparable", "TIMING_KEYS", "record_columns", "probs_interval",
           "RECORD_COLUMNS"]
