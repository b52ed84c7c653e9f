"""The paper's main table: SFT vs MemFT-OT vs MemFT-SW on one benchmark, over ranks × lengths.

Every cell is one write + verify at the *same optimizer-step budget* (`steps`), with the base model
resident across cells and L_base computed once per memory. What each row means per benchmark (the
paper's choice of MemFT-SW mechanism, reference_method §4):

| benchmark    | length means              | MemFT-SW                        | cell                          |
|--------------|---------------------------|---------------------------------|-------------------------------|
| phonebook    | PB<N>: N value tokens     | prefix curriculum (`-curriculum`)| EM                           |
| long-context | ℓ, first tokens of the doc| spatial window (`memft-sw`)     | free-run token accuracy       |
| linear-rule  | training pairs            | prefix curriculum (a key set)   | memory EM / generalization EM |

The paper does not say which MemFT the linear-rule table used; a set of short keyed records is
PhoneBook's shape, so SW there is the curriculum. Rows are plain dicts (JSON-ready): the cell's
config, its hash (`cell_id`), the full verification summary and the training history.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from memlaw.adapters import make_adapter
from memlaw.config import AdapterConfig, ObjectiveConfig, PromptConfig, TrainConfig, _nearest, to_dict
from memlaw.encode import Encoded, encode
from memlaw.errors import ConfigError
from memlaw.records import Record
from memlaw.train import StepCallback, TrainResult, write
from memlaw.verify import Verification, base_answer_losses, verify

logger = logging.getLogger(__name__)

BENCHMARKS = ("phonebook", "long-context", "linear-rule")
METHODS = ("SFT", "MemFT-OT", "MemFT-SW")
OBJECTIVES: dict[str, dict[str, str]] = {
    "phonebook": {"SFT": "sft", "MemFT-OT": "memft-ot", "MemFT-SW": "memft-sw-curriculum"},
    "long-context": {"SFT": "sft", "MemFT-OT": "memft-ot", "MemFT-SW": "memft-sw"},
    "linear-rule": {"SFT": "sft", "MemFT-OT": "memft-ot", "MemFT-SW": "memft-sw-curriculum"},
}
CELL_METRIC = {"phonebook": "EM %", "long-context": "free-run token accuracy %",
               "linear-rule": "memory EM % / generalization EM %"}
DEFAULT_LENGTHS = {"phonebook": (160,), "long-context": (200,), "linear-rule": (100,)}


@dataclass(frozen=True, kw_only=True)
class MethodsGrid:
    benchmark: str
    """`phonebook`, `long-context` or `linear-rule`."""
    ranks: tuple[int, ...] = (4,)
    lengths: tuple[int, ...] | None = None
    """PhoneBook: N value tokens (PB<N>); long-context: ℓ tokens; linear-rule: training pairs. None: a default."""
    methods: tuple[str, ...] = METHODS
    steps: int = 300
    """Optimizer steps per cell, the same for every method (curriculum skip steps count, as in the paper)."""
    lr: float = 1e-2
    batch_size: int = 16
    """Records per step, capped at the memory's size (long-context: 1)."""
    adapter: str = "probe"
    layer: int | None = None
    ratio: str = "r100"
    """Long-context: r0, r20, …, r100."""
    source: str = "own"
    """Long-context: `own` (built in the model's token space from the paper's r0 text) or `paper` (the files)."""
    held_out: int = 100
    """Linear rule: held-out pairs for generalization."""
    seed: int = 0
    prompt: PromptConfig = field(default_factory=PromptConfig)
    check_every: int | None = None
    """Certificate checks (training history) every k steps; None: steps // 10."""

    def __post_init__(self) -> None:
        problems = []
        if self.benchmark not in BENCHMARKS:
            problems.append(f"benchmark must be one of {', '.join(BENCHMARKS)}; got {self.benchmark!r}"
                            f"{_nearest(self.benchmark, BENCHMARKS)}")
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            problems.append(f"methods must be among {', '.join(METHODS)}; got {', '.join(bad) or 'none'}")
        if not self.ranks or any(r < 1 for r in self.ranks):
            problems.append(f"ranks must be >= 1, got {list(self.ranks)}")
        if self.lengths is not None and (not self.lengths or any(n < 1 for n in self.lengths)):
            problems.append(f"lengths must be >= 1, got {list(self.lengths)}")
        if self.steps < 1:
            problems.append(f"steps must be >= 1, got {self.steps}")
        if self.source not in ("own", "paper"):
            problems.append(f"source must be 'own' or 'paper', got {self.source!r}")
        if problems:
            raise ConfigError("bench methods: " + "; ".join(problems))

    @property
    def grid_lengths(self) -> tuple[int, ...]:
        return self.lengths if self.lengths is not None else DEFAULT_LENGTHS[self.benchmark]


def benchmark_records(grid: MethodsGrid, tokenizer, length: int) -> tuple[list[Record], list[Record], dict]:
    """(records to write, held-out records, facts about them) for one length of the grid."""
    from memlaw.benchmarks.linear_rule import linear_rule
    from memlaw.benchmarks.long_context import document, prefix_value
    from memlaw.benchmarks.phonebook import phonebook_length

    if grid.benchmark == "phonebook":
        return phonebook_length(tokenizer, length), [], {}
    if grid.benchmark == "long-context":
        doc = document(tokenizer, grid.ratio, source=grid.source, seed=grid.seed)
        return [Record(doc.question, prefix_value(tokenizer, doc.text, length))], [], {"document": doc.source}
    split = linear_rule(length, grid.held_out, seed=grid.seed)
    return split.train, split.held_out, {"range": [split.low, split.high]}


@dataclass
class EncodedMemory:
    """One length of the grid in token space, with L_base: built once, shared by all its cells."""

    enc: Encoded
    base_losses: list[tuple[float, float]]
    held_out: Encoded | None = None


def encode_memory(base, records: list[Record], held_out: list[Record], prompt: PromptConfig) -> EncodedMemory:
    tok, n = base.tokenizer, base.context_length
    enc = encode(records, tok, prompt, max_length=n)
    held = encode(held_out, tok, prompt, max_length=n) if held_out else None
    return EncodedMemory(enc, base_answer_losses(base, enc), held)


def cell_configs(grid: MethodsGrid, method: str, rank: int, n_records: int) -> dict:
    """The adapter, objective, train and prompt configs of one cell."""
    batch = 1 if grid.benchmark == "long-context" else min(grid.batch_size, n_records)
    return {
        "adapter": AdapterConfig(kind=grid.adapter, rank=rank, layer=grid.layer),
        "objective": ObjectiveConfig(name=OBJECTIVES[grid.benchmark][method]),
        "train": TrainConfig(lr=grid.lr, batch_size=batch, max_steps=grid.steps, until="budget", seed=grid.seed,
                             check_every=grid.check_every or max(1, grid.steps // 10)),
        "prompt": grid.prompt,
    }


def cell_key(grid: MethodsGrid, base, method: str, rank: int, length: int, configs: dict) -> dict:
    """Everything that determines a cell's result (its hash is the cell id)."""
    key = {"benchmark": grid.benchmark, "method": method, "rank": rank, "length": length,
           "model": base.name, "model_fingerprint": base.fingerprint, "dtype": str(base.dtype).removeprefix("torch."),
           **{k: to_dict(v) for k, v in configs.items()}}
    if grid.benchmark == "long-context":
        key.update(ratio=grid.ratio, source=grid.source)
    if grid.benchmark == "linear-rule":
        key.update(held_out=grid.held_out)
    return key


def cell_id(key: Mapping) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def write_cell(base, memory: EncodedMemory, configs: dict, *, on_step: StepCallback | None = None
               ) -> tuple[TrainResult, Verification, Verification | None]:
    """One write + verify on a resident base (as `write_memory`, plus greedy EM on held-out records).

    The adapter stays attached between training and the held-out pass, and is detached before return.
    """
    train_cfg: TrainConfig = configs["train"]
    adapter = make_adapter(configs["adapter"], base, seed=train_cfg.seed)
    adapter.attach(base)
    try:
        result = write(base, adapter, memory.enc, configs["objective"], train_cfg, on_step=on_step)
        checked = verify(base, adapter, memory.enc, recall=True, margin=train_cfg.margin,
                         base_losses=memory.base_losses)
        held = verify(base, adapter, memory.held_out, recall=True) if memory.held_out is not None else None
    finally:
        adapter.detach()
    return result, checked, held


def score(row: Mapping) -> float | tuple[float, float]:
    """The table's number for a row: EM rate, free-run token accuracy, or (memory EM, generalization EM)."""
    m = row["metrics"]
    if row["benchmark"] == "phonebook":
        return m["em_rate"]
    if row["benchmark"] == "long-context":
        return m["free_acc"]
    return m["em_rate"], row["generalization"]["em_rate"]


def run_methods(grid: MethodsGrid, base, *, done: Mapping[str, dict] | None = None,
                on_cell: Callable[[dict, int, int], None] | None = None,
                on_step: StepCallback | None = None) -> list[dict]:
    """Run every cell of `grid` (lengths × ranks × methods) on the resident `base`; rows in grid order.

    Args:
        grid: the benchmark, ranks, lengths, methods and budget.
        base: a loaded `BaseModel`, kept resident across cells.
        done: rows already measured, by `cell_id`; those cells are not run again and their rows returned.
        on_cell: called with (row, index, total) after each cell runs (persist it, print a line).
        on_step: progress callback inside each write.
    """
    done = dict(done or {})
    total = len(grid.grid_lengths) * len(grid.ranks) * len(grid.methods)
    rows: list[dict] = []
    versions = {p: version(p) for p in ("memlaw", "torch", "transformers")}
    for length in grid.grid_lengths:
        records, held_out, info = benchmark_records(grid, base.tokenizer, length)
        memory: EncodedMemory | None = None
        for rank in grid.ranks:
            for method in grid.methods:
                configs = cell_configs(grid, method, rank, len(records))
                key = cell_key(grid, base, method, rank, length, configs)
                cid = cell_id(key)
                if cid in done:
                    rows.append(done[cid])
                    continue
                t0 = time.perf_counter()
                if memory is None:  # encoded lazily: a fully resumed length costs no forward pass
                    memory = encode_memory(base, records, held_out, grid.prompt)
                result, checked, held = write_cell(base, memory, configs, on_step=on_step)
                row = {
                    "cell_id": cid, **{k: key[k] for k in ("benchmark", "method", "rank", "length", "model")},
                    "objective": configs["objective"].name, "steps": result.steps,
                    "score": None, "metrics": checked.summary(),
                    "generalization": held.summary() if held is not None else None,
                    "train": {"steps": result.steps, "wall_s": round(result.wall_s, 3),
                              "certified": result.certified, "time_to_certified": result.time_to_certified,
                              "history": result.history},
                    "memory": info, "wall_s": round(time.perf_counter() - t0, 3),
                    "config": key, "versions": versions,
                }
                row["score"] = score(row)
                rows.append(row)
                logger.info("cell %d/%d %s r%d length %d: %s", len(rows), total, method, rank, length, row["score"])
                if on_cell is not None:
                    on_cell(row, len(rows), total)
    return rows


# ---- the table and the JSONL file ----

def column_label(row: Mapping, rows: Sequence[Mapping]) -> str:
    """"r4", "ℓ200" or "r4 ℓ200": only what varies across `rows`."""
    ranks, lengths = {r["rank"] for r in rows}, {r["length"] for r in rows}
    parts = []
    if len(ranks) > 1 or len(lengths) == 1:
        parts.append(f"r{row['rank']}")
    if len(lengths) > 1:
        parts.append(f"ℓ{row['length']}")
    return " ".join(parts)


def table(rows: Sequence[Mapping]) -> tuple[list[str], dict[str, dict[str, float | tuple[float, float]]]]:
    """(column labels in grid order, {method: {label: score}}): the paper's layout, methods as rows."""
    columns: list[str] = []
    cells: dict[str, dict] = {}
    for row in rows:
        label = column_label(row, rows)
        if label not in columns:
            columns.append(label)
        cells.setdefault(row["method"], {})[label] = row["score"]
    return columns, {m: cells[m] for m in METHODS if m in cells}


def format_score(value: float | Sequence[float] | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return " / ".join(f"{100 * v:.1f}" for v in value)
    return f"{100 * value:.1f}"


def read_rows(path: str | os.PathLike) -> dict[str, dict]:
    """Rows of a JSONL results file by `cell_id` (a torn last line from a crash is skipped)."""
    path = Path(path)
    if not path.exists():
        return {}
    rows = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            row = json.loads(line)
            rows[row["cell_id"]] = row
        except (json.JSONDecodeError, KeyError, TypeError):
            logger.warning("%s:%d: not a results row; skipped", path, n)
    return rows


def append_row(path: str | os.PathLike, row: Mapping) -> None:
    """Append one row as a JSON line, flushed and fsynced (a crash loses at most the cell running)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


__all__ = ["BENCHMARKS", "METHODS", "OBJECTIVES", "CELL_METRIC", "MethodsGrid", "benchmark_records", "EncodedMemory",
           "encode_memory",
           "cell_configs", "cell_id", "write_cell", "score", "run_methods", "table", "format_score",
           "read_rows", "append_row"]
