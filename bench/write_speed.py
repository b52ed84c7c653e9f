"""Time to certified recall: memlaw against the plain loop that follows the paper's recipe, in one process.

PhoneBook (`--n` entries, several sizes allowed) on SmolLM2-135M, for `probe` (r = 16) and `lora`
(r = 8). Three rows per adapter and size:

- baseline: the paper's recipe as a user would write it: transformers in float32, the probe added
  with forward hooks (or PEFT LoRA, all-linear, α = 2r), a full forward and backward through every
  layer each step, logits at every position (`model(ids, labels=...)`), AdamW, lr 1e-2 decayed
  linearly to 0 over the paper's budget of 200 epochs, no warm-up, clip 1; the certificate checked
  every 10 steps with a full no-dropout pass;
- baseline, memlaw's lr: the same loop with memlaw's learning-rate choice for the kind: its default
  lr (`config.CERTIFY_LR`) decayed over memlaw's own horizon (`DEFAULT_MAX_STEPS`), so the table
  separates what the learning rate buys from the engineering;
- memlaw: `write_memory` with its defaults (until certified), timed over the whole call (encoding,
  L_base, the cached prefix, training, the final certificate pass; the baselines' clocks start at
  their first step, which favours them).

Seeds are interleaved (for each size, adapter and seed: memlaw, baseline, baseline at memlaw's lr),
and each run uses its seed for initialisation, batch order and dropout. The table gives medians over
seeds of time to certified, steps and steps/s, then, against memlaw, the speed-up in time to
certified, the per-step speed-up (memlaw steps/s ÷ the row's steps/s) and the step-count ratio (the
row's steps ÷ memlaw's steps). A baseline stops uncertified at `--cap` steps (default: the paper's
budget, where its lr has decayed to 0, so it can no longer change); its row then says how far it
got (records certified at its last check) and the ratios become lower bounds ('>').

    python bench/write_speed.py --n 16 --seeds 0 1 2 [--kinds probe lora] [--rows ...] [--out FILE]
    python bench/write_speed.py --table FILE [FILE ...]      # the table of saved runs (--out lines; later files win)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model

from machine import machine, matmul_rate, sync
from memlaw.adapters.probe import default_layer
from memlaw.benchmarks import phonebook
from memlaw.config import CERTIFY_LR, DEFAULT_MAX_STEPS, AdapterConfig, PromptConfig, TrainConfig
from memlaw.encode import encode
from memlaw.memory import write_memory
from memlaw.models import load_base
from runs import git_commit, keep, print_head, resumed, saved

PAPER_LR, PAPER_EPOCHS = 1e-2, 200
RANK = {"probe": 16, "lora": 8}
ROWS = ("memlaw", "baseline", "baseline, memlaw's lr")


def matmul_peak(dtype: torch.dtype, device: str = "cpu", reps: int = 10) -> float:
    """Measured matmul FLOP/s of an n×n×n product in `dtype` (n = 2048 on CPU, 8192 on a GPU): the
    best of reps (a peak, not a typical rate)."""
    n = 8192 if device.startswith("cuda") else 2048
    return matmul_rate(n, n, n, dtype, device=device, reps=reps)


def paper_budget(n: int, batch: int) -> int:
    """Optimizer steps of the paper's 200 epochs: where the baseline's lr reaches 0."""
    return PAPER_EPOCHS * -(-n // batch)


def baseline(kind: str, n: int, batch: int, cap: int, seed: int, lr: float, horizon: int,
             device: str = "cpu") -> dict:
    """The plain loop: lr decays linearly to 0 over `horizon` steps; stops certified or at `cap` steps."""
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
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / horizon))
    pad = tok.pad_token_id

    def tensors(rows):
        L = max(len(seqs[i]) for i in rows)
        ids = torch.full((len(rows), L), pad)
        labels = torch.full((len(rows), L), -100)
        for b, i in enumerate(rows):
            ids[b, : len(seqs[i])] = torch.tensor(seqs[i])
            labels[b, starts[i]: len(seqs[i])] = torch.tensor(seqs[i][starts[i]:])
        return ids.to(device), labels.to(device)

    def certified() -> int:
        """Records whose every answer token has p_t > 0.5 (no dropout, float32)."""
        net.eval()
        ok = 0
        with torch.no_grad():
            for lo in range(0, n, 32):
                rows = list(range(lo, min(n, lo + 32)))
                ids, labels = tensors(rows)
                probs = torch.softmax(net(input_ids=ids).logits[:, :-1].float(), -1)
                tgt = labels[:, 1:]
                p = probs.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
                ok += int(torch.where(tgt != -100, p > 0.5, True).all(1).sum())
        net.train()
        return ok

    gen = torch.Generator().manual_seed(seed)
    net.train()
    history = []
    sync(device)
    t0, step, done = time.perf_counter(), 0, False
    while step < cap and not done:
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
            if step % 10 == 0 or step == cap:
                history.append((step, certified()))
                done = history[-1][1] == n
                print(f"    baseline step {step}: {history[-1][1]}/{n} certified, {time.perf_counter() - t0:.0f} s",
                      flush=True)
            if done or step >= cap:
                break
    sync(device)
    wall = time.perf_counter() - t0
    return {"time_to_certified": wall if done else None, "steps": step, "steps_per_s": step / wall, "wall_s": wall,
            "certified": history[-1][1] if history else 0, "lr": lr, "horizon": horizon, "history": history}


def ours(kind: str, n: int, batch: int, base, seed: int) -> dict:
    """memlaw's write with its defaults; its time is the whole `write_memory` call."""
    res = write_memory(phonebook(n), model=base, adapter=AdapterConfig(kind=kind, rank=RANK[kind]), recall=False,
                       train=TrainConfig(until="certified", batch_size=batch, seed=seed))
    ok = res.verification.summary()["certified"]
    return {"time_to_certified": res.wall_s if ok == n else None, "steps": res.train.steps,
            "steps_per_s": res.train.steps_per_s, "wall_s": res.wall_s, "certified": ok,
            "lr": CERTIFY_LR[kind], "horizon": DEFAULT_MAX_STEPS,
            "history": [(h["step"], h["certified"]) for h in res.train.history]}


def step_flops(base, n_tokens: int, n_answer: int, layers: int) -> float:
    """Matmul FLOPs of one training step (forward + activation backward) through `layers` layers + head."""
    cfg = base.model.config
    d, f = cfg.hidden_size, cfg.intermediate_size
    kv = cfg.num_key_value_heads * (d // cfg.num_attention_heads)
    per_token_layer = 2 * (d * d * 2 + 2 * d * kv + 3 * d * f)
    head = 2 * d * cfg.vocab_size
    return 2 * (n_tokens * layers * per_token_layer + n_answer * head)   # backward ≈ forward (frozen weights)


def table(runs: list[dict]) -> None:
    """Medians per (n, adapter, row) over seeds, with the ratios against memlaw's medians."""
    med = statistics.median
    head = (f"{'n':>3} {'adapter':8} {'row':22} {'certified':>9} {'seconds':>8} {'steps':>6} {'steps/s':>8} "
            f"{'speed-up':>9} {'per step':>9} {'steps ×':>8} {'load':>5}")
    print_head(head)
    for n in sorted({r["n"] for r in runs}):
        for kind in dict.fromkeys(r["kind"] for r in runs):
            mine = [r for r in runs if (r["n"], r["kind"], r["row"]) == (n, kind, "memlaw")]
            m_ok = mine and all(r["time_to_certified"] is not None for r in mine)
            for row in ROWS:
                rs = [r for r in runs if (r["n"], r["kind"], r["row"]) == (n, kind, row)]
                if not rs:
                    continue
                ok = all(r["time_to_certified"] is not None for r in rs)
                secs, steps, rate = med([r["wall_s"] for r in rs]), med([r["steps"] for r in rs]), \
                    med([r["steps_per_s"] for r in rs])
                ratios = ["-", "-", "-"]
                if mine and row != "memlaw":
                    bound = "" if ok else ">"
                    mt, ms, mr = med([r["wall_s"] for r in mine]), med([r["steps"] for r in mine]), \
                        med([r["steps_per_s"] for r in mine])
                    ratios = [f"{bound}{secs / mt:.2f}×" if m_ok else "-", f"{mr / rate:.2f}×",
                              f"{bound}{steps / ms:.2f}" if m_ok else "-"]
                seeds = f"{sum(r['time_to_certified'] is not None for r in rs)}/{len(rs)}"
                far = "" if ok else "  (uncertified: " + ", ".join(
                    f"seed {r['seed']} {r['certified']}/{n} at step {r['steps']}" for r in rs
                    if r["time_to_certified"] is None) + ")"
                load = med([r["load"] for r in rs])
                print(f"{n:3d} {kind:8} {row:22} {seeds:>9} {secs:8.1f} {steps:6.0f} {rate:8.3f} "
                      f"{ratios[0]:>9} {ratios[1]:>9} {ratios[2]:>8} {load:5.1f}{far}")
    print("\nseconds: time to certified (an uncertified run: its wall time to the cap); speed-up: the row's "
          "seconds ÷ memlaw's; per step: memlaw steps/s ÷ the row's; steps ×: the row's steps ÷ memlaw's "
          "('>': the row did not certify every seed, so at least this); load: 1-minute load average at the "
          "run's start (2 cores)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[16])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cap", type=int, default=None,
                    help="stop a baseline run uncertified after this many steps (default: the paper's budget)")
    ap.add_argument("--kinds", nargs="+", default=["probe", "lora"])
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    ap.add_argument("--device", default="cpu", help="cpu (the issue's measurement) or cuda: both sides on it")
    ap.add_argument("--out", default=None, help="append one JSON line per run here (runs already there are skipped)")
    ap.add_argument("--table", nargs="+", default=None,
                    help="only print the table of these saved runs (a later file's run replaces an earlier file's "
                         "of the same size, adapter, row and seed)")
    args = ap.parse_args()
    if args.table:           # a later file's run of the same size, adapter, row and seed replaces an earlier one
        table(list({(r["n"], r["kind"], r["row"], r["seed"]): r for r in saved(args.table)}.values()))
        return
    peaks = {"bf16": matmul_peak(torch.bfloat16, args.device), "fp32": matmul_peak(torch.float32, args.device)}
    base = load_base("smollm2-135m", device=args.device)
    commit = git_commit()
    runs = [r for r in resumed(args.out) if r["n"] in args.n and r["kind"] in args.kinds and r["seed"] in args.seeds]
    done = {(r["n"], r["kind"], r["row"], r["seed"]) for r in runs}
    for n in args.n:
        cap = args.cap or paper_budget(n, args.batch)
        for kind in args.kinds:
            for seed in args.seeds:
                for row in args.rows:
                    if (n, kind, row, seed) in done:
                        continue
                    load = os.getloadavg()[0]
                    if row == "memlaw":
                        r = ours(kind, n, args.batch, base, seed)
                    elif row == "baseline":
                        r = baseline(kind, n, args.batch, cap, seed, PAPER_LR, paper_budget(n, args.batch), args.device)
                    else:
                        r = baseline(kind, n, args.batch, cap, seed, CERTIFY_LR[kind], DEFAULT_MAX_STEPS, args.device)
                    r = {"n": n, "kind": kind, "row": row, "seed": seed, "load": load, "commit": commit, **r}
                    keep(r, runs, args.out, f"  n {n} {kind} {row} seed {seed}: {r['certified']}/{n} certified, "
                         f"{r['steps']} steps, {r['wall_s']:.1f} s ({r['steps_per_s']:.3f} steps/s), load {load:.1f}")
    print(f"\nmachine: {machine(args.device)}; matmul peak bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s, "
          f"fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s (measured now); commit {commit}")
    print(f"PhoneBook {args.n}, batch {args.batch}, medians over seeds {args.seeds}; memlaw {base.dtype}, lr "
          f"{CERTIFY_LR} over {DEFAULT_MAX_STEPS} steps; baselines float32, the paper's lr {PAPER_LR:g} over "
          f"{PAPER_EPOCHS} epochs, cap {args.cap or 'the paper budget'}\n")
    table(runs)
    for n in args.n:
        enc = encode(phonebook(n), base.tokenizer, PromptConfig())
        share = min(args.batch, n) / n
        tokens = sum(len(p) + len(enc.answer_ids(i)) for i, p in enumerate(enc.prompt_ids)) * share
        answers = sum(len(enc.answer_ids(i)) for i in range(n)) * share
        for kind in args.kinds:
            mine = [r["steps_per_s"] for r in runs if (r["n"], r["kind"], r["row"]) == (n, kind, "memlaw")]
            if mine:
                layers = base.n_layers - (default_layer(base.n_layers, base.family) if kind == "probe" else 0)
                rate = step_flops(base, int(tokens), int(answers), layers) * statistics.median(mine)
                print(f"n {n} {kind}: memlaw's step matmuls at {rate / 1e9:.0f} GFLOP/s, "
                      f"{100 * rate / peaks['bf16']:.1f} % of the bf16 peak (counting every prompt token; "
                      f"the shared prompt runs fewer)")


if __name__ == "__main__":
    main()
