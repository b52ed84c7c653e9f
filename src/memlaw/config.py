"""Configuration dataclasses, one per step of the data flow; `sweep.grid.CellConfig` composes them.

Each is frozen and keyword-only, documented field by field, and validated once in `__post_init__`,
which raises one `ConfigError` naming every problem. `from_dict` builds any of them from a plain
mapping (YAML, JSON) and rejects unknown keys with the nearest valid name.

Every field is checked by `memlaw.validation` (numbers of the right type, finite and in range;
values quoted in messages bounded in size).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

from memlaw.errors import ConfigError
from memlaw.fileio import json_ready
from memlaw.validation import (collect, float_problem, format_problem, int_problem, margin_problem, nearest, refuse,
                               shown)

T = TypeVar("T")
MAX_SEED = 2**63 - 1   # torch generators take 64-bit seeds; beyond that seeding overflows
MAX_LR = 10.0          # AdamW steps by about lr; past ~1e37 its first step overflows float32 (a crash, not an error)

DEFAULT_MAX_STEPS = 2000
"""The step budget of an `until='certified'` run given neither max_steps nor epochs."""


def choices(cls: type, name: str) -> tuple[str, ...]:
    """The values a `Literal` field of config dataclass `cls` allows: the one list of kinds, objectives, ..."""
    hint = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if args and typing.get_origin(args[0]) is Literal:   # Optional[Literal[...]]
        args = list(typing.get_args(args[0]))
    return tuple(args)


@dataclass(frozen=True, kw_only=True)
class PromptConfig:
    template: Literal["chat", "plain"] | None = None
    """`chat`: the tokenizer's chat template; `plain`: `format` + BOS. None: chat where the tokenizer has one."""
    system: str | None = "You are a helpful assistant."
    """System message for the chat template (None: no system turn)."""
    format: str = "{key}"
    """How the key is shown: the user turn (chat) or the whole prompt (plain). Must contain `{key}`."""

    def __post_init__(self) -> None:
        problems = collect(format_problem(self.format))
        if self.template not in (None, "chat", "plain"):
            problems.append(f"template must be 'chat' or 'plain', got {shown(self.template)}")
        if self.system is not None and not isinstance(self.system, str):
            problems.append(f"system must be a string or null, got {shown(self.system)}")
        refuse(problems, "prompt")


@dataclass(frozen=True, kw_only=True)
class AdapterConfig:
    kind: Literal["probe", "lora"] = "probe"
    """`probe`: the paper's single-layer map parallel to one MLP. `lora`: standard PEFT LoRA."""
    rank: int = 16
    """Adapter rank r (the `memlaw write` default too)."""
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
        problems = collect(
            int_problem("rank", self.rank, lo=1), int_problem("layer", self.layer, lo=0, optional=True),
            float_problem("dropout", self.dropout, lo=0.0, hi=1.0, hi_open=True, optional=True),
            float_problem("lora_alpha", self.lora_alpha, lo=0.0, lo_open=True, optional=True))
        if self.kind not in ("probe", "lora"):
            problems.append(f"kind must be 'probe' or 'lora', got {shown(self.kind)}")
        targets = self.lora_targets
        if not (isinstance(targets, str) or (isinstance(targets, tuple) and targets
                                             and all(isinstance(t, str) for t in targets))):
            problems.append(f"lora_targets must be a module name pattern or a list of names, got {shown(targets)}")
        if self.lora_layers is not None:
            if not isinstance(self.lora_layers, tuple) or not self.lora_layers:
                problems.append(f"lora_layers must be a non-empty list of layer indices, got {shown(self.lora_layers)}")
            else:
                problems += collect(*(int_problem("lora_layers", x, lo=0) for x in self.lora_layers))[:1]
        refuse(problems, "adapter")


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
    """Curriculum: stage sizes as fractions of the records (nested prefixes of one fixed permutation)."""
    curriculum_boundaries: tuple[float, ...] | None = None
    """Curriculum: where each stage ends, in epochs of the training budget (the budget's epochs count
    1; the paper's Qwen3 PB1000 schedule, epochs 20/40/60/80/300 against SFT's 200, is (0.1, 0.2, 0.3,
    0.4, 1.5)). None: the paper's schedule for the set's size (`curriculum.PAPER_SCHEDULES`)."""
    equal_budget: bool = True
    """Curriculum: true, the schedule is compressed into the training budget's optimizer steps (as many
    updates as SFT); false, it runs as written, past the budget where its last boundary is beyond 1
    (the paper's budget: 1.3-2.5x SFT's sample passes by set size)."""

    CURRICULUM_KEY: ClassVar[dict[str, Any]] = {
        "curriculum_ratios": (0.2, 0.4, 0.6, 0.8, 1.0), "curriculum_boundaries": (0.1, 0.2, 0.3, 0.4, 1.0),
        "equal_budget": True}
    """What the cell key holds for the curriculum settings of an objective that does not read them: the
    values every stored row had before the paper's schedule became the default, so those keys stay."""

    def __post_init__(self) -> None:
        problems = []
        names = ("sft", "memft-ot", "memft-sw", "memft-sw-curriculum")
        if self.name not in names:
            problems.append(f"objective must be one of {', '.join(names)}; got {shown(self.name)}"
                            f"{nearest(self.name, names)}")
        problems += collect(
            float_problem("tau", self.tau, lo=0.0, hi=1.0, lo_open=True),
            float_problem("kappa", self.kappa, lo=0.0, lo_open=True),
            int_problem("window", self.window, lo=1),
            float_problem("decay", self.decay, lo=0.0, lo_open=True),
            float_problem("floor", self.floor, lo=0.0, hi=1.0),
            int_problem("patience", self.patience, lo=1),
            float_problem("expansion_step", self.expansion_step, lo=0.0),
            float_problem("expansion_max", self.expansion_max, lo=1.0))
        if self.fallback not in ("sft", "skip"):
            problems.append(f"fallback must be 'sft' or 'skip', got {shown(self.fallback)}")
        ratios, ends = self.curriculum_ratios, self.curriculum_boundaries
        if not isinstance(ratios, tuple) or not ratios:
            problems.append(f"curriculum_ratios must be a non-empty list of fractions, got {shown(ratios)}")
        else:
            problems += collect(*(float_problem("curriculum_ratios", x, lo=0.0, hi=1.0, lo_open=True)
                                    for x in ratios))[:1]
        if ends is not None:
            if not isinstance(ends, tuple) or not ends:
                problems.append(f"curriculum_boundaries must be a non-empty list of epochs or null, got {shown(ends)}")
            else:
                bad = collect(*(float_problem("curriculum_boundaries", x, lo=0.0, lo_open=True) for x in ends))[:1]
                if not bad and any(b <= a for a, b in zip(ends, ends[1:])):
                    bad = [f"curriculum_boundaries must increase, got {shown(ends)}"]
                problems += bad
        stages = 5 if ends is None else len(ends) if isinstance(ends, tuple) else None
        if isinstance(ratios, tuple) and stages is not None and len(ratios) != stages:
            problems.append("curriculum_ratios and curriculum_boundaries must have the same length (the paper's "
                            "schedule, curriculum_boundaries null, has 5 stages)")
        if not isinstance(self.equal_budget, bool):
            problems.append(f"equal_budget must be true or false, got {shown(self.equal_budget)}")
        refuse(problems, "objective")

    def key_dict(self) -> dict[str, Any]:
        """What identifies the objective in a cell key: every field, but the curriculum's settings only
        where the curriculum reads them (elsewhere fixed, `CURRICULUM_KEY`)."""
        d = to_dict(self)
        if self.name != "memft-sw-curriculum":
            d.update(self.CURRICULUM_KEY)
        return d


DEFAULT_LR = {"probe": 1e-2, "lora": 2e-3}
"""Learning rate per adapter kind where `TrainConfig.lr` is None, for budget runs (sweeps, the law):
the paper's 1e-2 for the probe. LoRA (all-linear, α = 2r) at 1e-2 certified 3-4 times slower than at
2e-3, on PhoneBook and on the mixed records (docs/performance.md)."""
CERTIFY_LR = {"probe": 4e-2, "lora": 2e-3}
"""The same for writes that run `until="certified"`: a probe at 4e-2 certified in about half the
steps of 1e-2, on PhoneBook and on the mixed records (3 seeds each: 0.56× and 0.37× the steps by median;
docs/performance.md)."""


def default_lr(kind: str, until: str) -> float:
    """The learning rate a write of this adapter kind and stop rule gets when none is given."""
    return (CERTIFY_LR if until == "certified" else DEFAULT_LR)[kind]


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    lr: float | None = None
    """AdamW learning rate; None: the adapter kind's default for the stop rule (`default_lr`: `CERTIFY_LR`
    until certified, else `DEFAULT_LR`; the paper's is 1e-2). Linear decay to 0 over the budget after
    `warmup` steps."""
    warmup: int = 0
    """Steps of linear warm-up to `lr` (paper: none)."""
    schedule: Literal["linear", "progress"] = "linear"
    """LR after warm-up: `linear` decay to 0 over the budget (paper) or `progress`: decay with the share
    of answer tokens certified in training passes, to a quarter of `lr` (`memlaw.pace`)."""
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
    """Certified means p_t > 0.5 + margin for every answer token. 0 here (a sweep cell's certificate, as
    the paper defines it); `write_memory`, `update_memory` and the CLI set it from `margin="auto"`
    (0.07 in bfloat16, `memlaw.certificate.AUTO_MARGIN`) unless given a number."""
    early_checks: bool = True
    """`until='certified'`: between check steps, check a record alone as soon as its training pass puts
    every p_t near or above 0.5, and every record once none is left uncertified; the write stops at
    the first check that certifies them all (`memlaw.pace`)."""
    retire_margin: float | None = None
    """`until='certified'`: records certified with this margin (every p_t > 0.5 + it) leave the
    training batches until a check finds them below it again; None: every record always trains."""
    clip: float = 1.0
    seed: int = 0
    cache_prefix: bool = True
    """Single-layer adapter: compute hidden states below it once per memory, run only the layers above."""
    answer_logits: bool = True
    """Compute logits only at answer positions."""
    shared_prompt: bool = True
    """Training passes run the prompt tokens every record shares (the chat template's system turn) once
    per pass, as one row whose key/value cache the rows continue from. Certificate checks always run
    every prompt token in every row."""
    shared_min_rows: int = 12
    """With `shared_prompt`, a training batch of fewer rows than this runs unshared: the shared row is a
    decoder call of its own, one more read of every weight, and below ~12 rows that read costs more
    than the prompt tokens it saves (SmolLM2 probe steps: 1.35× faster unshared at 2 rows, 1.04× at 8,
    0.89× at 12; `bench/shared_rows.py`, docs/performance.md)."""
    attention: Literal["auto", "math", "model"] = "auto"
    """Attention kernel of the training passes. `auto`: sdpa's math kernel on CPU (its flash kernel's
    backward is slower there; docs/performance.md has the measurement), the model's own elsewhere;
    `model`: the model's own. Certificate checks and recall always run the model's own kernel."""
    lora_compute: Literal["auto", "float32"] = "auto"
    """What a LoRA's weights compute in while training. `auto`: the base's dtype, with float32 master
    copies that AdamW updates (faster in bf16, docs/performance.md: PEFT otherwise casts the
    activations entering each of its linears to float32); `float32`: float32
    throughout. Either way the certificate checks during training (so the stop rule) and the final
    certificate run on the float32 weights, which are the ones saved."""

    def __post_init__(self) -> None:
        problems = collect(
            float_problem("lr", self.lr, lo=0.0, hi=MAX_LR, lo_open=True, optional=True),
            int_problem("batch_size", self.batch_size, lo=1),
            int_problem("max_steps", self.max_steps, lo=1, optional=True),
            int_problem("epochs", self.epochs, lo=1, optional=True),
            int_problem("check_every", self.check_every, lo=1),
            int_problem("shared_min_rows", self.shared_min_rows, lo=1),
            margin_problem(self.margin),
            float_problem("clip", self.clip, lo=0.0, lo_open=True),     # a negative clip reverses the gradient
            int_problem("seed", self.seed, lo=0, hi=MAX_SEED))
        if self.until not in ("budget", "certified"):
            problems.append(f"until must be 'budget' or 'certified', got {shown(self.until)}")
        if self.until == "budget" and self.max_steps is None and self.epochs is None:
            problems.append("a budget run needs max_steps or epochs")
        for name in ("cache_prefix", "answer_logits", "shared_prompt", "early_checks"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be true or false, got {shown(getattr(self, name))}")
        problems += collect(int_problem("warmup", self.warmup, lo=0),
                              float_problem("retire_margin", self.retire_margin, lo=0.0, hi=0.5, hi_open=True,
                                            optional=True))
        if self.attention not in ("auto", "math", "model"):
            problems.append(f"attention must be 'auto', 'math' or 'model', got {shown(self.attention)}")
        if self.schedule not in ("linear", "progress"):
            problems.append(f"schedule must be 'linear' or 'progress', got {shown(self.schedule)}")
        if self.lora_compute not in ("auto", "float32"):
            problems.append(f"lora_compute must be 'auto' or 'float32', got {shown(self.lora_compute)}")
        refuse(problems, "train")

    def for_kind(self, kind: str) -> TrainConfig:
        """This config with `lr` set: the kind's default for the stop rule (`default_lr`) where it is None."""
        return self if self.lr is not None else dataclasses.replace(self, lr=default_lr(kind, self.until))

    KEY_SINCE: ClassVar[dict[str, Any]] = {"schedule": "linear", "shared_min_rows": 1}
    """Settings added after stores were written, left out of the cell key while they hold the value
    that reproduces those rows, so a store resumes across the upgrade."""

    def key_dict(self) -> dict[str, Any]:
        """What identifies the training in a cell key: every field but those of `KEY_SINCE` at their old value."""
        d = to_dict(self)
        for name, old in self.KEY_SINCE.items():
            if d[name] == old:
                d.pop(name)
        return d

    def budget_steps(self, n_records: int) -> int:
        """Optimizer steps the LR schedule spans: max_steps, else epochs · ceil(n / batch), else DEFAULT_MAX_STEPS."""
        if self.max_steps is not None:
            return self.max_steps
        if self.epochs is not None:
            return self.epochs * -(-n_records // self.batch_size)
        return DEFAULT_MAX_STEPS


@dataclass(frozen=True, kw_only=True)
class BenchmarkConfig:
    """Which records a cell writes: a benchmark (`memlaw.benchmarks.build`) and its own options.

    Options a benchmark does not take must stay unset; those it takes are filled with their defaults
    here, so two spellings of one memory give one cell key.
    """

    name: Literal["phonebook", "long-context", "linear-rule", "records"] = "phonebook"
    """`phonebook`: the paper's list, the first entries holding exactly ℓ value tokens (PB<ℓ>).
    `long-context`: one record, the first ℓ tokens of a document with noise `ratio`.
    `linear-rule`: pairs "x, y" -> 3x + 5y + 7 (or `rule`), the first training pairs holding ℓ value
    tokens, and `held_out` pairs for generalization. `records`: a JSONL/CSV file, the first records holding ℓ."""
    path: str | None = None
    """`records`: the file (JSONL or CSV, as `memlaw write` reads). Where to find it, not what it is:
    the cell key holds `sha256`, so moving the file keeps the key and editing it changes the key."""
    sha256: str | None = None
    """`records`: sha256 of the file's bytes (filled when the grid is loaded)."""
    ratio: str | float | None = None
    """`long-context`: noise ratio r0, r20, ..., r100 or a number in [0, 1] (default r100)."""
    source: Literal["own", "paper"] | None = None
    """`long-context`: `own` (default: built in the model's token space from the paper's r0 text) or
    `paper` (the paper's files, noise in Qwen3's token space)."""
    held_out: int | None = None
    """`linear-rule`: held-out pairs (default 100), from the end of the shuffle: the same whatever ℓ."""
    data_seed: int | None = None
    """`long-context` (noise positions and tokens) and `linear-rule` (the shuffle): default 0. Data,
    not training randomness: the cell's seed does not change it."""
    rule: tuple[int, int, int] | None = None
    """`linear-rule`: the coefficients (a, b, c) of f(x, y) = a·x + b·y + c (default the paper's
    (3, 5, 7)). Left out of the cell key at its default, so cells stored before it existed keep theirs."""

    OPTIONS: ClassVar[dict[str, dict[str, Any]]] = {
        "phonebook": {},
        "long-context": {"ratio": "r100", "source": "own", "data_seed": 0},
        "linear-rule": {"held_out": 100, "data_seed": 0, "rule": (3, 5, 7)},
        "records": {"path": None, "sha256": None},
    }
    """Each benchmark's options and their defaults (None: required)."""

    def __post_init__(self) -> None:
        names = choices(BenchmarkConfig, "name")
        if self.name not in names:
            raise ConfigError(f"benchmark: name must be one of {', '.join(names)}, got {self.name!r}"
                              f"{nearest(self.name, names)}")
        problems = []
        takes = self.OPTIONS[self.name]
        for option in ("path", "sha256", "ratio", "source", "held_out", "data_seed", "rule"):
            value = getattr(self, option)
            if option not in takes:
                if value is not None:
                    problems.append(f"{option} is not an option of benchmark {self.name!r}")
            elif value is None and takes[option] is not None:
                object.__setattr__(self, option, takes[option])
        if self.name == "records" and not self.path:
            problems.append("benchmark 'records' needs a path")
        if self.path is not None and not isinstance(self.path, str):
            problems.append(f"path must be a file name, got {shown(self.path)}")
        if self.ratio is not None and (isinstance(self.ratio, bool) or not isinstance(self.ratio, (str, int, float))):
            problems.append(f"ratio must be r0, r20, ..., r100 or a number in [0, 1], got {shown(self.ratio)}")
        if self.source not in (None, "own", "paper"):
            problems.append(f"source must be 'own' or 'paper', got {self.source!r}")
        if self.rule is not None:
            if isinstance(self.rule, list):
                object.__setattr__(self, "rule", tuple(self.rule))
            if (not isinstance(self.rule, tuple) or len(self.rule) != 3
                    or any(isinstance(v, bool) or not isinstance(v, int) for v in self.rule)):
                problems.append(f"rule must be three integers [a, b, c] for a·x + b·y + c, got {shown(self.rule)}")
        problems += collect(int_problem("held_out", self.held_out, lo=0, optional=True),
                            int_problem("data_seed", self.data_seed, optional=True))
        refuse(problems, "benchmark")

    def options(self) -> dict[str, Any]:
        """The benchmark's own options, as `memlaw.benchmarks.build` takes them."""
        return {k: getattr(self, k) for k in self.OPTIONS[self.name]}

    def rule_text(self) -> str | None:
        """`linear-rule`: the rule as `ax+by+c` (the paper's `3x+5y+7` where `rule` is None); else None."""
        if self.name != "linear-rule":
            return None
        a, b, c = self.rule or self.OPTIONS["linear-rule"]["rule"]
        return f"{a}x{b:+d}y{c:+d}"

    def key_dict(self) -> dict[str, Any]:
        """What identifies the memory: all fields but `path` where the content's sha256 is known."""
        d = to_dict(self)
        if self.sha256 is not None:
            d.pop("path")
        if self.rule is None or tuple(self.rule) == self.OPTIONS["linear-rule"]["rule"]:
            d.pop("rule")
        return d


def from_dict(cls: type[T], data: dict[str, Any] | None, what: str | None = None) -> T:
    """Build dataclass `cls` from a mapping; unknown keys raise `ConfigError` with the nearest name."""
    data = dict(data or {})
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = [k for k in data if k not in names]
    if unknown:
        k = unknown[0]
        raise ConfigError(f"{what or cls.__name__}: unknown key {k!r}{nearest(k, names)}; valid keys: {', '.join(names)}")
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if isinstance(data.get(f.name), list):
            data[f.name] = tuple(data[f.name])
    try:
        return cls(**data)
    except TypeError as e:
        raise ConfigError(f"{what or cls.__name__}: {e}") from None
    except ConfigError as e:  # name the file or section the settings came from, once
        msg = str(e)
        if what is None or msg.startswith(what):
            raise
        head = msg.split(": ", 1)[0]                 # the section the dataclass names itself ("train")
        prefix = what[: -len(head)] if what.endswith(head) else f"{what}: "
        raise ConfigError(prefix + msg) from None


def to_dict(obj: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json_ready(dataclasses.asdict(obj))


__all__ = ["PromptConfig", "AdapterConfig", "ObjectiveConfig", "TrainConfig", "BenchmarkConfig", "choices", "from_dict",
           "to_dict", "default_lr", "DEFAULT_LR", "CERTIFY_LR", "DEFAULT_MAX_STEPS", "MAX_SEED", "MAX_LR"]
