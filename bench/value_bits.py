"""The bits a value holds under its generator, against the old per-character count (docs/benchmarks.md).

Prints, per tokenizer, the long-context noise pool (regular token ids), log2 of its size (the entropy
of one draw) and `draw_bits` (the entropy of the text one draw writes: ids that decode alike count
once); then the bits of the long-context values of a few lengths and ratios, and PhoneBook's count.
Tokenizers only: no model weights are loaded (an embedded model is built into the cache once if absent).

    python bench/value_bits.py --models smollm2-135m
"""

from __future__ import annotations

import argparse
import math

from transformers import AutoTokenizer

from memlaw.benchmarks import build, value_bits
from memlaw.benchmarks.long_context import draw_bits, regular_token_ids
from memlaw.benchmarks.phonebook import PHONE_BITS, PHONEBOOK_SIZE
from memlaw.models import EMBEDDED, ensure_cached


def tokenizer(name: str):
    return AutoTokenizer.from_pretrained(ensure_cached(name) if name in EMBEDDED else name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m"])
    ap.add_argument("--lengths", nargs="+", type=int, default=[50, 200, 500])
    ap.add_argument("--ratios", nargs="+", default=["r100", "r60", "r20"])
    args = ap.parse_args()

    print("| model | pool (regular ids) | log2 pool | draw_bits | draw_bits / log2 pool |")
    print("|---|---|---|---|---|")
    toks = {name: tokenizer(name) for name in args.models}
    for name, tok in toks.items():
        pool, per = len(regular_token_ids(tok)), draw_bits(tok)
        print(f"| {name} | {pool:,} | {math.log2(pool):.3f} | {per:.3f} | {per / math.log2(pool):.4f} |")
    print()
    print("| model | ratio | ℓ | random tokens held | bits | bits / ℓ |")
    print("|---|---|---|---|---|---|")
    for name, tok in toks.items():
        for ratio in args.ratios:
            for length in args.lengths:
                records, _ = build("long-context", tok, length, ratio=ratio)
                counted = value_bits("long-context", tok, records, ratio=ratio)
                held = round(counted.total / draw_bits(tok))
                print(f"| {name} | {ratio} | {length} | {held} | {counted.total:.1f} | {counted.total / length:.3f} |")
    print()
    sliver = PHONEBOOK_SIZE ** 2 / (2 * 4e9 * math.log(2))
    print(f"PhoneBook: {PHONE_BITS:.4f} bits a number (old count 10·log2 10 = {10 * math.log2(10):.4f}); "
          f"distinctness takes < {sliver:.3f} bits off the joint entropy of all {PHONEBOOK_SIZE:,}")


if __name__ == "__main__":
    main()
