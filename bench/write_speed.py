"""Time to certified recall: memlaw against the plain implementation a user would write, in one process.

PhoneBook (64 entries by default) on SmolLM2-135M, for `probe` (r = 16) and `lora` (r = 8):

- baseline: transformers in float32, the probe added with forward hooks (or PEFT LoRA), a full forward
  and backward through every layer each step, logits at every position (`model(ids, labels=...)`),
  and the certificate checked every 10 steps with a full no-dropout forward;
- memlaw: `write_memory` with its defaults (cached prefix, answer-only logits, bf16 base with float32
  adapter and optimizer state).

Both use the same records, batch size, learning rate, optimizer, schedule and stop rule. Prints a
table with the median of `--repeats` runs, the ratio baseline / memlaw, and the achieved matmul
FLOP/s of a memlaw step next to this machine's bf16 and fp32 matmul peaks, measured here.

    python bench/write_speed.py [--n 64] [--repeats 3] [--max-steps 800] [--kinds probe lora]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model

from machine import machine, matmul_rate, sync
from memlaw.adapters.probe import default_layer
from memlaw.benchmarks import phonebook
from memlaw.config import AdapterConfig, PromptConfig, TrainConfig
from memlaw.encode import encode
from memlaw.memory import write_memory
from memlaw.models import load_base

LR = {"probe": 1e-2, "lora": 2e-3}
RANK = {"probe": 16, "lora": 8}


def matmul_peak(dtype: torch.dtype, device: str = "cpu", reps: int = 10) -> float:
    """Measured matmul FLOP/s of an n×n×n product in `dtype` (n = 2048 on CPU, 8192 on a GPU): the
    best of reps (a peak, not a typical rate; on a shared CPU the median moved 440 → 737 GFLOP/s
    between two runs)."""
    n = 8192 if device.startswith("cuda") else 2048
    return matmul_rate(n, n, n, dtype, device=device, reps=reps)


def baseline(kind: str, n: int, batch: int, max_steps: int, seed: int = 0,
             device: str = "cpu") -> tuple[float | None, int, float]:
    """The plain loop. Returns (time to certified, steps, steps/s)."""
    base = load_base("smollm2-135m", dtype="float32", device=device)
    model, tok = base.model, base.tokenizer
    enc = encode(phonebook(n), tok, PromptConfig())
    seqs = [p + enc.answer_ids(i) for i, p in enumerate(enc.prompt_ids)]
    starts = [len(p) for p in enc.prompt_ids]
    torch.manual_seed(seed)
    if kind == "probe":
        layer = model.model.layers[default_layer(base.n_layers, base.family)]
        d, r = base.hidden_size, RANK[kind]
        A = torch.nn.Parameter(torch.empty(d, r).uniform_(-r**-0.5, r**-0.5).to(device))
        B = torch.nn.Parameter(torch.zeros(r, d, device=device))
        drop = torch.nn.Dropout(0.1)
        seen = {}
        layer.post_attention_layernorm.register_forward_hook(lambda m, a, out: seen.update(x=out))
        layer.register_forward_hook(lambda m, a, out: out + drop(seen["x"] @ A @ B))
        params, net = [A, B], model
    else:
        net = get_peft_model(model, LoraConfig(r=RANK[kind], lora_alpha=2 * RANK[kind], target_modules="all-linear"))
        params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR[kind], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / max_steps))
    pad = tok.pad_token_id

    def tensors(rows):
        L = max(len(seqs[i]) for i in rows)
        ids = torch.full((len(rows), L), pad)
        labels = torch.full((len(rows), L), -100)
        for b, i in enumerate(rows):
            ids[b, : len(seqs[i])] = torch.tensor(seqs[i])
            labels[b, starts[i]: len(seqs[i])] = torch.tensor(seqs[i][starts[i]:])
        return ids.to(device), labels.to(device)

    def certified() -> bool:
        drop_mode = net.training
        net.eval()
        if kind == "probe":
            drop.eval()
        ok = True
        with torch.no_grad():
            for lo in range(0, n, 32):
                rows = list(range(lo, min(n, lo + 32)))
                ids, labels = tensors(rows)
                probs = torch.softmax(net(input_ids=ids).logits[:, :-1].float(), -1)
                tgt = labels[:, 1:]
                p = probs.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
                ok &= bool((p[tgt != -100] > 0.5).all())
        net.train(drop_mode)
        if kind == "probe":
            drop.train()
        return ok

    gen = torch.Generator().manual_seed(seed)
    net.train()
    sync(device)
    t0, step = time.perf_counter(), 0
    while step < max_steps:
        order = torch.randperm(n, generator=gen).tolist()
        for lo in range(0, n, batch):
            ids, labels = tensors(order[lo: lo + batch])
            loss = net(input_ids=ids, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            step += 1
            if step % 10 == 0 and certified():
                sync(device)
                wall = time.perf_counter() - t0
                return wall, step, step / wall
            if step >= max_steps:
                break
    sync(device)
    wall = time.perf_counter() - t0
    return None, step, step / wall


def ours(kind: str, n: int, batch: int, max_steps: int, base, seed: int = 0) -> tuple[float | None, int, float]:
    """memlaw's write. Its time to certified is the whole `write_memory` call: encoding, L_base, the
    cached prefix, training until certified and the final certificate pass (the baseline's clock
    starts at its first step, so this favours the baseline)."""
    res = write_memory(phonebook(n), model=base, adapter=AdapterConfig(kind=kind, rank=RANK[kind]), recall=False,
                       train=TrainConfig(until="certified", max_steps=max_steps, batch_size=batch, lr=LR[kind],
                                         seed=seed))
    return (res.wall_s if res.train.certified else None), res.train.steps, res.train.steps_per_s


def step_flops(base, n_tokens: int, n_answer: int, layers: int) -> float:
    """Matmul FLOPs of one training step (forward + activation backward) through `layers` layers + head."""
    cfg = base.model.config
    d, f = cfg.hidden_size, cfg.intermediate_size
    kv = cfg.num_key_value_heads * (d // cfg.num_attention_heads)
    per_token_layer = 2 * (d * d * 2 + 2 * d * kv + 3 * d * f)
    head = 2 * d * cfg.vocab_size
    return 2 * (n_tokens * layers * per_token_layer + n_answer * head)   # backward ≈ forward (frozen weights)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-steps", type=int, default=800)
    ap.add_argument("--kinds", nargs="+", default=["probe", "lora"])
    ap.add_argument("--device", default="cpu", help="cpu (the issue's measurement) or cuda: both sides on it")
    args = ap.parse_args()
    peaks = {"bf16": matmul_peak(torch.bfloat16, args.device), "fp32": matmul_peak(torch.float32, args.device)}
    base = load_base("smollm2-135m", device=args.device)
    rows = []
    for kind in args.kinds:
        b_runs, m_runs = [], []
        for s in range(args.repeats):     # seed s for both: same init scale, order and dropout stream per seed
            m_runs.append(ours(kind, args.n, args.batch, args.max_steps, base, seed=s))
            print(f"  {kind} memlaw   seed {s}: {m_runs[-1]}", flush=True)
            b_runs.append(baseline(kind, args.n, args.batch, args.max_steps, seed=s, device=args.device))
            print(f"  {kind} baseline seed {s}: {b_runs[-1]}", flush=True)
        rows.append((kind, b_runs, m_runs))
        print(f"  done {kind}", flush=True)
    enc = encode(phonebook(args.n), base.tokenizer, PromptConfig())
    tokens = sum(len(p) + len(enc.answer_ids(i)) for i, p in enumerate(enc.prompt_ids)) * min(args.batch, args.n) / args.n
    answers = sum(len(enc.answer_ids(i)) for i in range(args.n)) * min(args.batch, args.n) / args.n
    print(f"\nmachine: {machine(args.device)}; matmul peak bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s, "
          f"fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s (measured now)")
    print(f"PhoneBook {args.n}, batch {args.batch}, median of {args.repeats}; memlaw dtype {base.dtype}\n")
    head = (f"{'adapter':8} {'baseline s':>11} {'memlaw s':>9} {'speed-up':>9} {'base st/s':>10} {'ours st/s':>10} "
            f"{'steps b/m':>10} {'GFLOP/s':>8} {'% peak':>7}")
    print(head)
    print("-" * len(head))
    for kind, b_runs, m_runs in rows:
        med = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
        bt, mt = med([r[0] for r in b_runs if r[0]]), med([r[0] for r in m_runs if r[0]])
        bs, ms = med([r[2] for r in b_runs]), med([r[2] for r in m_runs])
        layers = base.n_layers - (default_layer(base.n_layers, base.family) if kind == "probe" else 0)
        flops = step_flops(base, int(tokens), int(answers), layers) * ms
        peak = peaks["bf16" if base.dtype == torch.bfloat16 else "fp32"]
        speed = "-" if not (bt and mt) else f"{bt / mt:.2f}×"
        print(f"{kind:8} {bt or float('nan'):11.1f} {mt or float('nan'):9.1f} {speed:>9} {bs:10.2f} {ms:10.2f} "
              f"{int(med([r[1] for r in b_runs]))}/{int(med([r[1] for r in m_runs])):<5} "
              f"{flops / 1e9:8.0f} {100 * flops / peak:6.1f}%")


if __name__ == "__main__":
    main()
