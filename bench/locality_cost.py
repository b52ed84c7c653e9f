"""What the locality metric adds to a sweep cell: `run_cell` on SmolLM2-135M with locality on.

Runs a few PhoneBook cells one after another in this one process, as a local sweep does (the base
model resident), and prints for each the CPU seconds of the whole cell and of its locality
measurement (this process's CPU time, which other jobs on the machine do not inflate as they do
wall time), the locality's wall seconds (`metrics["locality_s"]`) and what it measured. The first
cell also decodes the base model's continuations of the neutral prompts once; later cells reuse them
(and, at the same adapter layer, the hidden states below it and the base model's logits, so they run
only the adapted side). Locality does not depend on the training steps; a cell's own CPU time grows
with them. Machine facts are printed with the table.

    python bench/locality_cost.py [--steps 60] [--length 160]
"""

from __future__ import annotations

import argparse
import time

import torch

from machine import machine
from memlaw import locality as loc
from memlaw.models import load_base
from memlaw.sweep import sweep_from_dict
from memlaw.sweep.cell import run_cell

CELLS = [  # (adapter, objective, rank)
    ({"kind": "probe"}, {"name": "sft"}, 4),
    ({"kind": "probe"}, {"name": "memft-ot"}, 4),
    ({"kind": "probe"}, {"name": "sft"}, 16),
    ({"kind": "lora"}, {"name": "sft"}, 4),
    ({"kind": "lora"}, {"name": "memft-ot"}, 4),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60, help="training steps per cell (locality does not depend on it)")
    ap.add_argument("--length", type=int, default=160)
    args = ap.parse_args()
    base = load_base("smollm2-135m")
    print(f"# {machine()}; SmolLM2-135M {str(base.dtype).removeprefix('torch.')}, PhoneBook ℓ={args.length}, "
          f"{args.steps} steps, {len(loc.neutral_prompts())} neutral prompts × {loc.NEW_TOKENS} tokens")
    print("| cell | adapter | objective | rank | cell CPU s | locality CPU s | locality wall s | KL mean | unchanged "
          "| agreement |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for i, (adapter, objective, rank) in enumerate(CELLS, 1):
        grid = sweep_from_dict({"name": "locality-cost", "model": "smollm2-135m", "ranks": [rank],
                                "lengths": [args.length], "adapter": adapter, "objective": objective,
                                "train": {"batch_size": 8, "max_steps": args.steps, "check_every": args.steps}})
        cpu = _cpu_of_locality()
        c0 = time.process_time()
        m = run_cell(grid.cells()[0], base).metrics
        cell_cpu, local = time.process_time() - c0, m["locality"]
        print(f"| {i} | {adapter['kind']} | {objective['name']} | {rank} | {cell_cpu:.1f} | {cpu[0]:.1f} | "
              f"{m['locality_s']:.1f} | {local['kl_mean']:.3g} | {local['identical']:.3f} | {local['agreement']:.3f} |",
              flush=True)


def _cpu_of_locality() -> list[float]:
    """Wrap `memlaw.locality.locality` so that the next call's CPU seconds land in the returned list."""
    seen = [float("nan")]
    inner = getattr(loc.locality, "__wrapped_inner__", loc.locality)

    def timed(*a, **k):
        c = time.process_time()
        try:
            return inner(*a, **k)
        finally:
            seen[0] = time.process_time() - c

    timed.__wrapped_inner__ = inner
    import memlaw.engine as engine
    engine.measure_locality = timed
    return seen


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
