"""Records → token ids: the prompt a key is shown as, the answer tokens (value + terminator), batches.

DESIGN §2. The prompt spec is saved with the adapter so that recall renders exactly the token ids
training used. Answer tokens are the value's own tokens followed by the terminator (the chat
template's end-of-turn tokens, or EOS for `plain`); the loss covers answer tokens only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from memlaw.config import PromptConfig
from memlaw.errors import ConfigError, RecordError
from memlaw.records import Record, shorten

_SENTINEL = "MEMLAWSENTINELVALUE"


def resolve_prompt(prompt: PromptConfig, tokenizer) -> PromptConfig:
    """Fill in `template`: `chat` where the tokenizer has a chat template, else `plain`."""
    if prompt.template is not None:
        if prompt.template == "chat" and not getattr(tokenizer, "chat_template", None):
            raise ConfigError("prompt template 'chat' asked for, but this tokenizer has no chat template; use 'plain'")
        return prompt
    template = "chat" if getattr(tokenizer, "chat_template", None) else "plain"
    return dataclasses.replace(prompt, template=template)


def _adds_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("x").input_ids[:1] == [bos]


def _messages(prompt: PromptConfig, key: str) -> list[dict[str, str]]:
    system = [{"role": "system", "content": prompt.system}] if prompt.system is not None else []
    return [*system, {"role": "user", "content": prompt.format.format(key=key)}]


def prompt_ids(key: str, tokenizer, prompt: PromptConfig) -> list[int]:
    """Token ids of the prompt for `key`, with exactly one BOS where the model uses one."""
    if prompt.template == "chat":
        text = tokenizer.apply_chat_template(_messages(prompt, key), add_generation_prompt=True, tokenize=False)
    else:
        text = prompt.format.format(key=key)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    bos = tokenizer.bos_token_id
    if _adds_bos(tokenizer) and ids[:1] != [bos]:
        ids = [bos, *ids]
    while bos is not None and ids[:2] == [bos, bos]:  # templates that write BOS themselves
        ids = ids[1:]
    return ids


def terminator_ids(tokenizer, prompt: PromptConfig) -> list[int]:
    """The tokens that end an answer: the chat template's end-of-turn suffix, or EOS for `plain`."""
    if prompt.template == "chat":
        msgs = [*_messages(prompt, "k"), {"role": "assistant", "content": _SENTINEL}]
        text = tokenizer.apply_chat_template(msgs, tokenize=False)
        suffix = text[text.rindex(_SENTINEL) + len(_SENTINEL):]
        ids = tokenizer(suffix, add_special_tokens=False).input_ids if suffix else []
        if ids:
            return ids
    if tokenizer.eos_token_id is None:
        raise ConfigError("the tokenizer has no EOS token and the prompt no end-of-turn: answers cannot end")
    return [tokenizer.eos_token_id]


@dataclass
class Encoded:
    """A memory in token space: per record the prompt ids and the value ids; shared terminator."""

    records: list[Record]
    prompt: PromptConfig
    terminator: list[int]
    prompt_ids: list[list[int]]
    value_ids: list[list[int]] = field(repr=False)   # decode to the values: never in a repr
    tokenizer: Any = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.records)

    def answer_ids(self, i: int) -> list[int]:
        return self.value_ids[i] + self.terminator

    @property
    def length(self) -> int:
        """ℓ: value tokens summed over the records, terminator excluded (the paper's PB<N>)."""
        return sum(len(v) for v in self.value_ids)

    @property
    def terminator_tokens(self) -> int:
        return len(self.terminator) * len(self.records)


def encode(records: Sequence[Record], tokenizer, prompt: PromptConfig, *, max_length: int | None = None) -> Encoded:
    """Tokenize a memory and check that every value can be recalled exactly.

    Raises:
        RecordError: (naming the record's file:line, never its value) when a value does not survive
            `decode(encode(value)) == value`, contains a special token, or the record is longer
            than `max_length` tokens; or when two keys render to the same prompt token ids (a
            tokenizer that normalizes Unicode, a template that trims), naming both keys' places.
    """
    prompt = resolve_prompt(prompt, tokenizer)
    term = terminator_ids(tokenizer, prompt)
    special = set(tokenizer.all_special_ids)
    p_ids, v_ids = [], []
    rendered: dict[tuple[int, ...], tuple[str, str]] = {}     # prompt ids -> (key, where) of the first record
    for i, rec in enumerate(records):
        where = rec.where or f"record {i + 1}"
        if max_length is not None and _surely_longer(rec.value, tokenizer, max_length):
            raise RecordError(f"{where}: record of key {shorten(rec.key)} has a value of more than {max_length} "
                              f"tokens, more than the model's context of {max_length}")
        ids = tokenizer(rec.value, add_special_tokens=False).input_ids
        if tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) != rec.value:
            raise RecordError(f"{where}: value of key {shorten(rec.key)} does not survive the tokenizer round trip "
                              "(decode(encode(value)) != value), so it cannot be recalled exactly")
        if special.intersection(ids):
            raise RecordError(f"{where}: value of key {shorten(rec.key)} contains a special token of this tokenizer")
        pid = prompt_ids(rec.key, tokenizer, prompt)
        first = rendered.setdefault(tuple(pid), (rec.key, where))
        if first[1] != where:
            raise RecordError(f"{where}: key {shorten(rec.key)} renders to the same prompt tokens as key "
                              f"{shorten(first[0])} at {first[1]} (the tokenizer or the prompt template drops what "
                              f"tells them apart: Unicode normalization, whitespace), so the model cannot hold both; "
                              f"remove or rename one")
        n = len(pid) + len(ids) + len(term)
        if max_length is not None and n > max_length:
            raise RecordError(f"{where}: record of key {shorten(rec.key)} is {n} tokens, more than the model's context of {max_length}")
        p_ids.append(pid)
        v_ids.append(ids)
    return Encoded(list(records), prompt, term, p_ids, v_ids, tokenizer)


def _surely_longer(text: str, tokenizer, limit: int, chars_per_token: int = 8) -> bool:
    """True when `text` has more than `limit` tokens, found by tokenizing a prefix only.

    A 4 MB value takes about 16 s and 1.8 GB to tokenize whole (SmolLM2's tokenizer, CPU); its
    first `chars_per_token · limit` characters decide in a fraction of that. Text with more
    characters per token than that gets False and is tokenized whole, as before. The margin covers
    the last word, which the cut may split into more tokens than the whole text gives it.
    """
    cut = chars_per_token * limit
    if len(text) <= cut:
        return False
    return len(tokenizer(text[:cut], add_special_tokens=False).input_ids) > limit + 64


@dataclass
class Batch:
    """Teacher-forced batch, right-padded. Row b's answer token t is predicted at `positions[b, t]`."""

    rows: Tensor       # (B,) record indices
    input_ids: Tensor  # (B, S) prompt + answer, right-padded
    positions: Tensor  # (B, T) positions whose logits predict the answer tokens (0 at padding)
    targets: Tensor    # (B, T) answer token ids (0 at padding)
    mask: Tensor       # (B, T) True at real answer tokens
    n_value: Tensor    # (B,) value tokens per row (the rest of the row's answer is the terminator)


def collate(enc: Encoded, rows: Sequence[int], pad_id: int, device: torch.device | str = "cpu") -> Batch:
    """Right-pad the rows' prompt + answer. Causal attention never lets a real token see padding."""
    seqs = [enc.prompt_ids[i] + enc.answer_ids(i) for i in rows]
    answers = [enc.answer_ids(i) for i in rows]
    S, T = max(map(len, seqs)), max(map(len, answers))
    input_ids = torch.full((len(rows), S), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), T), dtype=torch.long)
    targets = torch.zeros((len(rows), T), dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.bool)
    for b, (i, seq, ans) in enumerate(zip(rows, seqs, answers)):
        P = len(enc.prompt_ids[i])
        input_ids[b, : len(seq)] = torch.tensor(seq)
        positions[b, : len(ans)] = torch.arange(P - 1, P - 1 + len(ans))
        targets[b, : len(ans)] = torch.tensor(ans)
        mask[b, : len(ans)] = True
    n_value = torch.tensor([len(enc.value_ids[i]) for i in rows])
    rows_t = torch.tensor(list(rows), dtype=torch.long)
    return Batch(*(t.to(device) for t in (rows_t, input_ids, positions, targets, mask, n_value)))
