"""An update's steps and seconds at several learning rates, from one certified SmolLM2 memory (issue 16).

Writes a certified memory of the first N PhoneBook entries (`--kind`, rank 16, batch 16, until certified
at the kind's default learning rate), then runs one update (add 10% more entries, change 5% of the
values: `update_speed.changes`) on a copy of that memory at each learning rate, records certified with
margin resting (`memlaw.update.RETIRE_MARGIN`). One JSON line per run on stdout; values are never
printed. One process, one base model; times exclude loading it (a shared machine: compare them as
ratios within one run).

    cd bench && OMP_NUM_THREADS=1 python update_lr.py --n 32 --lrs 0.04,0.01,0.003 [--kind probe]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

from memlaw.config import TrainConfig
from memlaw.models import load_base
from memlaw.update import RETIRE_MARGIN, update_memory
from update_speed import changes, entries, fresh


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--lrs", default="0.04,0.01,0.003", help="comma-separated learning rates of the update")
    ap.add_argument("--kind", default="probe", choices=["probe", "lora"])
    args = ap.parse_args()
    base = load_base("smollm2-135m")
    current, pool, numbers = entries(args.n, 16)
    train = TrainConfig(until="certified", max_steps=2000, batch_size=16, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        w = fresh(current, base, args.kind, 16, train, work / "memory")
        print(json.dumps({"what": "write", "n": args.n, "steps": w["steps"], "s": round(w["wall_s"], 1)}), flush=True)
        added, changed = changes(current, pool, round(0.1 * args.n), round(0.05 * args.n), random.Random(0), numbers)
        for lr in map(float, args.lrs.split(",")):
            copy = work / f"update-{lr}"
            shutil.copytree(work / "memory", copy)
            t0 = time.perf_counter()
            u = update_memory(copy, base=base, changes=added + changed,
                              train=dataclasses.replace(train, lr=lr, retire_margin=RETIRE_MARGIN))
            print(json.dumps({"what": "update", "lr": lr, "retire": RETIRE_MARGIN, "steps": u.train.steps,
                              "saved": u.saved, "s": round(time.perf_counter() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
