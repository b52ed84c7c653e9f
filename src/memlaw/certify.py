"""The certificate's pass: p_t of every answer token of a memory, no gradients, the plain pass's numbers.

DESIGN §2: one teacher-forced pass decides the certificate (`memlaw.certificate` holds its rules).
This computes what the plain full-prompt pass computes (`TeacherForcer(..., plain=True)`), with
less work:

- rows of equal length run together, so nothing is padded. The length is prompt + answer − 1: the
  last answer token is a target only, and its input position predicts nothing;
- the prompt tokens every record shares (the chat template's head, `shared_prompt_len`: 14 of
  PhoneBook's 37 tokens on SmolLM2) run once per call, inside one full row of `HEAD_ROW` tokens, and
  every row continues from its key/value cache. Inside a longer row, not alone: sdpa's CPU kernel
  rounds a causal sequence shorter than 16 tokens differently from the same positions of a longer
  one, and a head run alone moved bf16 p_t by up to 0.025 on SmolLM2; inside the row they get the
  numbers every full row gives them (matmuls give a row the same numbers in any batch);
- the LM head runs at answer positions only, and the vocabulary-sized work (float32 copy,
  log-softmax, argmax) a few positions at a time, so it stays in cache (`forward.token_stats`).

A record's p_t depend on nothing but the record (not on the rows it shares a batch with, as a padded
pass's do in bf16). Tolerances against the plain pass: tests/test_certify.py.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch
from torch import Tensor
from transformers import DynamicCache

from memlaw.encode import Encoded
from memlaw.forward import TokenProbs, cache_arg, lm_logits, shared_prompt_len, token_stats


def _lengths(enc: Encoded, rows: Sequence[int]) -> dict[int, list[int]]:
    """Rows by the length of what they feed the model (prompt + answer without its last token)."""
    out: dict[int, list[int]] = defaultdict(list)
    for i in rows:
        out[len(enc.prompt_ids[i]) + len(enc.answer_ids(i)) - 1].append(i)
    return dict(sorted(out.items()))


HEAD_ROW = 64
"""Length of the one row the shared head's keys and values are taken from: the head's tokens, then any
tokens (causal attention keeps them from the head). Fixed, so the head's numbers are the same
whichever rows a call checks, and past the 16 tokens under which sdpa rounds a sequence differently."""


def _head(base, enc: Encoded, shared: int) -> list[tuple[Tensor, Tensor]] | None:
    """Per layer the keys and values (1, heads, shared, head_dim) of the `shared` prompt tokens every
    record starts with, from a full pass of one row; None where a sliding-window cache would drop some."""
    length = max(HEAD_ROW, shared)
    longest = max(len(p) + len(enc.answer_ids(i)) for i, p in enumerate(enc.prompt_ids))
    window = getattr(base.model.config, "sliding_window", None)
    if shared == 0 or (window is not None and max(length, longest) > window):
        return None
    first = enc.prompt_ids[0] + enc.answer_ids(0)                  # after the head, any tokens do
    tokens = (first * (length // len(first) + 1))[:length]
    decoder = base.model.model
    cache = DynamicCache(config=base.model.config)
    decoder(input_ids=torch.tensor([tokens], device=base.device), **{cache_arg(decoder): cache},
            use_cache=True)
    return [(layer.keys[:, :, :shared], layer.values[:, :, :shared]) for layer in cache.layers]


@torch.no_grad()
def certificate_probs(base, enc: Encoded, rows: Sequence[int] | None = None, batch_size: int = 64, *,
                      on_chunk: Callable[[dict[int, TokenProbs], int], None] | None = None) -> dict[int, TokenProbs]:
    """p_t, −log p_t and argmax correctness of every answer token of `rows` (default: all records).

    Args:
        base: the base model, with the adapter (if any) attached and in eval mode.
        enc: the encoded memory.
        rows: record indices.
        batch_size: rows per decoder call.
        on_chunk: called with (probs so far, number of rows) after each batch (progress lines).
    """
    rows = list(range(len(enc))) if rows is None else list(rows)
    decoder, dev = base.model.model, base.device
    head = _head(base, enc, shared_prompt_len(enc))
    shared = 0 if head is None else head[0][0].shape[2]
    chunks = []
    for length, idx in _lengths(enc, rows).items():
        ids = torch.tensor([(enc.prompt_ids[i] + enc.answer_ids(i))[:length] for i in idx], device=dev)
        chunks += [(length, idx[lo: lo + batch_size], ids[lo: lo + batch_size]) for lo in range(0, len(idx), batch_size)]

    @torch.no_grad()                               # grad mode is per thread: the workers' too
    def one(chunk) -> dict[int, TokenProbs]:
        length, part, tail = chunk
        if head is None:
            hidden = decoder(input_ids=tail, use_cache=False).last_hidden_state
        else:
            cache = DynamicCache(config=base.model.config)
            for n, (k, v) in enumerate(head):
                cache.update(k.expand(len(tail), -1, -1, -1), v.expand(len(tail), -1, -1, -1), n)
            positions = torch.arange(shared, length, device=dev)[None]
            hidden = decoder(input_ids=tail[:, shared:], **{cache_arg(decoder): cache}, position_ids=positions,
                             use_cache=True).last_hidden_state
        return _answer_stats(base, enc, part, hidden, shared)

    out: dict[int, TokenProbs] = {}
    with side_by_side(dev, len(chunks)) as run:
        for got in run(one, chunks):
            out.update(got)
            if on_chunk is not None:
                on_chunk(out, len(rows))
    return out


@contextmanager
def side_by_side(device: torch.device, chunks: int) -> Iterator[Callable]:
    """A `map` over independent chunks of a pass. On a CPU with several torch threads, each chunk runs in a
    thread of its own with torch on one thread, results in order; else one chunk after another here.

    On a small CPU torch's own threads split each operator of a chunk and wait at its end (two threads
    certified 1.25× one, docs/performance.md); whole chunks side by side do not wait. A chunk's numbers
    are then those of a one-thread pass, whatever the thread count. The chunk function must enable
    no_grad itself (grad mode is per thread).
    """
    threads = torch.get_num_threads()
    if torch.device(device).type != "cpu" or chunks <= 1 or threads <= 1:
        yield map
        return
    torch.set_num_threads(1)                       # torch's setting is the process's: every worker runs one
    try:
        with ThreadPoolExecutor(min(threads, chunks)) as pool:
            yield pool.map
    finally:
        torch.set_num_threads(threads)


def _answer_stats(base, enc: Encoded, part: list[int], hidden: Tensor, shared: int) -> dict[int, TokenProbs]:
    """TokenProbs of `part`'s rows from their last hidden states (B, length − shared, D)."""
    at, targets, counts = [], [], []
    for b, i in enumerate(part):
        answer = enc.answer_ids(i)
        first = len(enc.prompt_ids[i]) - 1 - shared          # position predicting the first answer token
        at.append(hidden[b, first: first + len(answer)])
        targets.extend(answer)
        counts.append(len(answer))
    logits = lm_logits(base, torch.cat(at))                   # (N, V): answer positions only
    nll, correct = token_stats(logits, torch.tensor(targets, device=logits.device))
    out = {}
    for i, p_nll, ok in zip(part, nll.split(counts), correct.split(counts)):
        out[i] = TokenProbs(torch.exp(-p_nll).cpu(), p_nll.cpu(), ok.cpu())
    return out


__all__ = ["certificate_probs", "side_by_side"]
