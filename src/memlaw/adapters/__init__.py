"""Adapters: one interface (attach, detach, parameters, save, load) over two kinds, picked from a dict.

An adapter directory holds `memlaw.json` (what was written, onto which base, how prompts render)
plus the tensors (`adapter.safetensors` for `probe`, a plain PEFT adapter for `lora`) and, unless
asked not to, `records.jsonl`. It is written atomically; loading checks the base model's
fingerprint and the tensors' sha256 (integrity), and never unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Protocol

import torch

from memlaw.adapters.lora import LoraAdapter
from memlaw.adapters.probe import ProbeAdapter, default_layer
from memlaw.config import AdapterConfig, PromptConfig
from memlaw.errors import AdapterError
from memlaw.fileio import atomic_dir
from memlaw.records import Record, load_records, records_sha256, write_records

META = "memlaw.json"
RECORDS = "records.jsonl"
FORMAT_VERSION = 1


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
    if cfg.kind == "probe":
        layer = cfg.layer if cfg.layer is not None else default_layer(base.n_layers, base.family)
        if layer >= base.n_layers:
            raise AdapterError(f"layer {layer} does not exist: the model has {base.n_layers} layers (0..{base.n_layers - 1})")
        gen = torch.Generator().manual_seed(seed)
        dropout = cfg.dropout if cfg.dropout is not None else 0.1
        return ProbeAdapter(base.hidden_size, cfg.rank, layer, dropout, generator=gen)
    return LoraAdapter(cfg.rank, alpha=cfg.lora_alpha, dropout=cfg.dropout or 0.0,
                       targets=cfg.lora_targets, layers=cfg.lora_layers, seed=seed)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_adapter(out: str | Path, adapter: Adapter, base, *, prompt: PromptConfig, terminator: list[int],
                 records: list[Record], save_records: bool = True, extra: dict[str, Any] | None = None) -> Path:
    """Write the adapter directory atomically: the previous complete directory or the new one, never torn."""
    out = Path(out)
    with atomic_dir(out) as tmp:
        files = adapter.save_tensors(tmp)
        if save_records:
            write_records(tmp / RECORDS, records)
        meta = {
            "format": FORMAT_VERSION,
            "kind": adapter.kind,
            "rank": adapter.rank,
            **adapter.meta(),
            "base_model": {"name": base.name, "fingerprint": base.fingerprint, "family": base.family},
            "prompt": {"template": prompt.template, "system": prompt.system, "format": prompt.format},
            "terminator_ids": list(terminator),
            "dtype": str(base.dtype).removeprefix("torch."),
            "n_params": adapter.n_params(),
            "n_records": len(records),
            "records_sha256": records_sha256(records),
            "records_saved": save_records,
            "tensors_sha256": {f: sha256_file(tmp / f) for f in files},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **(extra or {}),
        }
        (tmp / META).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def read_meta(directory: str | Path) -> dict:
    """Read and check `memlaw.json`; `AdapterError` naming the file and the cause otherwise."""
    directory = Path(directory)
    path = directory / META
    if not directory.is_dir():
        raise AdapterError(f"{directory}: not an adapter directory (it does not exist)")
    if not path.is_file():
        raise AdapterError(f"{path}: missing; {directory} is not a memlaw adapter directory")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterError(f"{path}: not valid JSON ({e})") from None
    required = {"kind": str, "rank": int, "base_model": dict, "prompt": dict, "terminator_ids": list,
                "tensors_sha256": dict, "dtype": str}
    for key, typ in required.items():
        if not isinstance(meta.get(key), typ):
            raise AdapterError(f"{path}: field {key!r} missing or not a {typ.__name__}")
    if meta["kind"] not in ("probe", "lora"):
        raise AdapterError(f"{path}: unknown adapter kind {meta['kind']!r} (expected 'probe' or 'lora')")
    return meta


def check_integrity(directory: str | Path, meta: dict) -> list[str]:
    """Files whose sha256 differs from `memlaw.json` (tampered or torn), or that are missing."""
    directory = Path(directory)
    bad = []
    for name, digest in meta["tensors_sha256"].items():
        p = directory / name
        if not p.is_file() or sha256_file(p) != digest:
            bad.append(name)
    return bad


def load_adapter(directory: str | Path, base, *, check: bool = True) -> tuple[Adapter, dict]:
    """Load an adapter directory onto `base` (unattached) and return it with its metadata.

    Raises:
        AdapterError: missing or malformed files, tensors whose sha256 does not match, or a base
            model whose fingerprint differs from the one the adapter was written on.
    """
    directory = Path(directory)
    meta = read_meta(directory)
    want = meta["base_model"].get("fingerprint")
    if want != base.fingerprint:
        raise AdapterError(f"{directory}: written on base model {meta['base_model'].get('name')!r} "
                           f"(fingerprint {str(want)[:12]}), refusing to load onto {base.name!r} "
                           f"(fingerprint {base.fingerprint[:12]})")
    if check and (bad := check_integrity(directory, meta)):
        raise AdapterError(f"{directory}: {', '.join(bad)} does not match the sha256 in {META} (tampered or torn)")
    cfg = AdapterConfig(kind=meta["kind"], rank=meta["rank"], layer=meta.get("layer"), dropout=0.0,
                        lora_alpha=meta.get("alpha"), lora_targets=_targets(meta), lora_layers=_layers(meta))
    adapter = make_adapter(cfg, base)
    try:
        adapter.load_tensors(directory)
    except AdapterError:
        raise
    except Exception as e:  # safetensors raises its own errors on truncated files
        raise AdapterError(f"{directory}: cannot read the adapter tensors ({type(e).__name__}: {e})") from None
    return adapter, meta


def load_saved_records(directory: str | Path) -> list[Record]:
    path = Path(directory) / RECORDS
    if not path.is_file():
        raise AdapterError(f"{directory}: no {RECORDS} (written with --no-records); pass the records file")
    return load_records(path)


def _targets(meta: dict):
    t = meta.get("targets", "all-linear")
    return tuple(t) if isinstance(t, list) else t


def _layers(meta: dict):
    layers = meta.get("layers")
    return tuple(layers) if layers else None


__all__ = ["Adapter", "ProbeAdapter", "LoraAdapter", "make_adapter", "save_adapter", "load_adapter", "read_meta",
           "check_integrity", "load_saved_records", "default_layer"]
