"""Verify throughput: certify 1,000 PhoneBook records and greedy-recall them, batched and one at a time.

The adapter is a random nonzero probe (rank 16 at the model's default layer, B ~ N(0, 0.02²)):
certifying costs the same whether a record certifies or not (one teacher-forced pass), and greedy
decoding is asked for exactly the answer's length, as `verify` does; the table shows how many
tokens were generated per record, so an early terminator would be visible.

Rows, each timed in this one process on one resident model:
- certify, batched: `verify(recall=False)`, batches of `--batch` (cached prefix, answer-only logits);
- certify, one at a time: one full forward pass per record (a subset of `--single` records);
- greedy, batched: `verify.greedy`, the KV-cache loop, prompts of equal length batched;
- greedy, batched, HF generate: the same batches through transformers' `generate` (same tokens);
- greedy, one at a time: one record per call (the subset), with the loop and with `generate`;
- verify, batched: certify + greedy recall, what `memlaw verify` and every sweep cell run.

    python bench/verify_speed.py                     # SmolLM2-135M
    python bench/verify_speed.py --model tiny        # the tiny random model (shows it works)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from machine import machine
from memlaw.adapters import make_adapter
from memlaw.benchmarks.phonebook import phonebook
from memlaw.config import AdapterConfig, PromptConfig
from memlaw.encode import encode
from memlaw.forward import TeacherForcer
from memlaw.models import load_base, resolve_device
from memlaw.forward import answer_probs
from memlaw.verify import greedy, verify


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--n", type=int, default=1000, help="PhoneBook records")
    ap.add_argument("--single", type=int, default=50, help="records timed one at a time")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rank", type=int, default=16)
    args = ap.parse_args()
    device = resolve_device(args.device)
    base = load_base(args.model, dtype=args.dtype, device=device)
    prompt = PromptConfig(template="plain") if args.model == "tiny" else PromptConfig()
    enc = encode(phonebook(args.n), base.tokenizer, prompt, max_length=base.context_length)
    adapter = make_adapter(AdapterConfig(kind="probe", rank=args.rank, layer=1 if args.model == "tiny" else None),
                           base, seed=0)
    with torch.no_grad():
        adapter.B.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(0))
    adapter.attach(base)
    adapter.eval()
    stop = enc.terminator[0]
    limits = [len(enc.answer_ids(i)) for i in range(len(enc))]
    sub = list(range(min(args.single, len(enc))))
    rows = []   # (what, records, seconds, tokens generated or None)

    warm = [next(i for i in range(len(enc)) if len(enc.prompt_ids[i]) == n) for n in set(map(len, enc.prompt_ids))]
    greedy(base, [enc.prompt_ids[i] for i in warm], [limits[i] for i in warm], stop)   # warm-up: every prompt length
    _, s = timed(lambda: verify(base, adapter, enc, recall=False, batch_size=args.batch))
    rows.append(("certify, batched", len(enc), s, None))
    tf = TeacherForcer(base, enc, start_layer=adapter.first_layer, cache_prefix=False)
    _, s = timed(lambda: [answer_probs(tf, [i], chunk=1) for i in sub])
    rows.append(("certify, one at a time", len(sub), s, None))
    loop, s = timed(lambda: greedy(base, enc.prompt_ids, limits, stop, batch_size=args.batch))
    rows.append(("greedy, batched", len(enc), s, sum(map(len, loop))))
    hf, s = timed(lambda: greedy(base, enc.prompt_ids, limits, stop, batch_size=args.batch, hf_generate=True))
    rows.append(("greedy, batched, HF generate", len(enc), s, sum(map(len, hf))))
    one, s = timed(lambda: [greedy(base, [enc.prompt_ids[i]], limits[i], stop)[0] for i in sub])
    rows.append(("greedy, one at a time", len(sub), s, sum(map(len, one))))
    one_hf, s = timed(lambda: [greedy(base, [enc.prompt_ids[i]], limits[i], stop, hf_generate=True)[0] for i in sub])
    rows.append(("greedy, one at a time, HF generate", len(sub), s, sum(map(len, one_hf))))
    _, s = timed(lambda: verify(base, adapter, enc, recall=True, batch_size=args.batch))
    rows.append(("verify (certify + recall), batched", len(enc), s, None))
    same = loop == hf and one == loop[: len(sub)] and one_hf == loop[: len(sub)]
    pairs = {"loop vs HF generate, batched": (loop, hf), "batched vs one at a time, loop": (loop[: len(sub)], one),
             "batched vs one at a time, HF": (hf[: len(sub)], one_hf), "loop vs HF, one at a time": (one, one_hf)}
    divergences = {what: diverging(base, enc, a, b) for what, (a, b) in pairs.items()}   # adapter still attached
    adapter.detach()
    rate = {what: n / s for what, n, s, _ in rows}
    print(f"\nmachine: {machine(device)}")
    print(f"model {args.model} ({base.dtype}, {device}); PhoneBook {len(enc)} records, "
          f"{len(set(map(len, enc.prompt_ids)))} "
          f"distinct prompt lengths, answers of {min(limits)}-{max(limits)} tokens; random nonzero probe r={args.rank} "
          f"at layer {adapter.first_layer}; batch {args.batch}; one-at-a-time rows on the first {len(sub)} records")
    print(f"greedy tokens identical across loop / HF generate / batched / one at a time: {'yes' if same else 'NO'}")
    for what, gaps in divergences.items():
        n = len(pairs[what][0])
        worst = f"; top-2 probability gap at the first divergence: max {max(gaps):.2e}" if gaps else ""
        print(f"  {what}: {len(gaps)} of {n} records differ{worst}")
    print()
    head = f"{'':36} {'records':>8} {'seconds':>8} {'records/s':>10} {'tokens/rec':>10} {'× one at a time':>16}"
    print(head)
    print("-" * len(head))
    single = {"certify": rate["certify, one at a time"], "greedy": rate["greedy, one at a time"],
              "verify": rate["certify, one at a time"] * rate["greedy, one at a time"]
              / (rate["certify, one at a time"] + rate["greedy, one at a time"])}
    for what, n, s, tokens in rows:
        ratio = rate[what] / single[what.split(" ")[0].rstrip(",")]
        tok = "-" if tokens is None else f"{tokens / n:.1f}"
        print(f"{what:36} {n:8d} {s:8.2f} {rate[what]:10.1f} {tok:>10} {ratio:15.2f}×")
    print("\n(verify's one-at-a-time reference combines the two one-at-a-time rates: 1 / (1/certify + 1/greedy))")


@torch.no_grad()
def diverging(base, enc, a: list[list[int]], b: list[list[int]]) -> list[float]:
    """For each record whose two greedy outputs differ, the gap between the top two next-token
    probabilities at the first differing position (teacher-forced on the shared prefix, batch 1).

    A near-zero gap is a tie that batch-shape-dependent bf16 rounding may break either way; a
    certificate (p > 0.5 on every target token) leaves no such tie on the target path.
    """
    gaps = []
    for i, (x, y) in enumerate(zip(a, b)):
        if x == y:
            continue
        t = next((k for k, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
        ids = torch.tensor([list(enc.prompt_ids[i]) + x[:t]], device=base.device)
        top = torch.softmax(base.model(input_ids=ids).logits[0, -1].float(), -1).topk(2).values
        gaps.append(float(top[0] - top[1]))
    return gaps


if __name__ == "__main__":
    main()
