"""How far p_t moves between batch shapes for a saved adapter, next to its smallest certified margin.

A certificate (every answer token p_t > 0.5 + margin) is exact for the numerics it was checked in.
In bf16, kernels block a batch of 32 differently from a batch of 1, so p_t moves a little with the
batch shape; a token whose p_t is closer to 0.5 than that shift could decode differently in
another batch shape. This prints, for the adapter's own records:

- the max |Δp_t| between the certificate's pass (`memlaw.certify`) and the padded pass it replaced
  (cached prefix, chunks of 64), that pass one record at a time, a plain full-model pass one record
  at a time, and the shared-prompt pass training uses (`TrainConfig.shared_prompt`);
- how far each of those passes is from recall's own numerics: p_t read off a KV-cache decode that
  is fed the true answer tokens (greedy decoding's model calls, batched as `verify.greedy` batches);
- the smallest p_t (the certificate's tightest margin is that minus 0.5);
- exact recall with greedy decoding batched, one at a time, and with HF `generate` one at a time.

    python bench/batch_shift.py memlaw-demo        # after `memlaw demo`
"""

from __future__ import annotations

import argparse
import inspect
from collections import defaultdict

import torch
from transformers import DynamicCache

from machine import machine
from memlaw.encode import encode
from memlaw.certify import certificate_probs
from memlaw.forward import TeacherForcer, answer_probs
from memlaw.memory import Memory
from memlaw.verify import greedy, score_recall


@torch.no_grad()
def decode_probs(base, enc, batch_size: int = 64) -> dict[int, torch.Tensor]:
    """p_t of every answer token as a cached decode computes it: prompts of equal length prefilled
    together, then the true answer tokens fed one at a time (rows past their answer feed padding)."""
    model = base.model
    params = inspect.signature(model.forward).parameters
    buckets: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(enc.prompt_ids):
        buckets[len(p)].append(i)
    out = {}
    for _, idx in sorted(buckets.items()):
        for lo in range(0, len(idx), batch_size):
            part = idx[lo: lo + batch_size]
            answers = [enc.answer_ids(i) for i in part]
            T = max(map(len, answers))
            tokens = torch.tensor([a + [a[-1]] * (T - len(a)) for a in answers], device=base.device)
            kw = {"cache" if "cache" in params else "past_key_values": DynamicCache(config=model.config),
                  "use_cache": True}
            logits = model(input_ids=torch.tensor([enc.prompt_ids[i] for i in part], device=base.device),
                           **kw).logits[:, -1]
            probs = []
            for t in range(T):
                probs.append(torch.softmax(logits.float(), -1).gather(-1, tokens[:, t: t + 1])[:, 0])
                if t < T - 1:
                    logits = model(input_ids=tokens[:, t: t + 1], **kw).logits[:, -1]
            p = torch.stack(probs, 1).cpu()
            for b, i in enumerate(part):
                out[i] = p[b, : len(answers[b])]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("adapter", help="an adapter directory saved with its records")
    args = ap.parse_args()
    mem = Memory.open(args.adapter)
    base, adapter = mem.base, mem.adapter
    recs = mem.records()
    enc = encode(recs, base.tokenizer, mem.prompt, max_length=base.context_length)
    cached = TeacherForcer(base, enc, start_layer=adapter.first_layer)
    batched = certificate_probs(base, enc)
    shifts = {
        "padded pass, chunks of 64": answer_probs(cached, chunk=64),
        "cached prefix, one at a time": answer_probs(cached, chunk=1),
        "plain full pass, one at a time": answer_probs(TeacherForcer(base, enc, plain=True), chunk=1),
        "shared-prompt pass, chunks of 64": answer_probs(
            TeacherForcer(base, enc, start_layer=adapter.first_layer, shared_prompt=True), chunk=64),
    }
    recall = decode_probs(base, enc)
    stop = enc.terminator[0]
    limits = [len(enc.answer_ids(i)) for i in range(len(enc))]

    def exact(outs: list[list[int]]) -> int:
        return sum(score_recall(enc, i, out)[0] for i, out in enumerate(outs))

    decoded = {
        "batched (KV-cache loop)": greedy(base, enc.prompt_ids, limits, stop),
        "one at a time (KV-cache loop)": [greedy(base, [p], n, stop)[0] for p, n in zip(enc.prompt_ids, limits)],
        "one at a time (HF generate)": [greedy(base, [p], n, stop, hf_generate=True)[0]
                                        for p, n in zip(enc.prompt_ids, limits)],
    }
    low = min(float(tp.p.min()) for tp in batched.values())
    print(f"machine: {machine()}")
    print(f"adapter {args.adapter}: {len(enc)} records, base dtype {base.dtype}; smallest p_t {low:.4f} "
          f"(tightest margin {low - 0.5:+.4f})\n")
    for what, probs in shifts.items():
        d = max(float((batched[i].p - probs[i].p).abs().max()) for i in batched)
        print(f"max |Δp_t|, certificate pass vs {what:32} {d:.4f}")
    print()
    for what, probs in {"certificate pass": batched, **shifts}.items():
        d = max(float((recall[i] - probs[i].p).abs().max()) for i in batched)
        print(f"max |Δp_t| against the cached decode, {what:32} {d:.4f}")
    for what, outs in decoded.items():
        print(f"exact greedy recall, {what:38} {exact(outs)}/{len(enc)}")


if __name__ == "__main__":
    main()
