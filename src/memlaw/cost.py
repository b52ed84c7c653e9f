"""What a write will cost, said before it starts, and the adapters that cannot work, refused.

- **Parameters** of an adapter, from the base model's shapes alone: the probe adds one map
  d → r → d (2·d·r); a LoRA adds r·(in + out) to every linear layer it targets.
- **Size**: float32 tensors on disk (4 bytes a parameter); training holds 16 (weights, gradients
  and AdamW's two moments).
- **Time**: the optimizer steps of the budget (the cap under `until="certified"`) times one step of
  this very write, measured just now on one batch of its records with a throwaway adapter (the real
  loop: `train.write`, three steps, the second timed), plus the certificate checks (a forward pass over
  every record every `check_every` steps, taken as a third of a training step per batch). A rough
  figure: it holds for this machine's load at the moment it was measured.

Refused (`ConfigError`), because no budget can help: a rank above the smallest dimension of a map
the adapter adds (the probe: the hidden size; a rank-r product of a d-dimensional map has rank at
most d), and training state larger than the device's memory.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass

from memlaw.config import AdapterConfig, ObjectiveConfig, TrainConfig
from memlaw.errors import ConfigError
from memlaw.curriculum import write_steps

TRAIN_BYTES_PER_PARAM = 16   # float32 weights, gradients, AdamW first and second moments


@dataclass(frozen=True)
class Cost:
    """What one write costs: `seconds` is None when it was not measured."""

    n_params: int
    steps: int                  # the budget: optimizer steps at most
    n_records: int
    step_s: float | None = None
    seconds: float | None = None

    @property
    def adapter_bytes(self) -> int:
        """Tensors on disk (float32); memlaw.json and records.jsonl add a few kB and the records' size."""
        return 4 * self.n_params

    @property
    def train_bytes(self) -> int:
        return TRAIN_BYTES_PER_PARAM * self.n_params

    def line(self) -> str:
        """One line for stderr: parameters, size on disk, budget and the estimated time."""
        text = (f"cost: {self.n_params:,} trainable parameters ({_size(self.adapter_bytes)} on disk, float32), "
                f"at most {self.steps:,} optimizer steps over {self.n_records:,} records")
        if self.seconds is not None:
            text += f"; {_about(self.seconds)} at most (one step took {self.step_s:.3g} s just now)"
        return text

    def to_dict(self) -> dict:
        return {"n_params": self.n_params, "adapter_bytes": self.adapter_bytes, "train_bytes": self.train_bytes,
                "steps": self.steps, "n_records": self.n_records, "step_s": self.step_s, "seconds": self.seconds}


def adapter_maps(cfg: AdapterConfig, base) -> list[tuple[str, int, int]]:
    """(name, in, out) of every map the adapter adds to `base`: one for the probe, one per targeted linear for LoRA."""
    import torch

    if cfg.kind == "probe":
        return [("probe", base.hidden_size, base.hidden_size)]
    maps = []
    for i, layer in enumerate(base.layers):
        if cfg.lora_layers is not None and i not in cfg.lora_layers:
            continue
        for name, mod in layer.named_modules():
            if ".lora_" in f".{name}":                       # a LoRA already attached: its own linears
                continue
            name = name.replace(".base_layer", "")            # the layer a LoRA wraps counts as itself
            if isinstance(mod, torch.nn.Linear) and _targeted(name, cfg.lora_targets):
                maps.append((f"layers.{i}.{name}", mod.in_features, mod.out_features))
    return maps


def _targeted(name: str, targets: tuple[str, ...] | str) -> bool:
    """PEFT's rule: "all-linear" takes every linear (of the decoder layers: the LM head is not one); another
    string is a regular expression the full module name must match; a list names module-name suffixes."""
    if targets == "all-linear":
        return True
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith(f".{t}") for t in targets)


def n_params(cfg: AdapterConfig, base) -> int:
    """Trainable parameters of the adapter `cfg` on `base` (rank r adds r·(in + out) to each map)."""
    return sum(cfg.rank * (n_in + n_out) for _, n_in, n_out in adapter_maps(cfg, base))


def check_feasible(cfg: AdapterConfig, base, *, memory_bytes: int | None = None) -> None:
    """Refuse an adapter that no budget can make work.

    Raises:
        ConfigError: no map to adapt (LoRA targets that match nothing), a rank above the smallest
            dimension of a map, or training state (16 bytes a parameter) above `memory_bytes`
            (default: the device's memory).
    """
    maps = adapter_maps(cfg, base)
    if not maps:
        raise ConfigError(f"adapter: lora_targets {cfg.lora_targets!r} match no linear layer of {base.name!r}")
    name, n_in, n_out = min(maps, key=lambda m: min(m[1], m[2]))
    if cfg.rank > min(n_in, n_out):
        what = f"the hidden size {n_in}" if cfg.kind == "probe" else f"{name} ({n_in} -> {n_out})"
        raise ConfigError(f"adapter: rank {cfg.rank} is more than {what}: a rank-{cfg.rank} map in "
                          f"{min(n_in, n_out)} dimensions has rank at most {min(n_in, n_out)}, so the extra rank "
                          f"cannot help; use --rank {min(n_in, n_out)} or less")
    need = TRAIN_BYTES_PER_PARAM * n_params(cfg, base)
    have = device_memory(base.device) if memory_bytes is None else memory_bytes
    if have is not None and need > have:
        raise ConfigError(f"adapter: rank {cfg.rank} gives {need // TRAIN_BYTES_PER_PARAM:,} parameters; training "
                          f"them takes {_size(need)} (float32 weights, gradients and AdamW moments), more than the "
                          f"{_size(have)} of memory on {base.device}; lower --rank")


def device_memory(device) -> int | None:
    """Total memory of `device` in bytes (a CUDA device's, else this machine's RAM), or None if unknown."""
    import torch

    if getattr(device, "type", str(device)).startswith("cuda"):
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def estimate(base, enc, adapter: AdapterConfig, objective: ObjectiveConfig, train: TrainConfig, *,
             measure: bool = True) -> Cost:
    """The cost of writing `enc` with these settings; checks feasibility first (`check_feasible`).

    With `measure`, three real optimizer steps (and one check) on the first batch of records time one
    step, at the cost of about four steps of the write; the adapter used is thrown away and the
    global RNG is reseeded by the write that follows, so the write's numbers do not change.
    """
    check_feasible(adapter, base)
    n = len(enc)
    steps = write_steps(objective, train, n)
    cost = Cost(n_params(adapter, base), steps, n)
    if not measure:
        return cost
    step_s = _time_one_step(base, enc, adapter, objective, train)
    return dataclasses.replace(cost, step_s=step_s, seconds=write_seconds(train, n, step_s, objective))


def write_seconds(train: TrainConfig, n_records: int, step_s: float, objective: ObjectiveConfig | None = None) -> float:
    """The write's steps at `step_s` each, plus a certificate check (a forward pass over every
    record, a third of a training step per batch) every `check_every` steps and at the end."""
    steps = write_steps(objective or ObjectiveConfig(), train, n_records)
    batches = -(-n_records // min(train.batch_size, n_records))
    return steps * step_s + (steps // train.check_every + 1) * batches * step_s / 3


def grid_line(cells: list, base, records_of, *, measure: bool = True) -> str:
    """One line for a sweep's cells still to run, after refusing any that cannot work.

    `records_of(cell)` gives a cell's records. The time is each cell's budget at the step time of
    the largest cell (most records, then highest rank), measured as in `estimate`: an upper bound.
    """
    from memlaw.encode import encode

    for adapter in {c.adapter for c in cells}:
        check_feasible(adapter, base)
    records = {c.key: records_of(c) for c in cells}
    params = [n_params(c.adapter, base) for c in cells]
    steps = sum(write_steps(c.objective, c.train, len(records[c.key])) for c in cells)
    text = (f"cost: {len(cells)} cells, adapters of {min(params):,} to {max(params):,} trainable parameters "
            f"(largest {_size(4 * max(params))} on disk), at most {steps:,} optimizer steps in all")
    if measure:
        big = max(cells, key=lambda c: (len(records[c.key]), c.rank))
        enc = encode(records[big.key], base.tokenizer, big.prompt, max_length=base.context_length)
        one = estimate(base, enc, big.adapter, big.objective, big.train)
        total = sum(write_seconds(c.train, len(records[c.key]), one.step_s, c.objective) for c in cells)
        text += f"; {_about(total)} at most (a step of the largest cell took {one.step_s:.3g} s just now)"
    return text


def _time_one_step(base, enc, adapter: AdapterConfig, objective: ObjectiveConfig, train: TrainConfig) -> float:
    from memlaw.adapters import make_adapter
    from memlaw.encode import Encoded
    from memlaw.engine import attached
    from memlaw.train import write

    k = min(train.batch_size, len(enc))
    sub = Encoded(enc.records[:k], enc.prompt, enc.terminator, enc.prompt_ids[:k], enc.value_ids[:k], enc.tokenizer)
    cfg = dataclasses.replace(train, max_steps=3, epochs=None, until="budget", check_every=3)
    elapsed: dict[int, float] = {}
    with attached(make_adapter(adapter, base, seed=train.seed), base) as ad:
        write(base, ad, sub, objective, cfg, on_step=lambda info: elapsed.setdefault(info.step, info.elapsed))
    return elapsed[2] - elapsed[1]              # step 1 warms up; step 3 carries the certificate check


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _about(s: float) -> str:
    return _duration(s) if s < 1 else f"about {_duration(s)}"


def _duration(s: float) -> str:
    if s < 1:
        return "under a second"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    if s < 3 * 86400:
        return f"{s / 3600:.1f} h"
    if s < 2 * 365 * 86400:
        return f"{s / 86400:.0f} days"
    return f"{s / (365 * 86400):.3g} years"


__all__ = ["Cost", "estimate", "write_seconds", "grid_line", "check_feasible", "adapter_maps", "n_params",
           "device_memory"]
