"""The model card (README.md) of an adapter directory: what it holds and how it was certified. Pure.

Built from memlaw.json's fields, so it says only what memlaw recorded: counts, the base model, the
prompt, the certificate and the training budget. It never shows a value, and no key either (keys
may be private too); `records.jsonl`, when it was saved, holds them.
"""

from __future__ import annotations

import json
from typing import Any

from memlaw.model_names import HUB_IDS, hub_id


def model_card(meta: dict[str, Any]) -> str:
    """README.md text for an adapter directory with memlaw.json fields `meta`."""
    base = meta["base_model"]
    name, hub = base["name"], hub_id(base["name"])
    kind, rank = meta["kind"], meta["rank"]
    metrics, training = meta.get("metrics", {}), meta.get("training", {})
    train = training.get("train", {})
    n = meta.get("n_records", metrics.get("n_records", "?"))
    lora = kind == "lora"
    lines = ["---", f"base_model: {json.dumps(hub)}", f"library_name: {'peft' if lora else 'memlaw'}",
             "tags:", "  - memlaw", "  - parametric-memory", *(["  - lora"] if lora else []), "---", "",
             f"# memlaw memory: {_records(n)} in a {'PEFT LoRA' if lora else 'probe'} of rank {rank} on {hub}", ""]
    lines += ["## What it holds", "",
              f"- {_records(n)} (key → value), {metrics.get('length', '?')} value tokens in all (ℓ, terminators "
              f"excluded), {meta.get('n_params', '?'):,} trainable parameters." if isinstance(meta.get("n_params"), int)
              else f"- {_records(n)} (key → value).",
              f"- records sha256 `{meta.get('records_sha256', '?')}`; `records.jsonl` "
              f"{'is' if meta.get('records_saved') else 'is not'} in this directory. This card shows no key and "
              f"no value.", ""]
    lines += ["## How it was certified", "",
              f"- Certified: {_count(metrics, 'certified', n)} records. A record is certified when every answer "
              f"token (the value and the terminator) has teacher-forced probability p_t > 0.5 + "
              f"{train.get('margin', 0)}, here in {meta.get('dtype', '?')} on {training.get('device', '?')}; then "
              f"greedy decoding must return the value exactly.",
              f"- Greedy decoding returned {_count(metrics, 'em', n)} values exactly when it was saved.",
              f"- Written with objective {training.get('objective', {}).get('name', '?')}, lr {train.get('lr', '?')}, "
              f"{training.get('steps', '?')} optimizer steps of batches of {train.get('batch_size', '?')}.", ""]
    prompt = meta.get("prompt", {})
    shown = ("the tokenizer's chat template, system message " + json.dumps(prompt.get("system"), ensure_ascii=False)
             + ", user turn " + json.dumps(prompt.get("format", "{key}")) if prompt.get("template") == "chat"
             else "plain text " + json.dumps(prompt.get("format", "{key}")) + " after the model's BOS")
    lines += ["## Use it", "", f"Prompt: {shown}; the answer ends with token ids {meta.get('terminator_ids')}.", ""]
    lines += ["```bash", "memlaw verify DIR          # certificate and greedy recall again", "memlaw recall DIR KEY",
              "```", ""]
    if lora:
        lines += ["Without memlaw:", "", "```python", "from peft import PeftModel",
                  "from transformers import AutoModelForCausalLM", "",
                  f"base = AutoModelForCausalLM.from_pretrained({json.dumps(hub)})",
                  'model = PeftModel.from_pretrained(base, "DIR")', "```", ""]
    if name in HUB_IDS:
        lines += [f"The certificate was checked on memlaw's embedded `{name}` (the hub's weights quantized to GGUF "
                  f"and dequantized; fingerprint `{base['fingerprint'][:12]}`). On the hub's own weights the adapter "
                  f"loads and runs, but the certificate is not re-checked there.", ""]
    return "\n".join(lines)


def _records(n: Any) -> str:
    return f"{n} record" if n == 1 else f"{n} records"


def _count(metrics: dict[str, Any], key: str, n: Any) -> str:
    return f"{metrics[key]}/{n}" if key in metrics else "?"


__all__ = ["model_card"]
