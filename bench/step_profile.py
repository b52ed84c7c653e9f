"""Where a memlaw training step goes: matmuls against everything else, and how close the matmuls
run to this machine's peak at the shapes a step uses.

For `probe` (r = 16) and `lora` (r = 8) on SmolLM2-135M, PhoneBook 16, batch 16 (what
`write_speed.py` times): `--steps` training steps under torch's profiler, then a table of the
operators' self time, the matmul share of the step, and the FLOP/s of a bf16 (or float32) matmul at
each of the step's main shapes next to the 2048³ product's.

    python bench/step_profile.py [--steps 10] [--kinds probe lora]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from machine import machine, matmul_rate
from memlaw.adapters import make_adapter
from memlaw.benchmarks import phonebook
from memlaw.config import AdapterConfig, ObjectiveConfig, PromptConfig, TrainConfig
from memlaw.encode import encode
from memlaw.engine import attached
from memlaw.models import load_base
from memlaw.train import write

RANK = {"probe": 16, "lora": 8}
MATMUL = ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--kinds", nargs="+", default=["probe", "lora"])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    base = load_base("smollm2-135m")
    enc = encode(phonebook(args.n), base.tokenizer, PromptConfig())
    cfg = base.model.config
    d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    tokens = sum(len(p) + len(enc.answer_ids(i)) for i, p in enumerate(enc.prompt_ids)) * args.batch // args.n
    answers = sum(len(enc.answer_ids(i)) for i in range(args.n)) * args.batch // args.n
    print(f"machine: {machine()}; model dtype {base.dtype}; ~{tokens} tokens and {answers} answer tokens a step\n")
    for kind in args.kinds:
        train = TrainConfig(until="budget", max_steps=args.steps, batch_size=args.batch, check_every=10**6)
        with attached(make_adapter(AdapterConfig(kind=kind, rank=RANK[kind]), base, seed=0), base) as ad:
            write(base, ad, enc, ObjectiveConfig(), dataclasses.replace(train, max_steps=2))   # warm-up
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                res = write(base, ad, enc, ObjectiveConfig(), train)
        self_us: dict[str, float] = defaultdict(float)
        for e in prof.key_averages():
            self_us[e.key] += e.self_cpu_time_total
        total = sum(self_us.values())
        mm = sum(t for k, t in self_us.items() if k in MATMUL)
        print(f"{kind} r{RANK[kind]}: {res.steps} steps in {res.wall_s:.2f} s ({res.steps_per_s:.2f} steps/s, the "
              f"last one with its certificate check), profiled; matmuls {100 * mm / total:.0f}% of operator time")
        print(f"  {'operator':44} {'self s':>8} {'share':>7}")
        for name, t in sorted(self_us.items(), key=lambda x: -x[1])[:10]:
            print(f"  {name:44} {t / 1e6:8.2f} {100 * t / total:6.1f}%")
        print()
    peak = matmul_rate(2048, 2048, 2048, base.dtype, reps=5, warmup=3, stat=statistics.median)
    print(f"matmul FLOP/s at a step's shapes ({base.dtype}, median of 15), against the 2048³ product "
          f"({peak / 1e9:.0f} GFLOP/s):")
    shapes = {"q/o projection": (tokens, d, d), "MLP up/gate": (tokens, d, f), "MLP down": (tokens, f, d),
              "LM head (answer positions)": (answers, d, v), "LM head backward": (answers, v, d)}
    for what, (m, k, n) in shapes.items():
        r = matmul_rate(m, k, n, base.dtype, reps=15, warmup=3, stat=statistics.median)
        print(f"  {what:28} {m:5d}×{k:5d}×{n:5d} {r / 1e9:8.0f} GFLOP/s {100 * r / peak:6.0f}% of 2048³")


if __name__ == "__main__":
    main()
