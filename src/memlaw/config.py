"""Configuration dataclasses, one per step of the data flow, composed into `WriteConfig`.

Each is frozen and keyword-only, documented field by field, and validated once in `__post_init__`,
which raises one `ConfigError` naming every problem. `from_dict` builds any of them from a plain
mapping (YAML, JSON) and rejects unknown keys with the nearest valid name.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from memlaw.errors import ConfigError

T = TypeVar("T")


def choices(cls: type, name: str) -> tuple[str, ...]:
    """The values a `Literal` field of config dataclass `cls` allows: the one list of kinds, objectives, ..."""
    hint = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if args and typing.get_origin(args[0]) is Literal:   # Optional[Literal[...]]
        args = list(typing.get_args(args[0]))
    return tuple(args)


def margin_problem(margin: Any) -> str | None:
    """What is wrong with a certificate margin (certified: every p_t > 0.5 + margin), or None."""
    if not isinstance(margin, (int, float)) or not 0.0 <= margin < 0.5:
        return f"margin must be in [0, 0.5), got {margin!r}"
    return None


def _raise(problems: list[str], what: str) -> None:
    if problems:
        raise ConfigError(f"{what}: " + "; ".join(problems))


@dataclass(frozen=True, kw_only=True)
class PromptConfig:
    template: Literal["chat", "plain"] | None = None
    """`chat`: the tokenizer's chat template; `plain`: `format` + BOS. None: chat where the tokenizer has one."""
    system: str | None = "You are a helpful assistant."
    """System message for the chat template (None: no system turn)."""
    format: str = "{key}"
    """How the key is shown: the user turn (chat) or the whole prompt (plain). Must contain `{key}`."""

    def __post_init__(self) -> None:
        problems = []
        if self.template not in (None, "chat", "plain"):
            problems.append(f"template must be 'chat' or 'plain', got {self.template!r}")
        if "{key}" not in self.format:
            problems.append(f"format must contain '{{key}}', got {self.format!r}")
        _raise(problems, "prompt")


@dataclass(frozen=True, kw_only=True)
class AdapterConfig:
    kind: Literal["probe", "lora"] = "probe"
    """`probe`: the paper's single-layer map parallel to one MLP. `lora`: standard PEFT LoRA."""
    rank: int = 8
    layer: int | None = None
    """Decoder layer of the probe; None: the paper's relative depth (Llama 18/32, Qwen 24/36)."""
    dropout: float | None = None
    """Training-only dropout: on the probe output (None: 0.1, as the paper) or LoRA's (None: 0.0)."""
    lora_alpha: float | None = None
    """LoRA scaling numerator; None: 2·rank."""
    lora_targets: tuple[str, ...] | str = "all-linear"
    """PEFT target modules for `lora`."""
    lora_layers: tuple[int, ...] | None = None
    """Restrict `lora` to these decoder layers (PEFT `layers_to_transform`); None: all."""

    def __post_init__(self) -> None:
        problems = []
        if self.kind not in ("probe", "lora"):
            problems.append(f"kind must be 'probe' or 'lora', got {self.kind!r}")
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            problems.append(f"rank must be an integer >= 1, got {self.rank!r}")
        if self.layer is not None and (not isinstance(self.layer, int) or self.layer < 0):
            problems.append(f"layer must be an integer >= 0, got {self.layer!r}")
        if self.dropout is not None and (not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0):
            problems.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        _raise(problems, "adapter")


@dataclass(frozen=True, kw_only=True)
class ObjectiveConfig:
    name: Literal["sft", "memft-ot", "memft-sw", "memft-sw-curriculum"] = "sft"
    """`sft`, `memft-ot` (threshold), `memft-sw` (spatial window), `memft-sw-curriculum` (PhoneBook)."""
    tau: float = 0.5
    """Probability threshold: tokens with p_t < tau get weight (OT, curriculum), b_t centred on -ln tau (SW)."""
    fallback: Literal["sft", "skip"] = "sft"
    """OT when no token is below tau: train on all answer tokens (paper) or skip the step."""
    kappa: float = 10.0
    """SW: slope of the soft threshold σ(κ(ℓ_t − ln 2))."""
    window: int = 50
    """SW: base window W (tokens), grown by `expansion_step` after `patience` stuck steps."""
    decay: float = 20.0
    """SW: m_t = exp(−(t − a)/decay) inside the window."""
    floor: float = 0.01
    """SW: weight multiplier outside the window."""
    patience: int = 3
    expansion_step: float = 0.5
    expansion_max: float = 4.0
    curriculum_ratios: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0)
    curriculum_boundaries: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 1.0)
    """Curriculum: epoch boundaries as fractions of the epoch budget (paper Qwen PB1000: 20/40/60/80/300 ≈ these)."""
    equal_budget: bool = True
    """Curriculum: count optimizer steps, not epochs, so SFT and SW get the same number of updates."""

    def __post_init__(self) -> None:
        problems = []
        names = ("sft", "memft-ot", "memft-sw", "memft-sw-curriculum")
        if self.name not in names:
            problems.append(f"objective must be one of {', '.join(names)}; got {self.name!r}{_nearest(self.name, names)}")
        if not 0.0 < self.tau <= 1.0:
            problems.append(f"tau must be in (0, 1], got {self.tau}")
        if self.fallback not in ("sft", "skip"):
            problems.append(f"fallback must be 'sft' or 'skip', got {self.fallback!r}")
        if len(self.curriculum_ratios) != len(self.curriculum_boundaries):
            problems.append("curriculum_ratios and curriculum_boundaries must have the same length")
        _raise(problems, "objective")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    lr: float = 1e-2
    """AdamW learning rate (paper: 1e-2), linear decay to 0, no warm-up."""
    batch_size: int = 16
    max_steps: int | None = None
    """Optimizer-step budget. With `until='certified'` it is the cap."""
    epochs: int | None = None
    """Epoch budget (used when max_steps is None)."""
    until: Literal["budget", "certified"] = "budget"
    """`budget`: run the steps/epochs. `certified`: stop as soon as every record certifies."""
    check_every: int = 10
    """Certificate check interval in optimizer steps (`until='certified'`)."""
    margin: float = 0.0
    """Certified means p_t > 0.5 + margin for every answer token."""
    clip: float = 1.0
    seed: int = 0
    cache_prefix: bool = True
    """Single-layer adapter: compute hidden states below it once per memory, run only the layers above."""
    answer_logits: bool = True
    """Compute logits only at answer positions."""
    attention: Literal["auto", "math", "model"] = "auto"
    """Attention kernel of the training passes. `auto`: sdpa's math kernel on CPU (its flash kernel's
    backward made SmolLM2 bf16 steps 1.3-1.4x slower here), the model's own elsewhere; `model`: the
    model's own. Certificate checks and recall always run the model's own kernel."""
    lora_compute: Literal["auto", "float32"] = "auto"
    """What a LoRA's weights compute in while training. `auto`: the base's dtype, with float32 master
    copies that AdamW updates (in bf16 a SmolLM2 LoRA step took 1.38 s instead of 1.89 s here: PEFT
    otherwise casts the activations entering each of its linears to float32); `float32`: float32
    throughout. Either way the certificate checks during training (so the stop rule) and the final
    certificate run on the float32 weights, which are the ones saved."""

    def __post_init__(self) -> None:
        problems = []
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"max_steps must be >= 1, got {self.max_steps}")
        if self.epochs is not None and self.epochs < 1:
            problems.append(f"epochs must be >= 1, got {self.epochs}")
        if self.until not in ("budget", "certified"):
            problems.append(f"until must be 'budget' or 'certified', got {self.until!r}")
        if self.until == "budget" and self.max_steps is None and self.epochs is None:
            problems.append("a budget run needs max_steps or epochs")
        if self.check_every < 1:
            problems.append(f"check_every must be >= 1, got {self.check_every}")
        if (problem := margin_problem(self.margin)) is not None:
            problems.append(problem)
        if self.attention not in ("auto", "math", "model"):
            problems.append(f"attention must be 'auto', 'math' or 'model', got {self.attention!r}")
        if self.lora_compute not in ("auto", "float32"):
            problems.append(f"lora_compute must be 'auto' or 'float32', got {self.lora_compute!r}")
        _raise(problems, "train")

    def budget_steps(self, n_records: int) -> int:
        """Optimizer steps the LR schedule spans: max_steps, else epochs · ceil(n / batch), else 2000."""
        if self.max_steps is not None:
            return self.max_steps
        if self.epochs is not None:
            return self.epochs * -(-n_records // self.batch_size)
        return 2000


def _nearest(name: str, options: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(str(name), list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def from_dict(cls: type[T], data: dict[str, Any] | None, what: str | None = None) -> T:
    """Build dataclass `cls` from a mapping; unknown keys raise `ConfigError` with the nearest name."""
    data = dict(data or {})
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = [k for k in data if k not in names]
    if unknown:
        k = unknown[0]
        raise ConfigError(f"{what or cls.__name__}: unknown key {k!r}{_nearest(k, names)}; valid keys: {', '.join(names)}")
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if isinstance(data.get(f.name), list):
            data[f.name] = tuple(data[f.name])
    try:
        return cls(**data)
    except TypeError as e:
        raise ConfigError(f"{what or cls.__name__}: {e}") from None
    except ConfigError as e:  # name the file or section the settings came from
        if what is None or str(e).startswith(what):
            raise
        raise ConfigError(f"{what}: {e}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json_ready(dataclasses.asdict(obj))


def json_ready(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    return x


__all__ = ["PromptConfig", "AdapterConfig", "ObjectiveConfig", "TrainConfig", "from_dict", "to_dict", "field"]
