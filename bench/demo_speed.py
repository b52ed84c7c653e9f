"""The demo's write speed with each fast path on and off (cached prefix, answer-only logits, bf16, training attention).

Runs the demo's write (PhoneBook, probe rank 16 on SmolLM2-135M, until every record certifies) once
per variant in this one process and prints steps/s and time to certified, with ratios against the
all-off baseline run in the same process. Machine facts are printed with the table.

    python bench/demo_speed.py [--n 32] [--max-steps 600] [--repeats 1] [--steps-only 30]

`--steps-only K` times K optimizer steps per variant instead of running to certified (quick).
`--rate-only NAME...` does that for the named variants only (the all-off baseline runs ~10× slower).
"""

from __future__ import annotations

import argparse
import statistics
import time

from machine import machine
from memlaw.benchmarks import phonebook
from memlaw.cli.memory import DEMO_TRAIN
from memlaw.config import AdapterConfig, TrainConfig
from memlaw.memory import write_memory
from memlaw.models import load_base

VARIANTS = [  # name, dtype, cache_prefix, answer_logits, training attention
    ("all on (memlaw default)", "bfloat16", True, True, "auto"),
    ("cached prefix off", "bfloat16", False, True, "auto"),
    ("answer-only logits off", "bfloat16", True, False, "auto"),
    ("bf16 off (float32)", "float32", True, True, "auto"),
    ("model's attention kernel", "bfloat16", True, True, "model"),
    ("all off (baseline)", "float32", False, False, "model"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--max-steps", type=int, default=DEMO_TRAIN.max_steps)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--steps-only", type=int, default=0)
    ap.add_argument("--rate-only", nargs="*", default=[], help="variants (by index 0-5) timed for 20 steps only")
    args = ap.parse_args()
    recs = phonebook(args.n)
    bases = {dt: load_base("smollm2-135m", dtype=dt) for dt in ("bfloat16", "float32")}
    rows = []
    for v, (name, dt, cache, answer, attention) in enumerate(VARIANTS):
        rate_only = args.steps_only or (20 if str(v) in args.rate_only else 0)
        if rate_only:
            cfg = TrainConfig(until="budget", max_steps=rate_only, batch_size=DEMO_TRAIN.batch_size,
                              lr=DEMO_TRAIN.lr, check_every=rate_only, cache_prefix=cache, answer_logits=answer,
                              attention=attention)
        else:
            cfg = TrainConfig(until="certified", max_steps=args.max_steps, batch_size=DEMO_TRAIN.batch_size,
                              lr=DEMO_TRAIN.lr, check_every=DEMO_TRAIN.check_every, cache_prefix=cache,
                              answer_logits=answer, attention=attention)
        runs = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            res = write_memory(recs, model=bases[dt], adapter=AdapterConfig(), train=cfg,
                               recall=not rate_only)
            s = res.verification.summary()
            runs.append((res.train.steps_per_s, res.train.time_to_certified, res.train.steps, s.get("em"),
                         time.perf_counter() - t0))
        sps = statistics.median(r[0] for r in runs)
        ttc = [r[1] for r in runs if r[1] is not None]
        rows.append((name + (" *" if rate_only else ""), sps, statistics.median(ttc) if ttc else None, runs[0][2],
                     runs[0][3]))
        print(f"  done: {name}: {sps:.3f} steps/s", flush=True)
    base_sps, fast_ttc = rows[-1][1], rows[0][2]
    print(f"\nmachine: {machine()}")
    print("* steps/s over a short budget only; not run to certified")
    print(f"demo write: PhoneBook {args.n} entries, probe r={AdapterConfig().rank}, batch {DEMO_TRAIN.batch_size}, lr {DEMO_TRAIN.lr}, "
          f"median of {args.repeats}\n")
    head = f"{'variant':28} {'steps/s':>8} {'× base':>7} {'steps':>6} {'to certified s':>15} {'× all on':>8} {'EM':>6}"
    print(head)
    print("-" * len(head))
    for name, sps, ttc, steps, em in rows:
        ttc_s = "-" if ttc is None else f"{ttc:.1f}"
        ratio = "-" if ttc is None or fast_ttc is None else f"{ttc / fast_ttc:.2f}"
        print(f"{name:28} {sps:8.3f} {sps / base_sps:7.2f} {steps:6d} {ttc_s:>15} {ratio:>8} {str(em):>6}")


if __name__ == "__main__":
    main()
