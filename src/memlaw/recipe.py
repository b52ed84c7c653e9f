"""The settings a memory is written with, and how to run them: a `memlaw write` command, a PEFT or an
axolotl config. Pure (dicts in, text out).

`plan` answers "which rank", but a rank holds only for the settings the sweep measured it under
(budget, learning rate, objective, prompt, dtype, layer). `settings` reads those from the cells'
configs, and `write_command` / `peft_config` / `axolotl_config` turn them, with the planned rank,
into something to run.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from memlaw.config import AdapterConfig, ObjectiveConfig, PromptConfig, TrainConfig, to_dict
from memlaw.model_names import hub_id

FORMATS = ("memlaw", "peft", "axolotl")
VARYING = ("adapter.rank", "train.seed", "length", "benchmark.path")
"""Fields that differ between the cells of one law by design (the grid's axes), so no setting."""
NUMERICS = ("train.check_every", "train.cache_prefix", "train.answer_logits", "train.attention", "train.lora_compute")
"""Settings that change when a run checks or how fast it computes, not what it learns (tested to tolerance)."""
_DEFAULTS = {"adapter": to_dict(AdapterConfig()), "objective": to_dict(ObjectiveConfig()),
             "train": to_dict(TrainConfig(until="certified")), "prompt": to_dict(PromptConfig())}
_FLAGS = {"model": "--model", "dtype": "--dtype", "adapter.kind": "--adapter", "adapter.layer": "--layer",
          "objective.name": "--objective", "train.max_steps": "--max-steps", "train.epochs": "--epochs",
          "train.lr": "--lr", "train.batch_size": "--batch-size", "train.margin": "--margin",
          "prompt.template": "--template"}
"""Settings `memlaw write` has an option for; `train.until` is always `certified` in a planned write."""


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 0.01}} -> {'train.lr': 0.01} (lists kept as values)."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def settings(rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], dict[str, list]]:
    """(the settings every cell shares, {setting: its differing values} for the others), from store rows.

    Rank, seed, length and the records path are the grid's axes and appear in neither.
    """
    flat = [flatten(r["config"]) for r in rows if isinstance(r.get("config"), Mapping)]
    names = sorted({k for f in flat for k in f} - set(VARYING))
    shared, mixed = {}, {}
    for name in names:
        values = []
        for f in flat:
            if f.get(name) not in values:
                values.append(f.get(name))
        if len(values) == 1:
            shared[name] = values[0]
        else:
            mixed[name] = values
    return shared, mixed


def unexpressed(shared: Mapping[str, Any]) -> dict[str, Any]:
    """Shared settings off their defaults that `memlaw write` has no option for (the Python API has)."""
    out = {}
    for name, value in shared.items():
        part, _, field = name.partition(".")
        if name in _FLAGS or name in NUMERICS or name == "train.until" or part not in _DEFAULTS:
            continue
        if _DEFAULTS[part].get(field) != value:
            out[name] = value
    return out


def budget_text(shared: Mapping[str, Any]) -> str:
    """'300 optimizer steps of batches of 16' or '200 epochs in batches of 16' (what the cells trained for)."""
    batch = shared.get("train.batch_size", "?")
    if shared.get("train.max_steps") is not None:
        return f"{shared['train.max_steps']} optimizer steps of batches of {batch}"
    if shared.get("train.epochs") is not None:
        return f"{shared['train.epochs']} epochs in batches of {batch}"
    return f"the default budget (batches of {batch})"


def write_command(shared: Mapping[str, Any], rank: int, *, records: str = "RECORDS", out: str = "ADAPTER") -> list[str]:
    """argv of the `memlaw write` that writes `records` under the shared settings at `rank`, until certified."""
    argv = ["memlaw", "write", records, "--out", out]
    for name, flag in _FLAGS.items():
        value = shared.get(name)
        if name == "adapter.kind":
            argv += [flag, str(value or "probe"), "--rank", str(rank)]
            continue
        if value is None or (name == "train.margin" and not value):
            continue
        if name == "train.epochs" and shared.get("train.max_steps") is not None:
            continue
        argv += [flag, _text(value)]
    return argv + ["--until", "certified"]


def peft_config(shared: Mapping[str, Any], rank: int) -> dict[str, Any]:
    """A PEFT `LoraConfig` and the transformers `TrainingArguments` of the same optimizer and schedule."""
    alpha = shared.get("adapter.lora_alpha")
    targets = shared.get("adapter.lora_targets", "all-linear")
    train = {"learning_rate": shared.get("train.lr"), "lr_scheduler_type": "linear", "warmup_steps": 0,
             "weight_decay": 0.0, "max_grad_norm": shared.get("train.clip", 1.0), "optim": "adamw_torch",
             "per_device_train_batch_size": shared.get("train.batch_size"), "gradient_accumulation_steps": 1}
    if shared.get("train.max_steps") is not None:
        train["max_steps"] = shared["train.max_steps"]
    else:
        train["num_train_epochs"] = shared.get("train.epochs")
    return {
        "base_model_name_or_path": hub_id(str(shared.get("model"))),
        "lora_config": {"r": rank, "lora_alpha": alpha if alpha is not None else 2 * rank,
                        "lora_dropout": shared.get("adapter.dropout") or 0.0, "target_modules": targets,
                        "layers_to_transform": shared.get("adapter.lora_layers"), "bias": "none",
                        "task_type": "CAUSAL_LM"},
        "training_arguments": train,
        "loss": "cross-entropy on the answer tokens only (the value and the end-of-turn), not on the prompt",
    }


def axolotl_config(shared: Mapping[str, Any], rank: int, *, records: str = "RECORDS") -> str:
    """An axolotl YAML with the same LoRA, optimizer and schedule; the records as `key` -> `value` pairs."""
    p = peft_config(shared, rank)
    lora, train = p["lora_config"], p["training_arguments"]
    lines = [
        "# axolotl trains with its own loop: memlaw cannot certify the result (it writes no memlaw.json).",
        f"base_model: {json.dumps(p['base_model_name_or_path'])}",
        "adapter: lora",
        f"lora_r: {lora['r']}", f"lora_alpha: {lora['lora_alpha']}", f"lora_dropout: {lora['lora_dropout']}",
    ]
    lines += (["lora_target_linear: true"] if lora["target_modules"] == "all-linear"
              else ["lora_target_modules:", *(f"  - {t}" for t in lora["target_modules"])])
    lines += [
        "datasets:", f"  - path: {json.dumps(records)}", "    ds_type: json", "    type:",
        "      field_instruction: key", "      field_output: value",
        "      format: '{instruction}'", "      no_input_format: '{instruction}'",
        "train_on_inputs: false", "val_set_size: 0", "sample_packing: false",
        f"micro_batch_size: {train['per_device_train_batch_size']}", "gradient_accumulation_steps: 1",
        *([f"max_steps: {train['max_steps']}"] if "max_steps" in train else [f"num_epochs: {train['num_train_epochs']}"]),
        "optimizer: adamw_torch", f"learning_rate: {train['learning_rate']}", "lr_scheduler: linear",
        "warmup_steps: 0", "weight_decay: 0.0", f"max_grad_norm: {train['max_grad_norm']}",
    ]
    if shared.get("prompt.template", "chat") != "plain":
        lines.insert(1, "# memlaw's cells showed keys through the chat template; this dataset type shows them plainly.")
    return "\n".join(lines) + "\n"


def command_text(argv: Sequence[str]) -> str:
    return shlex.join(argv)


def _text(value: Any) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


__all__ = ["FORMATS", "settings", "unexpressed", "budget_text", "write_command", "peft_config", "axolotl_config",
           "command_text", "flatten"]
