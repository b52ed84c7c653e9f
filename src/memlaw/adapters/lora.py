"""Standard PEFT LoRA, saved as a plain PEFT adapter directory (loadable with no memlaw installed).

Its `adapter_config.json` names the base model by hub id (embedded models) or by the user's own
path, never by memlaw's cache, so the directory loads with `PeftModel.from_pretrained` anywhere.

PEFT injects its layers into the base model in place; `detach` unloads them again (no merge), so
the resident base model is unchanged after a write. Adapter weights are float32 even when the base
runs in bf16 (PEFT's `autocast_adapter_dtype`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

from memlaw.cost import check_feasible
from memlaw.errors import AdapterError
from memlaw.model_names import hub_id

TENSORS = "adapter_model.safetensors"


def make(cfg, base, seed: int = 0) -> "LoraAdapter":
    """A fresh PEFT LoRA from an `AdapterConfig` (dropout None: 0.0; alpha None: 2·rank)."""
    check_feasible(cfg, base)                # a rank above a targeted layer's dimensions cannot help
    return LoraAdapter(cfg.rank, alpha=cfg.lora_alpha, dropout=cfg.dropout or 0.0,
                       targets=cfg.lora_targets, layers=cfg.lora_layers, seed=seed)


class LoraAdapter:
    kind = "lora"

    def __init__(self, r: int, *, alpha: float | None = None, dropout: float = 0.0,
                 targets: tuple[str, ...] | str = "all-linear", layers: tuple[int, ...] | None = None, seed: int = 0):
        self.rank, self.seed = r, seed
        self.config = LoraConfig(
            r=r, lora_alpha=alpha if alpha is not None else 2 * r, lora_dropout=dropout,
            target_modules=list(targets) if not isinstance(targets, str) else targets,
            layers_to_transform=list(layers) if layers is not None else None, bias="none", task_type="CAUSAL_LM",
        )
        self.peft: PeftModel | None = None
        self._pending: dict[str, torch.Tensor] | None = None

    @property
    def first_layer(self) -> int:
        layers = self.config.layers_to_transform
        return min(layers) if layers else 0

    def attach(self, base) -> None:
        if self.peft is not None:
            raise AdapterError("lora adapter is already attached")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # PEFT draws lora_A from the global RNG
            self.peft = get_peft_model(base.model, self.config, autocast_adapter_dtype=True)
        # adapter_config.json names the base model: its hub id (memlaw's cache path would not travel)
        self.peft.peft_config["default"].base_model_name_or_path = hub_id(base.name)
        if self._pending is not None:
            self._copy_in(self._pending)
            self._pending = None

    def detach(self) -> None:
        if self.peft is not None:
            self.peft.unload()
            model = self.peft.base_model.model
            for attr in ("peft_config", "_hf_peft_config_loaded"):
                if attr in vars(model):  # PEFT leaves these on the model it unloads from
                    delattr(model, attr)
            self.peft = None

    def parameters(self):
        if self.peft is None:
            raise AdapterError("attach the lora adapter before asking for its parameters")
        return [p for n, p in self.peft.named_parameters() if "lora_" in n]

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def train(self, mode: bool = True) -> "LoraAdapter":
        for name, m in self.peft.named_modules() if self.peft is not None else []:
            if name.split(".")[-2:-1] == ["lora_dropout"]:  # the base model stays in eval mode
                m.train(mode)
        return self

    def eval(self) -> "LoraAdapter":
        return self.train(False)

    def disabled(self):
        """The base model alone while inside (for L_base), the adapter again after."""
        if self.peft is None:
            raise AdapterError("attach the lora adapter first")
        return self.peft.disable_adapter()

    def save_tensors(self, directory: Path) -> list[str]:
        if self.peft is None:
            raise AdapterError("attach the lora adapter before saving it")
        # memlaw never trains the embeddings; "auto" would ask the hub about the base model's vocabulary
        self.peft.save_pretrained(str(directory), save_embedding_layers=False)
        return [TENSORS]

    def load_tensors(self, directory: Path) -> None:
        tensors = load_file(str(directory / TENSORS))
        if self.peft is None:
            self._pending = tensors
        else:
            self._copy_in(tensors)

    def _copy_in(self, tensors: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        try:
            result = set_peft_model_state_dict(self.peft, tensors)
        except RuntimeError as e:  # shape mismatch: tensors from another config
            raise AdapterError(f"lora tensors do not fit the adapter config ({str(e).splitlines()[0]})") from None
        missing = [k for k in result.missing_keys if "lora_" in k]
        if missing or result.unexpected_keys:
            raise AdapterError(f"lora tensors do not match the adapter config "
                               f"(missing {len(missing)}, unexpected {len(result.unexpected_keys)})")

    def meta(self) -> dict:
        c = self.config
        targets = sorted(c.target_modules) if not isinstance(c.target_modules, str) else c.target_modules
        return {"alpha": c.lora_alpha, "dropout": c.lora_dropout, "targets": targets,
                "layers": c.layers_to_transform}
