"""The floor a linear-rule generalization number stands on: the base model's own greedy EM (issue 14).

For each cell of a linear-rule sweep grid (one per rule and ℓ), the same training and held-out pairs the
cell writes and measures, encoded with the cell's prompt, decoded greedily by the base model through a
fresh, untrained adapter of the cell's kind (B = 0: exactly the base model). A trained adapter generalizes
only where its held-out EM is above this. Prints a Markdown table; values are never printed.

    cd bench && OMP_NUM_THREADS=1 python rule_floor.py ../configs/generalization-smollm2-linear-rule-probe.yaml
"""

from __future__ import annotations

import argparse
import time

from machine import machine
from memlaw.engine import attached, measure
from memlaw.models import load_base
from memlaw.sweep.cell import prepare_cell
from memlaw.sweep.grid import load_sweep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("grid", help="a linear-rule sweep YAML")
    args = ap.parse_args()
    sweep = load_sweep(args.grid)
    cells = {(c.benchmark, c.length): c for c in sweep.cells()}.values()   # one per memory: rank, seed, objective do not matter
    base = load_base(sweep.model, dtype=sweep.dtype)
    print(f"<!-- python bench/rule_floor.py {args.grid} -->")
    print(f"# {machine()}; {sweep.model}, untrained {sweep.adapter.kind} (the base model), greedy decoding")
    print("| rule | ℓ | training pairs | base EM on them | held-out pairs | base EM on them | seconds |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for cell in cells:
        t0 = time.perf_counter()
        prep = prepare_cell(cell, base)
        if not hasattr(prep, "enc"):
            raise SystemExit(f"cell {cell.key[:12]} cannot run: {prep.error}")
        with attached(prep.adapter, base) as adapter:
            got = measure(base, adapter, prep.enc, margin=0.0, base_losses=None, held_out=prep.held_out)
        a, b, c = cell.benchmark.rule
        train, held = got.verification.summary(), got.held_out.summary()
        print(f"| {a}x + {b}y + {c} | {cell.length} | {train['n_records']} | {train['em_rate']:.3f} | "
              f"{held['n_records']} | {held['em_rate']:.3f} | {time.perf_counter() - t0:.1f} |", flush=True)


if __name__ == "__main__":
    main()
