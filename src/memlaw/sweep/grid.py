"""A sweep grid: YAML -> `SweepConfig` -> the list of `CellConfig`s it expands to. Pure, no I/O but the YAML read.

A cell is one write + verify: one model, one benchmark memory of `length` value tokens, one adapter
rank, one objective, one seed. Cells equal but for rank, length and seed form one *experiment*
(`CellConfig.experiment_key`): the unit a law is fitted to and seeds are averaged over. Its key is the sha256 of its canonical JSON, so the same cell gets
the same key in any sweep that contains it, and a store that has the key has the result.

    name: smollm2-phonebook
    model: smollm2-135m
    benchmark: {name: phonebook}       # or benchmarks: [{name: long-context, ratio: r100}, ...]
    ranks: [1, 2, 4, 8]
    lengths: [40, 80, 160, 320]        # value tokens (ℓ), not entries
    seeds: [0]
    adapter: {kind: probe}             # rank comes from `ranks`
    objective: {name: sft}             # or objectives: [{name: sft}, {name: memft-ot}, ...]
    train: {lr: 0.01, batch_size: 16, epochs: 200}
    prompt: {template: chat}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from memlaw.config import (AdapterConfig, BenchmarkConfig, ObjectiveConfig, PromptConfig, TrainConfig, from_dict,
                           to_dict)
from memlaw.errors import ConfigError
from memlaw.fileio import load_yaml
from memlaw.validation import collect, int_problem, shown

DTYPES = ("auto", "bfloat16", "bf16", "float32", "fp32")


@dataclass(frozen=True, kw_only=True)
class CellConfig:
    """Everything that decides one cell's numbers, and nothing else (its key hashes exactly this)."""

    model: str
    """Base model: smollm2-135m, gemma3-270m, tiny, a hub id or a local directory."""
    dtype: str = "auto"
    """Base model dtype: auto, bfloat16 or float32."""
    benchmark: BenchmarkConfig
    length: int
    """ℓ: value tokens of the memory, summed over its records (terminator excluded)."""
    adapter: AdapterConfig
    objective: ObjectiveConfig
    train: TrainConfig
    """`train.seed` is the cell's seed."""
    prompt: PromptConfig

    @property
    def seed(self) -> int:
        return self.train.seed

    @property
    def rank(self) -> int:
        return self.adapter.rank

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def key_dict(self) -> dict[str, Any]:
        """What identifies the cell: every field (a `records` file by its sha256, not its path; the
        curriculum's settings only where the objective is the curriculum; training settings added
        later only where they differ from their old value, `TrainConfig.KEY_SINCE`)."""
        return {**self.to_dict(), "benchmark": self.benchmark.key_dict(), "objective": self.objective.key_dict(),
                "train": self.train.key_dict()}

    def canonical_json(self) -> str:
        """Sorted keys, no whitespace, floats as Python writes them: the bytes the key hashes."""
        return json.dumps(self.key_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def experiment(self) -> dict[str, Any]:
        """The cell's identity without rank, length and seed: cells with equal ones are one experiment
        (one law fit, one group of seeds, one stackable group)."""
        d = self.key_dict()
        d.pop("length")
        d["adapter"].pop("rank")
        d["train"].pop("seed")
        return d

    @property
    def experiment_key(self) -> str:
        """sha256 hex of the canonical JSON of `experiment()`."""
        text = json.dumps(self.experiment(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    @property
    def key(self) -> str:
        """sha256 hex of the canonical JSON."""
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CellConfig:
        """Rebuild a cell from its JSON (as stored); the key comes out the same."""
        data = dict(data)
        parts = {"benchmark": BenchmarkConfig, "adapter": AdapterConfig, "objective": ObjectiveConfig,
                 "train": TrainConfig, "prompt": PromptConfig}
        for name, part in parts.items():
            data[name] = _floats(from_dict(part, data.get(name), f"cell.{name}"))
        return from_dict(cls, data, "cell")


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """A grid: benchmarks × lengths × ranks × seeds × objectives over one model, adapter kind and budget.

    YAML takes `benchmark:` (one mapping) or `benchmarks:` (a list), and `objective:` or `objectives:`.
    """

    name: str
    """Written into each row's `sweep` column (the first sweep that ran the cell)."""
    model: str
    dtype: str = "auto"
    benchmarks: tuple[BenchmarkConfig, ...] = (BenchmarkConfig(),)
    """The memories: each benchmark with its own options (e.g. long-context at several noise ratios)."""
    ranks: tuple[int, ...]
    lengths: tuple[int, ...]
    """ℓ values in value tokens (PhoneBook: entries × tokens per value under the model's tokenizer)."""
    seeds: tuple[int, ...] = (0,)
    adapter: AdapterConfig = AdapterConfig()
    """Everything but `rank`, which comes from `ranks`."""
    objectives: tuple[ObjectiveConfig, ...] = (ObjectiveConfig(),)
    """The objectives compared (e.g. sft, memft-ot, memft-sw-curriculum), each on every memory."""
    train: TrainConfig
    """Optimizer and budget (`max_steps` or `epochs`, `until`); `seed` comes from `seeds`."""
    prompt: PromptConfig = PromptConfig()
    token_probs: bool | int = False
    """Keep every record's p_t at certificate checks (side table `token_probs`, float16): true at every
    check, N at checks at least N steps apart; the last check (final p_t) is always kept. Not in the key."""
    locality: bool = True
    """Measure what each cell's adapter costs the base model on neutral prompts (`memlaw.locality`:
    greedy agreement and KL), stored as `metrics["locality"]`. Not in the key: a metric, not a setting."""
    stack: int = 1
    """Train up to this many `probe` cells together, one forward pass per step over the shared base
    (`ProbeStack` + `write_many`), each then verified and stored alone; 1: one cell at a time. Cells
    that differ only in rank, length and seed are stacked. Not in the key: a stacked cell's row is
    the row of its separate run up to floating-point effects of the batch shape, with `stacked: K`
    in its metrics. Used by the local executor. Off by default: alone, a cell's numbers are
    bit-reproducible; stacked, they depend in the last bits on which cells share its pass (a
    resumed sweep may group differently), and a crash loses the group's unfinished training."""

    def __post_init__(self) -> None:
        problems = collect(int_problem("stack", self.stack, lo=1))
        if not isinstance(self.locality, bool):
            problems.append(f"locality must be true or false, got {shown(self.locality)}")
        for axis in ("benchmarks", "objectives"):
            values = getattr(self, axis)
            if not isinstance(values, tuple) or not values:
                problems.append(f"{axis} must be a non-empty list")
            elif len(set(values)) != len(values):
                problems.append(f"{axis} has repeated entries")
        for axis in ("ranks", "lengths", "seeds"):
            values = getattr(self, axis)
            if not isinstance(values, tuple) or not values:
                problems.append(f"{axis} must be a non-empty list" + ("" if values == () else f", got {shown(values)}"))
            elif any(not isinstance(v, int) or isinstance(v, bool) for v in values):
                problems.append(f"{axis} must be integers, got {shown(list(values))}")
            elif len(set(values)) != len(values):
                repeated = sorted(v for v in set(values) if values.count(v) > 1)
                problems.append(f"{axis} has repeated values: {shown(repeated)}")
            elif axis != "seeds" and min(values) < 1:
                problems.append(f"{axis} must be >= 1, got {shown(list(values))}")
        if not self.name or not isinstance(self.name, str):
            problems.append("name must be a non-empty string")
        if not self.model or not isinstance(self.model, str):
            problems.append("model must be a non-empty string (an embedded name, a hub id or a directory)")
        try:
            probs_interval(self.token_probs)
        except ConfigError as e:
            problems.append(str(e))
        if self.dtype not in DTYPES:
            problems.append(f"dtype must be one of {', '.join(DTYPES)}, got {shown(self.dtype)}")
        if problems:
            raise ConfigError("sweep: " + "; ".join(problems))

    def cells(self) -> list[CellConfig]:
        """The grid: one benchmark after another (each a complete experiment before the next starts),
        within it the smallest lengths first (cheap cells first, so a partial sweep already fits a
        law), then ranks and seeds; the objectives of one memory, rank and seed run side by side."""
        return [CellConfig(model=self.model, dtype=self.dtype, benchmark=bench, length=length,
                           adapter=dataclasses.replace(self.adapter, rank=rank),
                           objective=objective,
                           train=dataclasses.replace(self.train, seed=seed).for_kind(self.adapter.kind),
                           prompt=self.prompt)
                for bench in self.benchmarks for length in sorted(self.lengths) for rank in sorted(self.ranks)
                for seed in sorted(self.seeds) for objective in self.objectives]


def probs_interval(token_probs: bool | int) -> int:
    """Steps between kept p_t checks: 0 (keep none), 1 (every check) or N (see `run_cell`)."""
    if isinstance(token_probs, bool):
        return int(token_probs)
    if not isinstance(token_probs, int) or token_probs < 1:
        raise ConfigError(f"token_probs must be true, false or an interval in steps >= 1, got {shown(token_probs)}")
    return token_probs


def stack_groups(cells: list[CellConfig], size: int) -> list[list[CellConfig]]:
    """Split `cells` (in order) into groups of at most `size` that may train in one pass.

    Only `probe` cells stack, and only with cells of the same experiment (equal in everything but
    rank, length and seed: model, dtype, layer, dropout, objective, training settings, prompt,
    benchmark); each group
    takes the next cells of its kind in order, so cells of similar cost train together.
    """
    if size <= 1:
        return [[c] for c in cells]
    groups: list[list[CellConfig]] = []
    open_group: dict[str, list[CellConfig]] = {}
    for cell in cells:
        if cell.adapter.kind != "probe":
            groups.append([cell])
            continue
        kind = cell.experiment_key
        group = open_group.get(kind)
        if group is None or len(group) == size:
            group = open_group[kind] = []
            groups.append(group)
        group.append(cell)
    return groups


def sweep_from_dict(data: dict[str, Any], where: str = "sweep") -> SweepConfig:
    """Build a `SweepConfig` from a mapping; unknown keys (at any level) raise ConfigError with the nearest name."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of sweep settings, got {type(data).__name__}")
    data = dict(data)
    adapter = data.get("adapter") or {}
    train = data.get("train") or {}
    if isinstance(adapter, dict) and "rank" in adapter:
        raise ConfigError(f"{where}: adapter.rank is set by `ranks`; remove it")
    if isinstance(train, dict) and "seed" in train:
        raise ConfigError(f"{where}: train.seed is set by `seeds`; remove it")
    for one, many, part in (("benchmark", "benchmarks", BenchmarkConfig), ("objective", "objectives", ObjectiveConfig)):
        if one in data and many in data:
            raise ConfigError(f"{where}: give `{one}` (one mapping) or `{many}` (a list), not both")
        if one in data:
            data[many] = (_part(part, data.pop(one), f"{where}: {one}"),)
        elif many in data:
            if not isinstance(data[many], list) or not data[many]:
                raise ConfigError(f"{where}: {many} must be a non-empty list of mappings, got {shown(data[many])}")
            data[many] = tuple(_part(part, x, f"{where}: {many}[{i}]") for i, x in enumerate(data[many]))
    for name, part in (("adapter", AdapterConfig), ("train", TrainConfig), ("prompt", PromptConfig)):
        if name in data:
            data[name] = _part(part, data[name], f"{where}: {name}")
    if "train" not in data:
        raise ConfigError(f"{where}: missing `train` (a budget: max_steps or epochs)")
    for name in ("name", "model", "ranks", "lengths"):
        if name not in data:
            raise ConfigError(f"{where}: missing `{name}`")
    return from_dict(SweepConfig, data, where)


def _part(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {shown(data)}")
    return _floats(from_dict(cls, data, where))


def load_sweep(path: str | os.PathLike) -> SweepConfig:
    """Read a sweep YAML (safe loader: no code runs). Errors name the file."""
    path = Path(path)
    data = load_yaml(path)
    sweep = sweep_from_dict(data, where=str(path))
    return dataclasses.replace(sweep, benchmarks=tuple(_records_content(b, path) for b in sweep.benchmarks))


def _records_content(bench: BenchmarkConfig, grid: Path) -> BenchmarkConfig:
    """A `records` benchmark with its path resolved (relative to the grid file) and its content's sha256."""
    from memlaw.adapters.directory import sha256_file

    if bench.path is None:
        return bench
    records = Path(bench.path)
    if not records.is_absolute() and not records.exists():
        records = grid.parent / records                  # relative to the grid file
    if not records.is_file():
        raise ConfigError(f"{grid}: benchmark.path {bench.path}: no such file")
    digest = sha256_file(records)
    if bench.sha256 is not None and bench.sha256 != digest:
        raise ConfigError(f"{grid}: benchmark.path {bench.path}: its sha256 is not the one the grid gives")
    return dataclasses.replace(bench, path=str(records), sha256=digest)


def _floats(cfg: Any) -> Any:
    """Coerce ints in float-typed fields (YAML `lr: 1`) to float, so `1` and `1.0` give one key."""
    hints = typing.get_type_hints(type(cfg))
    changes = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, int) and not isinstance(v, bool) and _is_float(hints.get(f.name)):
            changes[f.name] = float(v)
        elif isinstance(v, tuple) and v and all(isinstance(x, int) and not isinstance(x, bool) for x in v) \
                and _is_float_tuple(hints.get(f.name)):
            changes[f.name] = tuple(float(x) for x in v)
    return dataclasses.replace(cfg, **changes) if changes else cfg


def _is_float(hint: Any) -> bool:
    return hint is float or (float in typing.get_args(hint) and int not in typing.get_args(hint))


def _is_float_tuple(hint: Any) -> bool:
    return typing.get_origin(hint) is tuple and typing.get_args(hint)[:1] == (float,)


__all__ = ["BenchmarkConfig", "CellConfig", "SweepConfig", "sweep_from_dict", "load_sweep", "stack_groups",
           "probs_interval"]
