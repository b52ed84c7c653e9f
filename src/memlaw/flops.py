"""What a grid costs before any model loads: known model shapes, FLOPs per cell, time at an assumed throughput.

`memlaw sweep GRID --dry-run` prints it; nothing here loads a model or a tokenizer (`cost` measures
a real step once the model is loaded). Per cell:

- **records and tokens** from ℓ, the benchmark and a few facts about the model's tokenizer in
  `SHAPES` (digits a token, prompt tokens around the key, terminator tokens);
- **steps**: the budget (`TrainConfig.budget_steps`);
- **FLOPs of a training step**: 2 × the forward pass over the layers that run. The base is frozen,
  so the backward pass computes activation gradients only, about one forward; the adapter's own
  FLOPs are negligible. A probe (cached prefix) runs its layer and those above it on every prompt
  and answer position; a LoRA runs every layer. A layer's forward is 2 FLOPs a weight a position
  plus causal attention, 2·T²·heads·head_dim for T positions; the LM head runs at answer positions
  only (2·d·V each).
- **once per cell**: L_base (a forward through every layer), the cached prefix (the layers below a
  probe), a certificate pass every `check_every` steps and at the end, and greedy recall, which
  reads every weight (bf16) once a decoded token per batch of 64 records: memory-bound, so it is
  counted in bytes, not FLOPs.
- **time** = FLOPs / the assumed FLOP rate + bytes / the assumed bandwidth (`Throughput`; the
  default is an assumption stated wherever it is shown, not a measurement).

Where a cell's size cannot be known without the tokenizer (a `records` file) or the model is not in
`SHAPES`, `cell_cost` says so instead of guessing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

KEY_TOKENS = {"phonebook": 6, "long-context": 14, "linear-rule": 5}
"""Tokens of a benchmark's key (SmolLM2: "Jerry Becerra:" 6, the long-context question 14, "12, 7" 5)."""
RULE_DIGITS = 2.97
"""Mean digits of a linear-rule value 3x + 5y + 7 (x, y < 100): 297 digits in the first 100 training pairs."""
PHONE_DIGITS = 10
RECALL_BATCH = 64
"""Records decoded together by greedy recall (`verify`'s batch size)."""
BF16_BYTES = 2


@dataclass(frozen=True)
class Shape:
    """What the cost of a model depends on: its architecture and a few facts about its tokenizer."""

    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    """Input embedding and LM head share one matrix."""
    digits_per_token: int
    """1: every digit a token (SmolLM2, Gemma-3, Qwen3); 3: groups of three (Llama-3)."""
    chat_tokens: int
    """Prompt tokens around the key with the chat template and the default system message."""
    plain_tokens: int
    """Prompt tokens around the key with the plain template (the BOS, if the model uses one)."""
    chat_terminator: int
    """Answer tokens after the value with the chat template (the end-of-turn)."""
    plain_terminator: int
    """... with the plain template (EOS)."""
    probe_layer: int
    """The probe's default layer (the paper's relative depth)."""
    has_chat_template: bool = True
    """Without one (Gemma-3 base) a prompt with no template given is plain."""

    @property
    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear of a decoder layer, by PEFT's module names."""
        d, q, kv, ff = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
                "gate_proj": (d, ff), "up_proj": (d, ff), "down_proj": (ff, d)}

    @property
    def layer_params(self) -> int:
        """Weights of one decoder layer's linears (norms left out)."""
        return sum(i * o for i, o in self.linears.values())

    @property
    def params(self) -> int:
        """Weights of the model: layers, embedding and (untied) LM head; norms left out."""
        return self.layers * self.layer_params + self.vocab * self.hidden * (1 if self.tied else 2)

    def layer_forward(self, positions: int) -> float:
        """FLOPs of one decoder layer's forward over one sequence of `positions` tokens (causal attention)."""
        return 2.0 * self.layer_params * positions + 2.0 * positions**2 * self.heads * self.head_dim


SHAPES: dict[str, Shape] = {
    "smollm2-135m": Shape(hidden=576, layers=30, intermediate=1536, heads=9, kv_heads=3, head_dim=64, vocab=49152,
                          tied=True, digits_per_token=1, chat_tokens=20, plain_tokens=0, chat_terminator=2,
                          plain_terminator=1, probe_layer=17),
    "gemma3-270m": Shape(hidden=640, layers=18, intermediate=2048, heads=4, kv_heads=1, head_dim=256, vocab=262144,
                         tied=True, digits_per_token=1, chat_tokens=0, plain_tokens=1, chat_terminator=1,
                         plain_terminator=1, probe_layer=10, has_chat_template=False),
    "Qwen/Qwen3-8B": Shape(hidden=4096, layers=36, intermediate=12288, heads=32, kv_heads=8, head_dim=128,
                           vocab=151936, tied=False, digits_per_token=1, chat_tokens=22, plain_tokens=0,
                           chat_terminator=2, plain_terminator=1, probe_layer=24),
    "meta-llama/Llama-3.1-8B-Instruct": Shape(hidden=4096, layers=32, intermediate=14336, heads=32, kv_heads=8,
                                              head_dim=128, vocab=128256, tied=False, digits_per_token=3,
                                              chat_tokens=40, plain_tokens=1, chat_terminator=1, plain_terminator=1,
                                              probe_layer=18),
    "tiny": Shape(hidden=64, layers=4, intermediate=128, heads=4, kv_heads=2, head_dim=16, vocab=259, tied=False,
                  digits_per_token=1, chat_tokens=57, plain_tokens=0, chat_terminator=2, plain_terminator=1,
                  probe_layer=2),
}
"""Known models by the name a grid gives (`model:`), from their public configs; prompt and terminator
counts measured with memlaw's encoding (Qwen3 and Llama-3.1: reference_method §2.3). Parameters:
SmolLM2 134.5 M, Gemma-3 268.1 M, Qwen3-8B 8.19 B, Llama-3.1-8B 8.03 B (`Shape.params`)."""


@dataclass(frozen=True)
class Throughput:
    """The device a time estimate assumes: a sustained FLOP rate and memory bandwidth."""

    flops: float
    """FLOP/s sustained."""
    bandwidth: float
    """Bytes/s sustained (greedy decoding reads every weight once a token)."""
    label: str


def assumed(share: float = 0.4) -> Throughput:
    """`share` of an H100 SXM's dense bf16 peak (989 TFLOP/s) and of its HBM bandwidth (3.35 TB/s)."""
    return Throughput(share * 989e12, share * 3.35e12,
                      f"assuming {share:.0%} of an H100 SXM's dense bf16 peak (989 TFLOP/s) and of its memory "
                      f"bandwidth (3.35 TB/s)")


@dataclass(frozen=True)
class CellCost:
    """The estimated cost of one cell; `unknown` says what could not be estimated (then the numbers are None)."""

    n_records: float | None = None
    steps: int | None = None
    train_tokens: float | None = None
    """Tokens the training passes run (prompt + answer positions, summed over steps)."""
    flops: float | None = None
    decode_bytes: float | None = None
    seconds: float | None = None
    n_params: int | None = None
    """Trainable adapter parameters."""
    unknown: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("n_records", "steps", "train_tokens", "flops", "decode_bytes",
                                              "seconds", "n_params", "unknown")}


def records_and_value_tokens(cell, shape: Shape) -> tuple[float, float] | None:
    """(records, value tokens a record) of a cell's memory from ℓ alone, or None (a records file)."""
    name, length = cell.benchmark.name, cell.length
    if name == "long-context":
        return 1.0, float(length)
    if name == "phonebook":
        per = math.ceil(PHONE_DIGITS / shape.digits_per_token)
        return length / per, float(per)
    if name == "linear-rule":
        per = max(1.0, RULE_DIGITS / shape.digits_per_token)
        return length / per, per
    return None


def adapter_params(cell, shape: Shape) -> int | None:
    """Trainable parameters: probe 2·d·r; LoRA r·(in + out) for each targeted linear (None for a pattern)."""
    a = cell.adapter
    if a.kind == "probe":
        return 2 * shape.hidden * a.rank
    targets = shape.linears if a.lora_targets == "all-linear" else None
    if targets is None and isinstance(a.lora_targets, tuple) and set(a.lora_targets) <= set(shape.linears):
        targets = {t: shape.linears[t] for t in a.lora_targets}
    if targets is None:
        return None
    layers = len(a.lora_layers) if a.lora_layers is not None else shape.layers
    return layers * sum(a.rank * (i + o) for i, o in targets.values())


def cell_cost(cell, shape: Shape | None, throughput: Throughput) -> CellCost:
    """The estimated cost of `cell` on a model of `shape` (None: not in `SHAPES`)."""
    if shape is None:
        return CellCost(unknown=f"model {cell.model!r} is not in memlaw's table of shapes; its FLOPs and time "
                                f"need the model (the table: {', '.join(SHAPES)})")
    sized = records_and_value_tokens(cell, shape)
    if sized is None:
        return CellCost(n_params=adapter_params(cell, shape),
                        unknown=f"a {cell.benchmark.name!r} memory's records and tokens need the tokenizer")
    n, per_value = sized
    n_whole = max(1, round(n))
    steps = cell.train.budget_steps(n_whole)
    plain = cell.prompt.template == "plain" or (cell.prompt.template is None and not shape.has_chat_template)
    prompt = (shape.plain_tokens if plain else shape.chat_tokens) + KEY_TOKENS[cell.benchmark.name]
    answer = per_value + (shape.plain_terminator if plain else shape.chat_terminator)
    seq = prompt + answer
    first = (cell.adapter.layer if cell.adapter.layer is not None else shape.probe_layer) \
        if cell.adapter.kind == "probe" else 0
    above = shape.layers - first

    def forward(records: float, layers: int) -> float:   # a pass over `records` sequences, LM head at answers
        return records * (layers * shape.layer_forward(seq) + 2.0 * shape.hidden * shape.vocab * answer)

    batch = min(cell.train.batch_size, n)
    train = steps * 2.0 * forward(batch, above)
    checks = (steps // cell.train.check_every + 1) * forward(n, above)
    once = forward(n, shape.layers) + n * first * shape.layer_forward(seq)      # L_base, the cached prefix
    recall = forward(n, shape.layers) * prompt / seq                               # prefill of the prompts
    flops = train + checks + once + recall
    decode_bytes = math.ceil(n / RECALL_BATCH) * answer * BF16_BYTES * shape.params
    seconds = flops / throughput.flops + decode_bytes / throughput.bandwidth
    return CellCost(n, steps, steps * batch * seq, flops, decode_bytes, seconds, adapter_params(cell, shape))


@dataclass(frozen=True)
class GridCost:
    """Estimated costs of a grid's cells (in order) and their sum over the cells still to run."""

    cells: list[CellCost]
    throughput: Throughput
    flops: float | None
    seconds: float | None
    unknown: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"flops": self.flops, "seconds": self.seconds, "assumption": self.throughput.label,
                "unknown": self.unknown}

    def line(self, to_run: int) -> str:
        """One line: what the cells still to run cost, at the stated assumption, or why it is not known."""
        if self.flops is None:
            return f"cost: not estimated: {'; '.join(self.unknown)}"
        from memlaw.cost import _about

        return (f"cost of the {to_run} cells to run: {self.flops:.3g} FLOP, {_about(self.seconds)} "
                f"({self.throughput.label}; an estimate from the model's shapes, not a measurement)")


def grid_cost(cells: list, todo: set[str] | None = None, throughput: Throughput | None = None) -> GridCost:
    """`cell_cost` of every cell; the totals cover the cells whose key is in `todo` (None: all)."""
    throughput = throughput or assumed()
    costs = [cell_cost(c, SHAPES.get(c.model), throughput) for c in cells]
    counted = [k for c, k in zip(cells, costs) if todo is None or c.key in todo]
    unknown = sorted({k.unknown for k in counted if k.unknown})
    if unknown or not counted:
        return GridCost(costs, throughput, None if unknown else 0.0, None if unknown else 0.0, unknown)
    return GridCost(costs, throughput, math.fsum(k.flops for k in counted), math.fsum(k.seconds for k in counted), [])


__all__ = ["Shape", "SHAPES", "Throughput", "assumed", "CellCost", "cell_cost", "GridCost", "grid_cost",
           "adapter_params", "records_and_value_tokens", "KEY_TOKENS"]
