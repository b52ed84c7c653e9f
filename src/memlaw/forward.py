"""The teacher-forced pass: answer-token logits for a batch of records, with DESIGN §6's fast paths.

- cached prefix: for an adapter whose lowest layer is L, the hidden states entering layer L never
  change during a write; compute them once per memory and run only layers L.. (forward, backward);
- shared prompt: every prompt of a memory starts with the same tokens (the chat template's system
  turn and user header: 14 of PhoneBook's ~37 tokens on SmolLM2). Causal attention makes their
  hidden states the same in every row, so each pass runs them once, as one row, and the rows
  continue from its key/value cache (gradients flow through the cache into the adapter);
- answer-only logits: apply the LM head at the positions that predict answer tokens only.

All are exact rewrites of the plain pass (the same arithmetic; float rounding may differ where a
matmul is blocked differently), which tests check against `plain=True`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.utils.rnn import pad_sequence

from transformers import DynamicCache

from memlaw.encode import Batch, Encoded, collate, prompt_ids

SHARED_MIN = 4
"""A shared prompt prefix shorter than this (a BOS, say) is not worth a pass of its own."""


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
    (docs/performance.md), and leaves the model's kernel elsewhere. Only the weights a write reaches depend on it: certificate checks and
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


def shared_prompt_len(enc: Encoded) -> int:
    """Tokens that every prompt of `enc` starts with and that the prompt template itself fixes.

    The longest common prefix of the memory's prompts, capped at the template's own (the common
    prefix of two sentinel keys), so it does not depend on which records a memory holds; each
    prompt keeps at least its last token. 0 when shorter than `SHARED_MIN`.
    """
    prompts = enc.prompt_ids
    sentinels = [prompt_ids(k, enc.tokenizer, enc.prompt) for k in ("0", "x")]
    n = min(min(map(len, prompts)) - 1, _common(sentinels))
    k = _common(prompts, n)
    return k if k >= SHARED_MIN else 0


def _common(seqs: Sequence[Sequence[int]], limit: int | None = None) -> int:
    first, n = seqs[0], min(map(len, seqs)) if limit is None else limit
    return next((k for k in range(n) if any(s[k] != first[k] for s in seqs)), n)


class TeacherForcer:
    """Answer logits of any rows of one memory, through the fast paths or the plain full-model pass.

    Args:
        base: the loaded base model (`memlaw.models.BaseModel`); the adapter, if any, is attached to it.
        enc: the encoded memory.
        start_layer: lowest decoder layer the adapter touches; the prefix below it is cached.
        cache_prefix: use the cached prefix (when start_layer > 0).
        answer_logits: apply the LM head at answer positions only.
        shared_prompt: run the prompt tokens every record shares once per pass (`shared_prompt_len`);
            `full_prompt()` turns it off for a while (certificate passes).
        shared_min_rows: a pass of fewer rows runs every prompt token in every row even with
            `shared_prompt` (`TrainConfig.shared_min_rows`: the shared row's extra decoder call costs more).
        plain: ignore all three and call the whole model as a user would (`model(input_ids).logits`).
        prefix: the hidden states entering `start_layer`, per record, of an earlier teacher-forcer on
            the same memory and base (its `.prefix`), so that they are not computed again.
    """

    def __init__(self, base, enc: Encoded, *, start_layer: int = 0, cache_prefix: bool = True,
                 answer_logits: bool = True, shared_prompt: bool = False, shared_min_rows: int = 1, plain: bool = False,
                 chunk: int = 64, prefix: list[Tensor] | None = None):
        self.base, self.enc = base, enc
        self.answer_only = answer_logits and not plain
        self.plain = plain
        self.start = start_layer if (cache_prefix and not plain) else 0
        self.shared = shared_prompt_len(enc) if shared_prompt and not plain else 0
        self.shared_min_rows = shared_min_rows
        self.pad = base.tokenizer.pad_token_id if base.tokenizer.pad_token_id is not None else 0
        if self.start > 0:
            self.prefix: list[Tensor] | None = prefix if prefix is not None else self._build_prefix(chunk)
        else:
            self.prefix = None

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
        seqs, _ = self.inputs(rows, batch)
        shared = self.shared if len(seqs) >= self.shared_min_rows else 0
        hidden = decoder_pass(self.base, seqs, self.start, shared)
        positions = (batch.positions - shared).clamp(min=0)          # padding points at 0
        if self.answer_only:
            return lm_logits(self.base, _at(hidden, positions)), batch
        return _at(lm_logits(self.base, hidden), positions), batch

    @contextmanager
    def full_prompt(self) -> Iterator[None]:
        """Inside, passes run every prompt token in every row (the pass certificates are defined on)."""
        shared, self.shared = self.shared, 0
        try:
            yield
        finally:
            self.shared = shared

    def inputs(self, rows: Sequence[int], batch: Batch | None = None) -> tuple[list[Tensor], Batch]:
        """Per row what the decoder pass starts from: cached hidden states (S_i, D) or token ids (S_i,)."""
        batch = collate(self.enc, list(rows), self.pad, self.base.device) if batch is None else batch
        if self.prefix is not None:
            return [self.prefix[i] for i in rows], batch
        return [batch.input_ids[b, : len(self.enc.prompt_ids[i]) + len(self.enc.answer_ids(i))]
                for b, i in enumerate(rows)], batch

    def batches(self, rows: Sequence[int], size: int) -> Iterator[list[int]]:
        rows = list(rows)
        for lo in range(0, len(rows), size):
            yield rows[lo: lo + size]


def _at(x: Tensor, positions: Tensor) -> Tensor:
    """x (B, S, K) gathered at positions (B, T) → (B, T, K)."""
    return x.gather(1, positions.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def decoder_pass(base, seqs: Sequence[Tensor], start: int = 0, shared: int = 0, groups: Sequence[int] | None = None,
                 on_pass: Callable[[bool], None] | None = None) -> Tensor:
    """Last hidden states (B, S - shared, D) of rows that start from `seqs`, right-padded to S.

    Args:
        seqs: per row its token ids (S_i,), or the hidden states entering layer `start` (S_i, D).
        start: layers below it are skipped (their output is what `seqs` holds).
        shared: the first `shared` positions are the same in every row of a group: they run once per
            group, as one row, and the group's rows continue from that row's key/value cache.
        groups: rows per group, in order (default: one group of all rows).
        on_pass: called before each decoder call with whether it is the shared rows' pass (multi-adapter
            training sets which adapter each row uses there).
    """
    decoder = base.model.model
    key = "inputs_embeds" if seqs[0].dim() == 2 else "input_ids"
    pad = 0 if key == "inputs_embeds" else (base.tokenizer.pad_token_id or 0)
    dev = seqs[0].device
    on_pass = on_pass or (lambda head: None)
    with swap_layers(base.layers, {i: _Skip() for i in range(start)}):
        if shared == 0:
            on_pass(False)
            x = pad_sequence(list(seqs), batch_first=True, padding_value=pad)
            return decoder(**{key: x}, use_cache=False).last_hidden_state
        groups = list(groups) if groups is not None else [len(seqs)]
        firsts = [sum(groups[:g]) for g in range(len(groups))]
        head = torch.stack([seqs[i][:shared] for i in firsts])              # (G, P) or (G, P, D)
        kw = cache_arg(decoder)
        cache = DynamicCache(config=base.model.config)
        on_pass(True)
        decoder(**{key: head, kw: cache}, position_ids=torch.arange(shared, device=dev)[None], use_cache=True)
        on_pass(False)
        sizes = torch.tensor(groups, device=dev)
        rows = DynamicCache(config=base.model.config)
        for i in range(len(base.layers)):   # layers below `start` never read theirs: it only sizes the mask
            src = cache.layers[max(i, start)]
            rows.update(src.keys.repeat_interleave(sizes, 0), src.values.repeat_interleave(sizes, 0), i)
        tail = pad_sequence([s[shared:] for s in seqs], batch_first=True, padding_value=pad)
        positions = torch.arange(shared, shared + tail.shape[1], device=dev)[None]
        return decoder(**{key: tail, kw: rows}, position_ids=positions, use_cache=True).last_hidden_state


def cache_arg(decoder) -> str:
    """The decoder's name for its key/value cache argument (`cache` from transformers 5.2x on)."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


def joint_logits(parts: Sequence[tuple[TeacherForcer, Sequence[int]]],
                 on_pass: Callable[[int, bool], None] | None = None) -> list[tuple[Tensor, Batch]]:
    """Answer logits for rows of several memories in ONE decoder pass (multi-adapter training).

    All teacher-forcers must share the base model, the cached-prefix layer and the answer-only
    setting. Their shared prompt runs once per part (one row each) when every part shares the same
    number of prompt tokens and the parts have the first's `shared_min_rows` rows in all, else not at
    all. `on_pass(shared, head)` is called before each decoder call (`decoder_pass`). Returns, per
    part, what `TeacherForcer.logits` would (up to batch-size numerics).
    """
    first = parts[0][0]
    if any(tf.base is not first.base or tf.start != first.start or tf.plain or not tf.answer_only
           for tf, _ in parts):
        raise ValueError("joint_logits needs teacher-forcers on one base with the same fast paths")
    shared = first.shared if all(tf.shared == first.shared for tf, _ in parts) else 0
    shared = shared if sum(len(rows) for _, rows in parts) >= first.shared_min_rows else 0
    seqs, batches = [], []
    for tf, rows in parts:
        x, batch = tf.inputs(rows)
        seqs.extend(x)
        batches.append(batch)
    hidden = decoder_pass(first.base, seqs, first.start, shared, [len(rows) for _, rows in parts],
                          None if on_pass is None else (lambda head: on_pass(shared, head)))
    T = max(b.positions.shape[1] for b in batches)
    positions = torch.cat([torch.nn.functional.pad(b.positions, (0, T - b.positions.shape[1])) for b in batches])
    logits = lm_logits(first.base, _at(hidden, (positions - shared).clamp(min=0)))
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


STATS_BLOCK = 8
"""Answer positions per block in `token_stats`: 8 float32 rows of a 49k vocabulary are 1.5 MB, in L2."""


def top_token(logits: Tensor) -> Tensor:
    """argmax over the last dimension as `max(-1).indices`: the same index as `argmax(-1)` (the first on
    ties, NaN wins as in argmax), faster than `argmax` on CPU in bf16 and float32 alike."""
    return logits.max(-1).indices


def token_stats(logits: Tensor, targets: Tensor, block: int = STATS_BLOCK) -> tuple[Tensor, Tensor]:
    """−log p_t (float32) and argmax == target of answer positions: logits (N, V), targets (N,) → (N,), (N,).

    A block of positions at a time, so the float32 copy stays in cache; log-softmax and argmax work
    per position, so the numbers are those of one call on all of them. The argmax (`top_token`) runs on
    the float32 copy (the same values and ties as the model-dtype logits).
    """
    block = block if logits.device.type == "cpu" else len(targets)      # one launch on a GPU
    nll = torch.empty(len(targets), dtype=torch.float32, device=logits.device)
    correct = torch.empty(len(targets), dtype=torch.bool, device=logits.device)
    for lo in range(0, len(targets), max(block, 1)):
        x, t = logits[lo: lo + block].float(), targets[lo: lo + block]
        nll[lo: lo + block] = -torch.log_softmax(x, dim=-1).gather(-1, t[:, None]).squeeze(-1)
        correct[lo: lo + block] = top_token(x) == t
    return nll, correct


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
        nll, correct = token_stats(logits[batch.mask], batch.targets[batch.mask])
        counts = batch.mask.sum(1).tolist()
        for i, p_nll, ok in zip(part, nll.split(counts), correct.split(counts)):
            out[i] = TokenProbs(torch.exp(-p_nll).cpu(), p_nll.cpu(), ok.cpu())
        if on_chunk is not None:
            on_chunk(out, len(rows))
    return out
