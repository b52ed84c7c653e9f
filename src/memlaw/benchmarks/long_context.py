"""Long-context stress test: one record, the paper's question → the first ℓ tokens of a document.

The document is natural text with a share `ratio` of its tokens replaced by random ones (r0: the
text; r100: all random). Two sources (reference_method §8.2, data README):

- `paper_document(ratio)`: the paper's files, built in Qwen3's token space and decoded to text.
  Under another tokenizer their token counts and ratios shift.
- `build_document(text, tokenizer, ratio, seed)`: the same construction in the current model's own
  token space, from any text: tokenise (N tokens), replace the tokens at the evenly spread
  positions pos_k = ⌊(k + ½)·N / M⌋, k = 0..M−1, M = round(ratio·N), by uniformly random regular
  token ids (seeded), and decode.

`long_context(tokenizer, length, ratio)` then gives the record whose value is the first ℓ = `length`
tokens of the document. A value must survive `decode(encode(value)) == value` (DESIGN §2), which a
raw token prefix need not: a cut can split a multi-byte character (byte-level BPE decodes it to
U+FFFD, which re-encodes to other tokens) or change how the last word pre-tokenises. So
`prefix_value` re-tokenises the decoded document and, trying cuts k = ℓ, ℓ+1, ℓ−1, ℓ+2, …, returns
the first decoded prefix that encodes to exactly ℓ tokens and decodes back to itself: the record
then has exactly ℓ value tokens and recall can be exact. When the ℓ-th token lies inside a
character spread over several tokens no prefix has exactly ℓ tokens, and the value stops before
that character (a few tokens short, logged; rows report the value tokens actually written).
Values are prefixes of the document text.

NUL characters are dropped from every document (records reject them; the paper's r80 file holds
one, at character 31,256, a random Qwen noise token for byte 0x00), and the builder never draws a
token whose decoding contains one.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import weakref
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

import numpy as np

from memlaw import bits
from memlaw.bits import ValueBits
from memlaw.errors import ConfigError, RecordError
from memlaw.records import Record

logger = logging.getLogger(__name__)

QUESTION = "Please output the content of the vector memory injected into the activations."
"""The paper's key for every long-context record."""
RATIOS = {"r0": 0.0, "r20": 0.2, "r40": 0.4, "r60": 0.6, "r80": 0.8, "r100": 1.0}
PAPER_FILES = {
    "r0": "sample_0_tok29709_noise_0.jsonl", "r20": "sample_0_tok29709_noise_20.jsonl",
    "r40": "sample_0_tok29709_noise_40.jsonl", "r60": "sample_0_tok29709_noise_60.jsonl",
    "r80": "sample_0_tok29709_noise_80.jsonl", "r100": "random.jsonl",
}  # fmt: skip
SEARCH = 16
"""How far (in tokens) `prefix_value` looks around ℓ for a cut that round-trips."""


@dataclass(frozen=True)
class Document:
    """A long-context document and how it was made."""

    question: str
    text: str
    ratio: float
    source: str                     # "paper:<file>" or "own:<tokenizer>"
    noise_positions: tuple[int, ...] = field(default=(), repr=False)
    """Replaced positions in the builder's token space (`own`), or the file's (Qwen3) positions."""
    n_tokens: int | None = None
    """N: tokens of the source text under the builder's tokenizer (`own`), else None."""
    ids: tuple[int, ...] = field(default=(), repr=False, compare=False)
    """The builder's token ids, noise in place (`own`), else (); the text is their decoding."""


def parse_ratio(ratio: str | float) -> tuple[str, float]:
    """("r20", 0.2) from "r20", "20", 0.2 or 20; other ratios in [0, 1] are allowed for `own` documents."""
    if isinstance(ratio, str):
        name = ratio.strip().lower()
        name = name if name.startswith("r") else f"r{name}"
        if name in RATIOS:
            return name, RATIOS[name]
        try:
            value = float(name[1:]) / 100
        except ValueError:
            raise ConfigError(f"ratio must be one of {', '.join(RATIOS)} or a number, got {ratio!r}") from None
    else:
        value = float(ratio) / 100 if ratio > 1 else float(ratio)
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"ratio must be in [0, 1] (r0..r100), got {ratio!r}")
    return f"r{round(value * 100):g}", value


# ---- the paper's files ----

def paper_path(ratio: str) -> Path:
    name, _ = parse_ratio(ratio)
    if name not in PAPER_FILES:
        raise ConfigError(f"the paper ships {', '.join(PAPER_FILES)}; {name} exists only as a built document")
    return Path(str(files("memlaw").joinpath(f"data/long_context/{PAPER_FILES[name]}")))


@lru_cache(maxsize=8)
def paper_document(ratio: str = "r100") -> Document:
    """The paper's document for `ratio` (r0, r20, …, r80, r100 = random.jsonl), NUL characters dropped."""
    path = paper_path(ratio)
    obj = json.loads(path.read_text(encoding="utf-8"))
    _, value = parse_ratio(ratio)
    return Document(obj["question"], _drop_nul(obj["matching"], str(path)), value, f"paper:{path.name}",
                    tuple(obj.get("noise_positions", ())))


def _drop_nul(text: str, where: str) -> str:
    if "\x00" in text:
        logger.info("%s: dropped %d NUL character(s) (records cannot hold them)", where, text.count("\x00"))
        return text.replace("\x00", "")
    return text


# ---- the builder, in the current model's token space ----

def noise_positions(n: int, ratio: float) -> list[int]:
    """pos_k = ⌊(k + ½)·N / M⌋ for k = 0..M−1, M = round(ratio·N): M evenly spread positions in [0, N)."""
    m = round(ratio * n)
    return [(2 * k + 1) * n // (2 * m) for k in range(m)]  # integer form of ⌊(k + ½)N/M⌋


def regular_token_ids(tokenizer) -> list[int]:
    """Token ids the builder may draw: the base vocabulary (no added or special token), none decoding to NUL.

    As the paper's noise (all 151,643 regular Qwen3 ids); ids that decode to partial UTF-8 stay in.
    """
    added = set(tokenizer.added_tokens_decoder) | set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in added]
    pieces = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return [i for i, piece in zip(ids, pieces) if "\x00" not in piece]


def replace_tokens(ids: list[int], positions: list[int], pool: list[int], seed: int = 0) -> list[int]:
    """`ids` with the token at each of `positions` replaced by a uniform draw from `pool` (seeded numpy PCG64)."""
    if not positions:
        return list(ids)
    draws = np.random.default_rng(seed).integers(0, len(pool), size=len(positions))
    noisy = np.asarray(ids, dtype=np.int64)
    noisy[positions] = np.asarray(pool, dtype=np.int64)[draws]
    return noisy.tolist()


def build_document(text: str, tokenizer, ratio: str | float, *, seed: int = 0, question: str = QUESTION) -> Document:
    """`text` with a share `ratio` of its tokens (under `tokenizer`) replaced by random regular tokens.

    Deterministic for (text, tokenizer, ratio, seed). The result is decoded to text; re-tokenising it
    can merge neighbours, so the realised share of random tokens in a prefix is close to, not exactly,
    `ratio` (exact where every replaced token is a whole word piece).
    """
    _, value = parse_ratio(ratio)
    ids = tokenizer(_drop_nul(text, "text"), add_special_tokens=False, verbose=False).input_ids
    if not ids:
        raise ConfigError("the long-context source text is empty")
    positions = noise_positions(len(ids), value)
    ids = replace_tokens(ids, positions, _pool(tokenizer) if positions else [], seed)
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    return Document(question, _decode(tokenizer, ids), value, f"own:{name}", tuple(positions), len(ids), tuple(ids))


_POOLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _pool(tokenizer) -> list[int]:
    """`regular_token_ids`, computed once per tokenizer object (49k decodes for SmolLM2)."""
    if tokenizer not in _POOLS:
        _POOLS[tokenizer] = regular_token_ids(tokenizer)
    return _POOLS[tokenizer]


_DRAW_BITS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def draw_bits(tokenizer) -> float:
    """Entropy in bits of the text one noise draw writes: t uniform over the pool (`regular_token_ids`),
    decode(t) counted by its characters, so ids that decode alike (byte pieces of a character that
    decode alone to U+FFFD) count once. At most log2 |pool|, the entropy of the draw itself."""
    if tokenizer not in _DRAW_BITS:
        pieces = tokenizer.batch_decode([[i] for i in _pool(tokenizer)], skip_special_tokens=False,
                                        clean_up_tokenization_spaces=False)
        n = len(pieces)
        _DRAW_BITS[tokenizer] = -math.fsum(c / n * math.log2(c / n) for c in Counter(pieces).values())
    return _DRAW_BITS[tokenizer]


def prefix_value(tokenizer, text: str, length: int, *, search: int = SEARCH) -> str:
    """The first `length` tokens of `text`, as a string that encodes to `length` tokens and decodes back.

    Tries the cuts k = ℓ, ℓ+1, ℓ−1, … (within `search`) of the re-tokenised text and returns the
    first decoded prefix that is a prefix of `text`, re-encodes to exactly ℓ tokens and decodes back
    to itself. When the
    ℓ-th token lies inside a character that takes several tokens (byte-level BPE: a CJK character,
    U+FFFD), no prefix has exactly ℓ tokens; the value then stops before that character (the longest
    round-tripping prefix under ℓ tokens, at most a character's tokens − 1 short), with a warning.
    Callers report the value tokens actually written (`Encoded.length`).

    Raises:
        RecordError: `text` is shorter than `length` tokens, or no cut within `search` tokens of ℓ
            round-trips.
    """
    if length < 1:
        raise ConfigError(f"length must be >= 1 token, got {length}")
    ids = _head_ids(tokenizer, text, length + search + 1)
    if len(ids) < length:
        raise RecordError(f"the document has {len(ids)} tokens under this tokenizer, fewer than ℓ = {length}")
    special = set(tokenizer.all_special_ids)
    shorter: tuple[int, str] | None = None
    for k in _cuts(length, search, len(ids)):
        value = _decode(tokenizer, ids[:k])
        again = tokenizer(value, add_special_tokens=False).input_ids
        if (not text.startswith(value) or not value.strip() or special.intersection(again)
                or _decode(tokenizer, again) != value):  # a cut inside a character decodes to U+FFFD
            continue
        if len(again) == length:
            return value
        if len(again) < length and (shorter is None or len(again) > shorter[0]):
            shorter = (len(again), value)
    if shorter is None:
        raise RecordError(f"no prefix of the document within {search} tokens of ℓ = {length} survives the "
                          f"tokenizer round trip; try another length")
    logger.warning("long-context: token %d falls inside a multi-token character; the value holds %d tokens, "
                   "not %d", length, shorter[0], length)
    return shorter[1]


def _head_ids(tokenizer, text: str, n: int, margin: int = 64) -> list[int]:
    """The first `n` ids of `tokenizer(text)`, tokenising only a prefix of `text` (long documents).

    Cutting the text changes only the tokens near the cut (the last pre-tokenised word), so a prefix
    that yields `margin` tokens more than needed gives the same first `n` ids.
    """
    chars = max(1024, 8 * (n + margin))
    while True:
        ids = tokenizer(text[:chars], add_special_tokens=False, verbose=False).input_ids
        if chars >= len(text) or len(ids) >= n + margin:
            return ids[:n]
        chars *= 2


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _cuts(length: int, search: int, n: int) -> list[int]:
    """ℓ, ℓ+1, ℓ−1, ℓ+2, ℓ−2, … within [1, n]."""
    order = [length + s * d for d in range(search + 1) for s in ((1,) if d == 0 else (1, -1))]
    return [k for k in order if 1 <= k <= n]


def long_context(tokenizer, length: int, ratio: str | float = "r100", *, source: str = "own",
                 text: str | None = None, seed: int = 0) -> list[Record]:
    """The one-record memory (the paper's question → the first ℓ tokens of the document).

    Args:
        tokenizer: the model's tokenizer; ℓ counts its tokens.
        length: ℓ, value tokens (the terminator is added by `encode`).
        ratio: r0, r20, …, r100 (or a number in [0, 1] for `own`).
        source: `own` (default): `build_document` in this tokenizer's space from `text`, or from the
            paper's r0 text when `text` is None. `paper`: the paper's file for `ratio` (Qwen3 noise).
        text: source text for `own`.
        seed: noise seed for `own`.
    """
    doc = document(tokenizer, ratio, source=source, text=text, seed=seed)
    return [Record(doc.question, prefix_value(tokenizer, doc.text, length))]


def build(tokenizer, length: int, *, ratio: str | float = "r100", source: str = "own",
          data_seed: int = 0) -> tuple[list[Record], list[Record]]:
    """The registry's `long-context`: `long_context` with the noise seeded by `data_seed`, nothing held out."""
    return long_context(tokenizer, length, ratio, source=source, seed=data_seed), []


def value_bits(tokenizer, records: list[Record], *, ratio: str | float = "r100", source: str = "own",
               data_seed: int = 0) -> ValueBits:
    """Bits of values built in this tokenizer's space (`source='own'`): for each random token of the
    document a value holds whole, the entropy of the text one uniform draw from the pool writes
    (`draw_bits`); 0 for the unreplaced text, which is the generator's own source (shipped in the
    package): its cost to the adapter shows in ΔL, not in bits.

    Exact where random tokens sit between text tokens (ratios up to r50). Where they neighbour each
    other (above r50) their bytes can also join across the boundary; the count stays at most the
    entropy of the draws themselves (log2 |pool| each), which bounds the text's from above.
    A token cut by the end of the value is not counted. `source='paper'` (noise drawn in Qwen3's
    token space, not countable under another tokenizer) gives an upper bound (`memlaw.bits.upper`).
    """
    name, fraction = parse_ratio(ratio)
    if source == "paper":
        return bits.upper(records, f"upper bound: the paper's {name} file holds noise drawn in Qwen3's token space")
    doc = document(tokenizer, ratio, source=source, seed=data_seed)
    if not doc.noise_positions:
        return bits.exact([0.0] * len(records), f"long-context {name}: no random token; the source text 0 bits")
    covered = [covered_tokens(tokenizer, doc.ids, r.value) for r in records]
    if any(k is None for k in covered):
        return bits.upper(records, f"upper bound: a {name} value does not align with the document's tokens")
    noise = [bisect.bisect_left(doc.noise_positions, k) for k in covered]
    per = draw_bits(tokenizer)
    basis = (f"long-context {name}: {sum(noise)} random tokens × {per:.3f} bits (a uniform draw from "
             f"{len(_pool(tokenizer)):,} regular tokens, as text); the source text 0 bits")
    if fraction > 0.5:                    # neighbouring draws can join across their boundary: a bound
        return bits.ValueBits(tuple(float(n * per) for n in noise), "upper",
                              f"upper bound (neighbouring random tokens can join as text): {basis}")
    return bits.exact([n * per for n in noise], basis)


def covered_tokens(tokenizer, ids: tuple[int, ...] | list[int], value: str, *, back: int = 4 * SEARCH) -> int | None:
    """How many leading `ids` `value` holds whole: the largest k with decode(ids[:k]) a prefix of `value`.

    Binary search on the decoded length, then back token by token (at most `back`) past a cut inside a
    character; None when no prefix within `back` tokens matches.
    """
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(_decode(tokenizer, list(ids[:mid]))) <= len(value):
            lo = mid
        else:
            hi = mid - 1
    for k in range(lo, max(-1, lo - back - 1), -1):
        if value.startswith(_decode(tokenizer, list(ids[:k]))):
            return k
    return None


def document(tokenizer, ratio: str | float = "r100", *, source: str = "own", text: str | None = None,
             seed: int = 0) -> Document:
    """The document `long_context` cuts its value from (cached for the paper's r0 text)."""
    if source == "paper":
        if text is not None:
            raise ConfigError("source 'paper' reads the paper's files; pass text only with source 'own'")
        return paper_document(parse_ratio(ratio)[0])
    if source != "own":
        raise ConfigError(f"long-context source must be 'own' or 'paper', got {source!r}")
    if text is None:
        return _own_from_paper(tokenizer, parse_ratio(ratio)[1], seed)
    return build_document(text, tokenizer, ratio, seed=seed)


_OWN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _own_from_paper(tokenizer, ratio: float, seed: int) -> Document:
    """The paper's r0 text rebuilt in this tokenizer's space, cached per tokenizer object."""
    docs = _OWN.setdefault(tokenizer, {})
    if (ratio, seed) not in docs:
        docs[ratio, seed] = build_document(paper_document("r0").text, tokenizer, ratio, seed=seed)
    return docs[ratio, seed]


__all__ = ["QUESTION", "RATIOS", "Document", "parse_ratio", "paper_document", "noise_positions",
           "regular_token_ids", "replace_tokens", "build_document", "prefix_value", "long_context", "document",
           "build", "value_bits", "covered_tokens", "draw_bits"]
