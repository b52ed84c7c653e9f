"""Sweep throughput (cells/hour) with and without multi-adapter training, in one process on one machine.

Runs the same small PhoneBook grid of `probe` cells once per `--stack` value (1 = one cell at a
time, the plain executor; K = up to K cells trained in one forward pass per step, each verified
and stored alone), each into a fresh store, on one resident base model. Prints cells/hour, the
ratio against stack 1 from this same run, and how far the stacked rows are from the stack-1 rows
(max |difference| of ΔL, and whether EM and certified counts are equal), next to the machine.

    python bench/sweep_speed.py                         # SmolLM2-135M, ranks 1 2 4 8 x lengths 20 80, stack 1 4 8
    python bench/sweep_speed.py --model tiny            # the tiny random model (seconds; shows it works)
    python bench/sweep_speed.py --device cuda           # on a GPU: both modes on the same card
    python bench/sweep_speed.py --stack 1 --before      # today's cells against the ones before issue 15's changes

`--attn eager` switches the base model's attention implementation first. Why: on CPU, sdpa runs
short sequences through its flash-attention kernel, whose backward was ~35% of a SmolLM2 bf16 step
in a profile; on the tiny model in bf16, eager (or sdpa's math backend) took 0.93 s for 40 steps
against sdpa's 1.46 s, in float32 1.00 s against 0.84 s. It is not a free switch: it changes the
numbers (bf16: p_t up to 0.02 apart after 40 steps), so one study should not mix the two.
"""

from __future__ import annotations

import argparse
import multiprocessing.forkserver
import statistics
import tempfile
import time
from pathlib import Path

import torch

from machine import machine
import memlaw.locality
from memlaw.models import load_base, resolve_device
from memlaw.store import open_store
from memlaw.sweep import run_local, sweep_from_dict
from memlaw.sweep.local import auto_workers, thread_budget


def grid(args, stack: int, shared_min_rows: int | None = None) -> dict:
    rows = {} if shared_min_rows is None else {"shared_min_rows": shared_min_rows}
    return {"name": f"sweep-speed-stack{stack}", "model": args.model, "dtype": args.dtype,
            "benchmark": {"name": "phonebook"}, "ranks": args.ranks, "lengths": args.lengths, "seeds": args.seeds,
            "adapter": {"kind": "probe", **({"layer": args.layer} if args.layer is not None else {})},
            "objective": {"name": "sft"}, "prompt": {"template": args.template} if args.template else {},
            "train": {"lr": args.lr, "batch_size": args.batch, "max_steps": args.max_steps,
                      "check_every": args.check_every, "until": "budget", **rows},
            "stack": stack}


BEFORE = {"shared_min_rows": 1, "KEEP_LOGITS_BYTES": 0}
"""`--before`: what issue 15 changed in a fixed-budget cell, put back: every training batch runs its shared
prompt as a row of its own (`TrainConfig.shared_min_rows` 1), and locality runs the base model's side
of every cell again (`memlaw.locality.KEEP_LOGITS_BYTES` 0)."""


def run(args, base, stack: int, workdir: Path, before: bool = False, workers: int | str = 1) -> tuple[float, dict]:
    """One sweep of the grid into a fresh store, as a fresh process would run it (nothing kept from an
    earlier sweep): (wall seconds of the cells, rows by key). With several workers the wall time includes
    starting them (each imports torch and loads the model)."""
    sweep = sweep_from_dict(grid(args, stack, BEFORE["shared_min_rows"] if before else None))
    memlaw.locality._KEPT.clear()
    keep = memlaw.locality.KEEP_LOGITS_BYTES
    memlaw.locality.KEEP_LOGITS_BYTES = BEFORE["KEEP_LOGITS_BYTES"] if before else keep
    with open_store(workdir / f"stack{stack}-{time.monotonic_ns()}.db") as store:
        t0 = time.perf_counter()
        summary = run_local(sweep, store, base=base, workers=workers)
        wall = time.perf_counter() - t0
        if workers != 1:     # the next run starts the workers' server again, importing memlaw, as a new process would
            multiprocessing.forkserver._forkserver._stop()
        memlaw.locality.KEEP_LOGITS_BYTES = keep
        if summary.failed:
            raise SystemExit(f"stack {stack}: {summary.failed} cells failed; see `memlaw runs list --all`")
        return wall, {(r["rank"], r["length"], r["seed"]): r for r in store.load_cells()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--stack", type=int, nargs="+", default=[1, 4, 8], help="stack sizes to compare (1 = off)")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--lengths", type=int, nargs="+", default=[20, 80], help="PhoneBook value tokens per cell")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--max-steps", type=int, default=60)
    ap.add_argument("--check-every", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--layer", type=int, default=None, help="probe layer (default: the paper's depth)")
    ap.add_argument("--template", choices=["chat", "plain"], default=None)
    ap.add_argument("--workers", nargs="+", default=[],
                    help="also run stack 1 with these worker processes side by side ('auto' or a number)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per stack size (median wall time)")
    ap.add_argument("--attn", choices=["sdpa", "eager"], default=None, help="attention implementation to use")
    ap.add_argument("--before", action="store_true",
                    help="also run stack 1 as before issue 15's changes (BEFORE) and give each row's ratio against it")
    args = ap.parse_args()
    if args.model == "tiny":   # the tiny model needs plain prompts and a shallow layer to learn anything
        args.template = args.template or "plain"
        args.layer = 1 if args.layer is None else args.layer
        args.lr = 0.03 if args.lr == 1e-2 else args.lr
    if 1 not in args.stack:
        args.stack = [1, *args.stack]
    device = resolve_device(args.device)
    base = load_base(args.model, dtype=args.dtype, device=device)
    if args.attn:
        base.model.set_attn_implementation(args.attn)
    n_cells = len(sweep_from_dict(grid(args, 1)).cells())
    results = {}
    auto = auto_workers(base, n_cells)
    # 'auto' runs as the number it resolves to
    workers = {f"workers {n}": n for n in (auto if w == "auto" else int(w) for w in args.workers)}
    modes = (["before"] if args.before else []) + list(args.stack) + list(workers)
    with tempfile.TemporaryDirectory(prefix="memlaw-sweep-speed-") as tmp:
        for rep in range(args.repeats):              # interleaved, so a change in the machine's load hits every mode
            for mode in modes:
                if mode == "before":
                    wall, rows = run(args, base, 1, Path(tmp), before=True)
                elif mode in workers:
                    wall, rows = run(args, base, 1, Path(tmp), workers=workers[mode])
                else:
                    wall, rows = run(args, base, mode, Path(tmp))
                results.setdefault(mode, ([], rows))[0].append(wall)
                print(f"  {'stack ' if isinstance(mode, int) else ''}{mode}, run {rep + 1}: {n_cells} cells in {wall:.1f} s",
                      flush=True)
    walls = {k: statistics.median(v[0]) for k, v in results.items()}
    plain_rows = results[1][1]
    print(f"\nmachine: {machine(device)}")
    print(f"model {args.model} ({base.dtype}, {device}, attention {base.model.config._attn_implementation}, "
          f"{torch.get_num_threads()} torch threads in this process; workers: {thread_budget()} threads // workers "
          f"each, 'auto' = {auto}); "
          f"grid: ranks {args.ranks} x lengths {args.lengths} x seeds {args.seeds} = {n_cells} probe cells, "
          f"{args.max_steps} steps each, batch {args.batch}; median of {args.repeats}; wall time of the cells "
          "(model loaded once, before)\n")
    head = (f"{'mode':>12} {'wall s':>8} {'cells/hour':>11} {'× stack 1':>10} {'× before':>9} {'max |ΔΔL|':>10} "
            f"{'EM, certified equal':>20}")
    print(head)
    print("-" * len(head))
    for stack, wall in walls.items():
        rows = results[stack][1]
        dl = max(abs(rows[k]["delta_loss"] - plain_rows[k]["delta_loss"]) for k in plain_rows)
        same = all((rows[k]["metrics"].get("em"), rows[k]["metrics"]["certified"]) ==
                   (plain_rows[k]["metrics"].get("em"), plain_rows[k]["metrics"]["certified"]) for k in plain_rows)
        before = f"{walls['before'] / wall:8.2f}×" if "before" in walls else f"{'-':>9}"
        print(f"{stack:>12} {wall:8.1f} {3600 * n_cells / wall:11.1f} {walls[1] / wall:9.2f}× {before} {dl:10.2e} "
              f"{'yes' if same else 'NO':>20}")
    if "before" in walls:
        print("\nbefore: stack 1 with shared_min_rows 1 (every training batch runs its shared prompt as a row of "
              "its own) and the base model's locality logits computed in every cell (KEEP_LOGITS_BYTES 0), as "
              "before issue 15; max |ΔΔL| and EM against stack 1 at the default")


if __name__ == "__main__":
    main()
