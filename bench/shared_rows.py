"""When the shared prompt pays: a probe step with the prompt's shared tokens run once as a row of their own,
against every row running them, by batch rows. Picks `TrainConfig.shared_min_rows`.

For SmolLM2-135M (chat template: 14 shared tokens of PhoneBook's ~37), probe r8 at the paper's layer, a
budget write of `--steps` steps of PhoneBook memories of 2, 4, 8, 12 and 20 records (batch 16, so a
batch holds every record up to 16; 20 records train in batches of 16 and 4), each mode `--repeats` times
interleaved: every batch shared (`shared_min_rows` 1, the step before that setting), none shared, and
the default; prints the seconds of each and the ratios, next to the machine.

    OMP_NUM_THREADS=1 python bench/shared_rows.py [--steps 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

from machine import machine
from memlaw.config import TrainConfig
from memlaw.engine import attached
from memlaw.models import load_base
from memlaw.sweep import sweep_from_dict
from memlaw.sweep.cell import prepare_cell
from memlaw.train import write

LENGTHS = {2: 20, 4: 40, 8: 80, 12: 120, 20: 200}
"""Records in the memory -> PhoneBook value tokens (10 a number)."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    base = load_base("smollm2-135m", device="cpu")
    print(f"machine: {machine('cpu')}")
    print(f"SmolLM2-135M ({base.dtype}), probe r8, {args.steps} steps, batch 16; medians of {args.repeats}; "
          f"default: shared_min_rows {TrainConfig(until='certified').shared_min_rows}\n")
    head = (f"{'records':>7} {'batches':>8} {'shared s':>9} {'unshared s':>11} {'shared ÷ unshared':>18} "
            f"{'default s':>10} {'× shared':>9}")
    print(head)
    print("-" * len(head))
    for n, length in LENGTHS.items():
        grid = {"name": "shared-rows", "model": "smollm2-135m", "benchmark": {"name": "phonebook"}, "ranks": [8],
                "lengths": [length], "seeds": [0], "adapter": {"kind": "probe"}, "objective": {"name": "sft"},
                "train": {"lr": 1e-2, "batch_size": 16, "max_steps": args.steps, "check_every": 10 ** 6,
                          "until": "budget"}}
        cell = sweep_from_dict(grid).cells()[0]
        prep = prepare_cell(cell, base)
        assert len(prep.enc) == n, (n, len(prep.enc))
        modes = {"shared": {"shared_min_rows": 1}, "unshared": {"shared_prompt": False},
                 "default": {}}            # shared_min_rows at its default: batches under it run unshared
        times: dict[str, list[float]] = {m: [] for m in modes}
        with attached(prep.adapter, base):
            for _ in range(args.repeats):
                for mode, change in modes.items():
                    t0 = time.perf_counter()
                    write(base, prep.adapter, prep.enc, cell.objective, dataclasses.replace(cell.train, **change))
                    times[mode].append(time.perf_counter() - t0)
        a, b, c = (statistics.median(times[m]) for m in modes)
        sizes = "+".join(map(str, [16] * (n // 16) + ([n % 16] if n % 16 else [])))
        print(f"{n:7d} {sizes:>8} {a:9.2f} {b:11.2f} {a / b:17.2f}× {c:10.2f} {a / c:8.2f}×", flush=True)


if __name__ == "__main__":
    main()
