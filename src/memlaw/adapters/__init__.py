"""Adapters: one interface (attach, detach, parameters, save, load) over two kinds, picked from a dict.

`KINDS` maps each adapter kind (the `AdapterConfig.kind` Literal) to the module that builds it; a new
kind is a module with a `make(cfg, base, seed)` function and one entry here. The directory format
(`memlaw.json`, tensors, records; atomic writes, integrity checks) lives in `adapters.directory`.
torch and peft load lazily: reading and checking a directory needs neither.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

from memlaw.adapters.directory import (META, RECORDS, check_integrity, check_out_dir, load_adapter,
                                       load_saved_records, meta_sha256, read_meta, save_adapter)
from memlaw.config import AdapterConfig

KINDS = {"probe": "memlaw.adapters.probe", "lora": "memlaw.adapters.lora"}
"""Adapter kind -> module with `make(cfg, base, seed) -> Adapter`; the keys are `AdapterConfig.kind`'s values."""


def __getattr__(name: str):
    if name in ("ProbeAdapter", "default_layer"):
        return getattr(importlib.import_module(KINDS["probe"]), name)
    if name == "LoraAdapter":
        return importlib.import_module(KINDS["lora"]).LoraAdapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Adapter(Protocol):
    kind: str
    rank: int

    @property
    def first_layer(self) -> int: ...
    def attach(self, base) -> None: ...
    def detach(self) -> None: ...
    def parameters(self): ...
    def n_params(self) -> int: ...
    def train(self, mode: bool = True): ...
    def eval(self): ...
    def disabled(self): ...
    def save_tensors(self, directory: Path) -> list[str]: ...
    def load_tensors(self, directory: Path) -> None: ...
    def meta(self) -> dict: ...


def make_adapter(cfg: AdapterConfig, base, *, seed: int = 0) -> Adapter:
    """A fresh, unattached adapter of `cfg.kind` for `base`, initialised deterministically from `seed`."""
    return importlib.import_module(KINDS[cfg.kind]).make(cfg, base, seed)


__all__ = ["Adapter", "KINDS", "ProbeAdapter", "LoraAdapter", "make_adapter", "save_adapter", "load_adapter",
           "read_meta", "check_integrity", "check_out_dir", "load_saved_records", "default_layer", "meta_sha256",
           "META", "RECORDS"]
