"""Locality (DESIGN §2): what an adapter costs the base model on prompts unrelated to its memory.

A fixed set of neutral prompts (`neutral_prompts()`, package data written for memlaw) is rendered
with the memory's own prompt spec (chat template or plain format, as its keys are). For each prompt,
c = the base model's greedy continuation: up to `new_tokens` tokens, cut after the first terminator
token (end-of-turn for chat, EOS for plain), as recall cuts answers. Then both the base model
(adapter disabled) and base + adapter, in eval mode (no dropout), are teacher-forced on prompt + c,
and at every position t < |c| of every prompt their next-token distributions over the whole
vocabulary are compared: P_t = p_base(· | prompt, c_<t) and Q_t = p_adapted(· | prompt, c_<t).

- `agreement`: the fraction of all (prompt, t) positions where argmax Q_t = argmax P_t
  (teacher-forced agreement: each position given the base's own earlier tokens).
- `identical`: the fraction of prompts where they agree at every t < |c|. By induction over t this
  is exactly "the adapted model's greedy continuation equals the base model's" (the certificate's
  argument: one teacher-forced pass decides greedy decoding), up to the numerics of cached decoding.
- `greedy_prefix`: Σ_prompts (first t where they disagree, or |c|) / Σ |c|: the share of the base's
  continuation tokens that the adapted model's greedy decoding reproduces before it first departs
  (free-run agreement; after the first departure the two continuations are no longer comparable).
- `kl_mean`: the mean over all (prompt, t) positions of KL_t = KL(P_t || Q_t) =
  Σ_v P_t(v) (log P_t(v) − log Q_t(v)), in nats (each position counts once); `kl_max` its largest
  value; `kl_first` the mean over prompts of KL_0, the distribution of the first new token.

Both models run the same kernels on the same batches, so an adapter that adds exactly zero (B = 0)
gives identical logits: agreement 1 and KL 0 exactly. The base model's continuations, the hidden
states below the adapter and the base model's logits on every continuation are computed once per
base model, prompt spec and adapter layer, and kept for the next call (a sweep measures every cell
against the same base; the logits while they fit in `KEEP_LOGITS_BYTES`): a call after the first
costs one teacher-forced pass from the adapter's lowest layer up, and gives the numbers the first
call's two passes give. Only numbers come out: no prompt text, continuation or record value is
returned or logged.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from importlib.resources import files

import torch
from transformers import DynamicCache

from memlaw.config import PromptConfig
from memlaw.encode import Encoded, prompt_ids, resolve_prompt
from memlaw.forward import STATS_BLOCK, TeacherForcer, cache_arg, top_token
from memlaw.records import Record
from memlaw.verify import greedy_steps

logger = logging.getLogger(__name__)

NEW_TOKENS = 32
"""Greedy tokens decoded per prompt (fewer where the base model ends its answer first)."""


@cache
def neutral_prompts() -> tuple[str, ...]:
    """The shipped neutral prompt set: 48 short general questions and requests, one a line
    (`memlaw/data/locality/neutral_prompts.txt`, MIT, written for memlaw)."""
    text = files("memlaw").joinpath("data/locality/neutral_prompts.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line.strip())


@dataclass(frozen=True, slots=True)
class Locality:
    """Base model against base + adapter on neutral prompts (see the module doc for the definitions)."""

    n_prompts: int
    new_tokens: int          # the greedy limit per prompt
    positions: int           # Σ |c|: the base continuations' tokens, where everything is measured
    identical: float         # fraction of prompts whose greedy continuation the adapter leaves unchanged
    agreement: float         # fraction of positions where the two models' teacher-forced argmax tokens agree
    greedy_prefix: float     # share of the base's continuation tokens reproduced before the first departure
    kl_mean: float           # mean KL(base || adapted) per position, nats
    kl_max: float
    kl_first: float          # mean over prompts of the KL at the first new token
    wall_s: float

    def summary(self) -> dict:
        return asdict(self)


KEEP_LOGITS_BYTES = 1 << 30
"""The base model's logits on the continuations are kept between calls while all those kept (one set per
adapter layer) fit in this size (SmolLM2's: at most 48 × 32 positions × 49,152 tokens in bf16, 151 MB a layer);
a layer whose logits do not fit runs the base side in every call."""

_KEPT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Per base model (the module, weakly held; the values hold no reference to it): `prompt_set` key (prompt
ids, new tokens, stop, threads) -> the base's continuations; (*key, start layer) -> the hidden states entering
that layer; "logits" -> {(*key, start layer, batch size) -> per prompt the base's logits on its continuation
and their argmax}; "expected" -> (key, fetch) from `expect_continuations`."""


@dataclass(frozen=True, slots=True)
class Continuations:
    """The base model's greedy continuations of one prompt set, as `locality` decodes them: what a process
    holding the same model takes with `keep_continuations` instead of decoding them itself. Token ids
    only (the prompts are the shipped neutral set or the caller's), no record values."""

    key: tuple                   # `prompt_set`: which prompts, limit, terminator and thread count
    tokens: list[list[int]]      # per prompt its continuation


def prompt_set(base, prompt: PromptConfig, terminator: Sequence[int], *, prompts: Sequence[str] | None = None,
               new_tokens: int = NEW_TOKENS, threads: int | None = None) -> tuple:
    """The key under which `locality` keeps what it computes for these prompts on `base`: (prompt ids in
    `prompt`'s spec, new tokens, the terminator's first id, torch threads). The thread count is in it because
    on a CPU it changes the decoding's numbers (SmolLM2-135M's bf16 continuations differ between one
    and two threads); `threads` is the count the key is for (default: this thread's)."""
    spec = resolve_prompt(prompt, base.tokenizer)
    texts = neutral_prompts() if prompts is None else prompts
    ids = tuple(tuple(prompt_ids(t, base.tokenizer, spec)) for t in texts)
    return ids, new_tokens, terminator[0], torch.get_num_threads() if threads is None else threads


def decode_continuations(base, key: tuple) -> Continuations:
    """The base model's (no adapter attached) greedy continuations of the prompt set `key` (`prompt_set`),
    decoded now, on the calling thread with torch's thread count set to the key's."""
    ids, new_tokens, stop, threads = key
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return Continuations(key, greedy_padded(base, ids, new_tokens, stop))
    finally:
        torch.set_num_threads(before)


def keep_continuations(base, continuations: Continuations) -> None:
    """Give `locality` on `base` the continuations another process decoded (`decode_continuations` on the
    same model and dtype), so it does not decode them again."""
    kept = _KEPT.setdefault(base.model, {})
    if continuations.key not in kept:
        kept.clear()                        # one prompt set at a time: a sweep uses one
        kept[continuations.key] = continuations.tokens


def expect_continuations(base, key: tuple, fetch: Callable[[], Continuations | None]) -> None:
    """Have `locality`'s first call on `base` that needs the prompt set `key` take its continuations from
    `fetch` (e.g. a message from a process decoding them meanwhile) instead of decoding them; where
    `fetch` gives None, it decodes them itself."""
    _KEPT.setdefault(base.model, {})["expected"] = (key, fetch)


def _continuations(base, key: tuple) -> list[list[int]]:
    """The kept continuations of the prompt set `key`: taken from an expected `fetch`, else decoded, the
    first time on this base model."""
    kept = _KEPT.setdefault(base.model, {})
    if key not in kept:
        expected = kept.pop("expected", None)
        got = expected[1]() if expected is not None and expected[0] == key else None
        keep_continuations(base, got if got is not None and got.key == key else decode_continuations(base, key))
    return kept[key]


def _reference(base, enc_parts: tuple, key: tuple, start_layer: int) -> tuple[TeacherForcer, dict]:
    """A teacher-forcer on prompt + the base model's greedy continuations of the prompt set `key`
    (computed once per base model), with the base model's store of kept results."""
    continuations = _continuations(base, key)
    kept = _KEPT[base.model]
    texts, spec, tok = enc_parts
    ids = [list(p) for p in key[0]]
    # prompt + c as a memory whose "answers" are the continuations (no terminator appended: c has its own)
    enc = Encoded([Record(t, "") for t in texts], spec, [], ids, continuations, tok)
    tf = TeacherForcer(base, enc, start_layer=start_layer, prefix=kept.get((*key, start_layer)))
    if tf.prefix is not None:
        kept[(*key, start_layer)] = tf.prefix
    return tf, kept


@torch.no_grad()
def locality(base, adapter, prompt: PromptConfig, terminator: Sequence[int], *,
             prompts: Sequence[str] | None = None, new_tokens: int = NEW_TOKENS, batch_size: int = 16) -> Locality:
    """Compare the base model with base + `adapter` (attached) on neutral prompts.

    Args:
        base: the loaded base model with `adapter` attached.
        adapter: the attached adapter; it is put in eval mode and disabled for the base model's passes.
        prompt: the memory's prompt spec (how its keys are rendered); the neutral prompts stand in for keys.
        terminator: the memory's answer terminator ids; continuations are cut after its first token.
        prompts: the prompt texts (default: `neutral_prompts()`).
        new_tokens: greedy tokens per prompt.
        batch_size: prompts per teacher-forced pass.
    """
    t0 = time.perf_counter()
    tok = base.tokenizer
    spec = resolve_prompt(prompt, tok)
    texts = list(neutral_prompts() if prompts is None else prompts)
    key = prompt_set(base, spec, terminator, prompts=texts, new_tokens=new_tokens)
    ids = key[0]
    adapter.eval()
    with adapter.disabled():                 # the base's continuations and the hidden states below the adapter
        tf, kept = _reference(base, (texts, spec, tok), key, adapter.first_layer)
    logits = kept.setdefault("logits", {})
    ref_key = (*key, adapter.first_layer, batch_size)
    ref: list[tuple[torch.Tensor, torch.Tensor]] = logits.get(ref_key, [])   # per prompt: base logits, argmax
    kls, agree = [], []
    for rows in tf.batches(range(len(ids)), batch_size):
        if len(ref) < len(ids):
            with adapter.disabled():
                p_logits, batch = tf.logits(rows)
            for b in range(len(rows)):
                p = p_logits[b, : int(batch.mask[b].sum())].clone()
                ref.append((p, top_token(p)))
        q_logits, _ = tf.logits(rows)
        for b, i in enumerate(rows):
            p, p_top = ref[i]
            kls.append(kl_divergence(p, q_logits[b, : len(p)]))
            agree.append(p_top == top_token(q_logits[b, : len(p)]))
    size = sum(p.nbytes for v in (*logits.values(), ref) for p, _ in v)
    if ref_key not in logits and size <= KEEP_LOGITS_BYTES:
        logits[ref_key] = ref
    flat, hits = torch.cat(kls), torch.cat(agree)
    lengths = [len(a) for a in agree]
    prefix = sum(int(a.long().cumprod(0).sum()) for a in agree)        # positions before the first disagreement
    out = Locality(n_prompts=len(ids), new_tokens=new_tokens, positions=sum(lengths),
                   identical=sum(bool(a.all()) for a in agree) / len(agree), agreement=float(hits.double().mean()),
                   greedy_prefix=prefix / sum(lengths), kl_mean=float(flat.mean()), kl_max=float(flat.max()),
                   kl_first=float(torch.stack([k[0] for k in kls]).mean()), wall_s=time.perf_counter() - t0)
    logger.info("locality: %d prompts, %d positions, identical %.3f, agreement %.3f, mean KL %.3g nats (%.1f s)",
                out.n_prompts, out.positions, out.identical, out.agreement, out.kl_mean, out.wall_s)
    return out


@torch.no_grad()
def greedy_padded(base, prompts: Sequence[Sequence[int]], new_tokens: int, stop_id: int,
                  batch_size: int = 16) -> list[list[int]]:
    """Batched greedy decoding of prompts of any lengths: left-padded, with an attention mask and
    position ids that skip the padding, one prefill and one cached step per token.

    `memlaw.verify.greedy` batches only prompts of equal length (no padding at all, the numerics recall
    is certified under); neutral prompts all differ in length, and one batch per length made the
    locality check several times slower. The LM head and the argmax loop are greedy recall's
    (`memlaw.verify.greedy_steps`). Each output is cut after its first `stop_id`.
    """
    decoder = base.model.model
    pad = base.tokenizer.pad_token_id if base.tokenizer.pad_token_id is not None else stop_id
    outputs: list[list[int]] = []
    for lo in range(0, len(prompts), batch_size):
        part = [list(p) for p in prompts[lo: lo + batch_size]]
        B, P = len(part), max(map(len, part))
        ids = torch.full((B, P), pad, dtype=torch.long)
        mask = torch.zeros((B, P), dtype=torch.long)
        for b, p in enumerate(part):
            ids[b, P - len(p):] = torch.tensor(p)
            mask[b, P - len(p):] = 1
        ids, mask = ids.to(base.device), mask.to(base.device)
        position = (mask.cumsum(1) - 1).clamp(min=0)
        kw = {cache_arg(decoder): DynamicCache(config=base.model.config), "use_cache": True}
        hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=position, **kw).last_hidden_state[:, -1]
        step = _padded_step(decoder, kw, mask, position[:, -1:])
        for row in greedy_steps(base, hidden, new_tokens, stop_id, step).tolist():
            outputs.append(row[: row.index(stop_id) + 1] if stop_id in row else row)
    return outputs


def _padded_step(decoder, kw: dict, mask: torch.Tensor, position: torch.Tensor):
    """`step` for `greedy_steps` on left-padded rows: each new token extends the attention mask (B, T)
    and takes the next position id after its row's last one (B, 1)."""
    def step(token: torch.Tensor) -> torch.Tensor:
        nonlocal mask, position
        mask = torch.cat([mask, mask.new_ones(len(token), 1)], 1)
        position = position + 1
        return decoder(input_ids=token[:, None], attention_mask=mask, position_ids=position,
                       **kw).last_hidden_state[:, -1]
    return step


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor, block: int = STATS_BLOCK) -> torch.Tensor:
    """KL(softmax(p) || softmax(q)) per row, in nats: (T, V) logits of each -> (T,) float64.

    Log-softmax in float32, the sum over the vocabulary in float64. Identical logits give exactly 0
    (log P − log Q is 0 at every entry). `block` rows at a time, so the float32 copies stay in cache
    (faster than all rows at once on this CPU); every row's numbers are those of one call on all rows.
    """
    out = torch.empty(len(p_logits), dtype=torch.float64, device=p_logits.device)
    for lo in range(0, len(p_logits), max(block, 1)):
        logp = torch.log_softmax(p_logits[lo: lo + block].float(), dim=-1)
        logq = torch.log_softmax(q_logits[lo: lo + block].float(), dim=-1)
        out[lo: lo + block] = (logp.exp() * (logp - logq)).sum(-1, dtype=torch.float64)
    return out


__all__ = ["Locality", "locality", "Continuations", "prompt_set", "decode_continuations",
           "keep_continuations", "expect_continuations", "neutral_prompts", "kl_divergence", "greedy_padded", "NEW_TOKENS", "KEEP_LOGITS_BYTES"]
