"""The teacher-forced pass: answer-token logits for a batch of records, with DESIGN §6's fast paths.

- cached prefix: for an adapter whose lowest layer is L, the hidden states entering layer L never
  change during a write; compute them once per memory and run only layers L.. (forward, backward);
- answer-only logits: apply the LM head at the positions that predict answer tokens only.

Both are exact rewrites of the plain pass (same ops on the same numbers for the layers that run),
which tests check against `plain=True`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.utils.rnn import pad_sequence

from memlaw.encode import Batch, Encoded, collate


class _Skip(nn.Module):
    """Stands in for a decoder layer below the cached prefix: returns its input unchanged."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class _Stop(Exception):
    pass


class _Capture(nn.Module):
    """Stands in for layer L while building the prefix: keeps the hidden states entering it, stops the pass."""

    def forward(self, hidden_states, *args, **kwargs):
        self.seen = hidden_states
        raise _Stop


@contextmanager
def swap_layers(layers: nn.ModuleList, replace: dict[int, nn.Module]) -> Iterator[None]:
    """Temporarily replace some decoder layers (indices keep their meaning, e.g. Gemma's layer types)."""
    saved = {i: layers[i] for i in replace}
    try:
        for i, m in replace.items():
            layers[i] = m
        yield
    finally:
        for i, m in saved.items():
            layers[i] = m


def training_attention(mode: str, device: torch.device | str) -> AbstractContextManager:
    """The attention kernel for a training pass (`TrainConfig.attention`).

    `auto` picks sdpa's math kernel on CPU, where the flash kernel's backward dominated a bf16 step
    (bench: SmolLM2 probe step 0.86 s → 0.62 s, LoRA 2.87 s → 2.26 s, one thread), and leaves the
    model's kernel elsewhere. Only the weights a write reaches depend on it: certificate checks and
    greedy recall run outside this context, on the kernel recall uses.
    """
    if mode == "math" or (mode == "auto" and torch.device(device).type == "cpu"):
        return sdpa_kernel(SDPBackend.MATH)
    return nullcontext()


def lm_logits(base, hidden: Tensor) -> Tensor:
    """LM head (+ final logit soft-capping where the model has it) on normed hidden states."""
    logits = base.model.get_output_embeddings()(hidden)
    cap = getattr(base.model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


class TeacherForcer:
    """Answer logits of any rows of one memory, through the fast paths or the plain full-model pass.

    Args:
        base: the loaded base model (`memlaw.models.BaseModel`); the adapter, if any, is attached to it.
        enc: the encoded memory.
        start_layer: lowest decoder layer the adapter touches; the prefix below it is cached.
        cache_prefix: use the cached prefix (when start_layer > 0).
        answer_logits: apply the LM head at answer positions only.
        plain: ignore both and call the whole model as a user would (`model(input_ids).logits`).
    """

    def __init__(self, base, enc: Encoded, *, start_layer: int = 0, cache_prefix: bool = True,
                 answer_logits: bool = True, plain: bool = False, chunk: int = 64):
        self.base, self.enc = base, enc
        self.answer_only = answer_logits and not plain
        self.plain = plain
        self.start = start_layer if (cache_prefix and not plain) else 0
        self.pad = base.tokenizer.pad_token_id if base.tokenizer.pad_token_id is not None else 0
        self.prefix: list[Tensor] | None = self._build_prefix(chunk) if self.start > 0 else None

    @torch.no_grad()
    def _build_prefix(self, chunk: int) -> list[Tensor]:
        """Hidden states entering layer `start`, per record (S_i, D), computed once with no adapter effect."""
        out: list[Tensor] = []
        cap = _Capture()
        for lo in range(0, len(self.enc), chunk):
            rows = list(range(lo, min(lo + chunk, len(self.enc))))
            batch = collate(self.enc, rows, self.pad, self.base.device)
            with swap_layers(self.base.layers, {self.start: cap}):
                try:
                    self.base.model.model(input_ids=batch.input_ids, use_cache=False)
                except _Stop:
                    pass
            for b, i in enumerate(rows):
                n = len(self.enc.prompt_ids[i]) + len(self.enc.answer_ids(i))
                out.append(cap.seen[b, :n].detach().clone())
        return out

    def logits(self, rows: Sequence[int]) -> tuple[Tensor, Batch]:
        """Logits predicting each answer token, (B, T, V) in the compute dtype, and the batch."""
        batch = collate(self.enc, list(rows), self.pad, self.base.device)
        if self.plain:
            full = self.base.model(input_ids=batch.input_ids, use_cache=False).logits
            return _at(full, batch.positions), batch
        decoder = self.base.model.model
        if self.prefix is not None:
            h = pad_sequence([self.prefix[i] for i in rows], batch_first=True)
            with swap_layers(self.base.layers, {i: _Skip() for i in range(self.start)}):
                hidden = decoder(inputs_embeds=h, use_cache=False).last_hidden_state
        else:
            hidden = decoder(input_ids=batch.input_ids, use_cache=False).last_hidden_state
        if self.answer_only:
            return lm_logits(self.base, _at(hidden, batch.positions)), batch
        return _at(lm_logits(self.base, hidden), batch.positions), batch

    def inputs(self, rows: Sequence[int]) -> tuple[list[Tensor], Batch]:
        """Per row what the decoder pass starts from: cached hidden states (S_i, D) or token ids (S_i,)."""
        batch = collate(self.enc, list(rows), self.pad, self.base.device)
        if self.prefix is not None:
            return [self.prefix[i] for i in rows], batch
        return [batch.input_ids[b] for b in range(len(rows))], batch

    def batches(self, rows: Sequence[int], size: int) -> Iterator[list[int]]:
        rows = list(rows)
        for lo in range(0, len(rows), size):
            yield rows[lo: lo + size]


def _at(x: Tensor, positions: Tensor) -> Tensor:
    """x (B, S, K) gathered at positions (B, T) → (B, T, K)."""
    return x.gather(1, positions.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def joint_logits(parts: Sequence[tuple[TeacherForcer, Sequence[int]]]) -> list[tuple[Tensor, Batch]]:
    """Answer logits for rows of several memories in ONE decoder pass (multi-adapter training).

    All teacher-forcers must share the base model, the cached-prefix layer and the answer-only
    setting. Returns, per part, what `TeacherForcer.logits` would (up to batch-size numerics).
    """
    first = parts[0][0]
    if any(tf.base is not first.base or tf.start != first.start or tf.plain or not tf.answer_only
           for tf, _ in parts):
        raise ValueError("joint_logits needs teacher-forcers on one base with the same fast paths")
    seqs, batches = [], []
    for tf, rows in parts:
        x, batch = tf.inputs(rows)
        seqs.extend(x)
        batches.append(batch)
    pad = first.pad
    decoder = first.base.model.model
    if first.start > 0:
        h = pad_sequence(seqs, batch_first=True)
        with swap_layers(first.base.layers, {i: _Skip() for i in range(first.start)}):
            hidden = decoder(inputs_embeds=h, use_cache=False).last_hidden_state
    else:
        ids = pad_sequence(seqs, batch_first=True, padding_value=pad)
        hidden = decoder(input_ids=ids, use_cache=False).last_hidden_state
    T = max(b.positions.shape[1] for b in batches)
    positions = torch.cat([torch.nn.functional.pad(b.positions, (0, T - b.positions.shape[1])) for b in batches])
    logits = lm_logits(first.base, _at(hidden, positions))
    out, lo = [], 0
    for b in batches:
        n, t = b.positions.shape
        out.append((logits[lo: lo + n, :t], b))
        lo += n
    return out


@dataclass(frozen=True, slots=True)
class TokenProbs:
    """One record's teacher-forced answer tokens: p_t, −log p_t and argmax correctness, shape (n_answer,)."""

    p: Tensor
    nll: Tensor
    correct: Tensor


@torch.no_grad()
def answer_probs(tf: TeacherForcer, rows: Sequence[int] | None = None, chunk: int = 64, *,
                 on_chunk: Callable[[dict[int, TokenProbs], int], None] | None = None) -> dict[int, TokenProbs]:
    """p_t for every answer token of `rows` (default: all records), one forward pass per chunk.

    `on_chunk(probs so far, number of rows)` is called after each chunk (progress lines).
    """
    rows = list(range(len(tf.enc))) if rows is None else list(rows)
    out: dict[int, TokenProbs] = {}
    for part in tf.batches(rows, chunk):
        logits, batch = tf.logits(part)
        logp = torch.log_softmax(logits.float(), dim=-1)
        nll = -logp.gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)
        correct = logits.argmax(-1) == batch.targets
        for b, i in enumerate(part):
            n = int(batch.mask[b].sum())
            out[i] = TokenProbs(torch.exp(-nll[b, :n]).cpu(), nll[b, :n].cpu(), correct[b, :n].cpu())
        if on_chunk is not None:
            on_chunk(out, len(rows))
    return out
