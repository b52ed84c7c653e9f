"""Steps and seconds to certified for training variants, interleaved in one process on one resident model.

Each variant is a set of overrides of memlaw's `TrainConfig` (key `train`), `ObjectiveConfig`
(key `objective`) and `AdapterConfig` (key `adapter`); `lr` may be a number or a per-kind mapping,
`"only"` limits a variant to adapter kinds or kind:rank specs (`"probe"`, `["lora:8"]`), `"sets"`
to record sets, and `"cap"` stops its runs sooner than `--cap`. Runs go seed by seed, record set by record set, adapter by adapter, and within that
variant by variant, so variants being compared run next to each other in time (the machine is shared). Every run is `write_memory(..., recall=False)`
until every record certifies or `--max-steps`; seconds are the whole call (encoding, L_base, the
prefix, training, the final certificate pass). One JSON line per run goes to `--out`, and runs
already there are not run again (resume); the table gives medians per (record set, adapter,
variant) over the seeds asked for, and how many of them certified.

    python bench/converge.py --sets pb16 mixed --adapters probe:16 lora:8 --seeds 0 1 2 --cap 400 \\
        --variant default='{}' --variant lr3e-3='{"train": {"lr": 0.003}}' --out out/converge.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from machine import machine
from memlaw.benchmarks import mixed, phonebook
from memlaw.config import AdapterConfig, ObjectiveConfig, TrainConfig
from memlaw.memory import write_memory
from memlaw.models import load_base
from runs import git_commit, keep, print_head, resumed, saved


def records(name: str):
    if name == "mixed":
        return mixed()
    if name.startswith("pb"):
        return phonebook(int(name[2:]))
    raise SystemExit(f"unknown record set {name!r}: pb<N> or mixed")


class _Cap(Exception):
    pass


def configs(variant: dict, kind: str, seed: int) -> tuple[TrainConfig, ObjectiveConfig]:
    train = dict(variant.get("train", {}))
    if isinstance(train.get("lr"), dict):
        train["lr"] = train["lr"][kind]
    train = {"until": "certified", "seed": seed, **train}
    return TrainConfig(**train), ObjectiveConfig(**variant.get("objective", {}))


def one(base, name: str, kind: str, rank: int, variant: dict, seed: int, cap: int) -> dict:
    """One write; stopped after `cap` steps without touching its schedule (which spans its own budget)."""
    train, objective = configs(variant, kind, seed)

    history = []

    def on_step(info) -> None:
        if info.certified is not None:
            history.append((info.step, info.certified, info.stubborn))
        if info.step >= cap and info.certified != info.n_records:
            raise _Cap

    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    adapter = AdapterConfig(kind=kind, rank=rank, **variant.get("adapter", {}))
    try:
        res = write_memory(records(name), model=base, adapter=adapter, objective=objective,
                           train=train, recall=False, on_step=on_step)
    except _Cap:
        wall = time.perf_counter() - t0
        return {"steps": cap, "certified": False, "n_certified": history[-1][1] if history else None,
                "n_records": len(records(name)), "wall_s": wall, "train_s": None, "steps_per_s": cap / wall,
                "checks": len(history), "history": history, "load": [load, os.getloadavg()[0]]}
    wall = time.perf_counter() - t0
    s = res.verification.summary()
    return {"steps": res.train.steps, "certified": s["certified"] == s["n_records"], "n_certified": s["certified"],
            "n_records": s["n_records"], "wall_s": wall, "train_s": res.train.wall_s,
            "steps_per_s": res.train.steps_per_s, "checks": len(res.train.history),
            "history": [(h["step"], h["certified"], h["stubborn"]) for h in res.train.history],
            "load": [load, os.getloadavg()[0]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", default=["pb16", "mixed"])
    ap.add_argument("--adapters", nargs="+", default=["probe:16", "lora:8"], help="kind:rank")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variant", action="append", default=[], help="name=JSON overrides (repeatable)")
    ap.add_argument("--variants", default=None, help="a JSON file {name: overrides, ...} (before any --variant)")
    ap.add_argument("--cap", type=int, default=600, help="stop a run after this many steps (its schedule "
                    "spans the variant's own budget: TrainConfig's max_steps, default 2000)")
    ap.add_argument("--out", default=None, help="append one JSON line per run here")
    ap.add_argument("--table", nargs="+", default=None, help="only print the table of these saved runs")
    args = ap.parse_args()
    if args.table:
        table(saved(args.table))
        return
    variants = {}
    if args.variants:
        with open(args.variants) as f:
            variants.update(json.load(f))
    for v in args.variant or ([] if variants else ["default={}"]):
        name, _, spec = v.partition("=")
        variants[name] = json.loads(spec or "{}")
    base = load_base("smollm2-135m")
    commit = git_commit()
    rows = resumed(args.out)
    done = {(r["set"], r["adapter"], r["variant"], r["seed"]) for r in rows}
    for seed in args.seeds:
        for name in args.sets:
            for spec in args.adapters:
                kind, rank = spec.split(":")
                for vname, variant in variants.items():
                    only = variant.get("only", kind)
                    if not {kind, spec} & ({only} if isinstance(only, str) else set(only)) \
                            or name not in variant.get("sets", [name]):
                        continue
                    if (name, spec, vname, seed) in done:
                        continue
                    r = {"set": name, "adapter": spec, "variant": vname, "seed": seed, "spec": variant, "commit": commit,
                         **one(base, name, kind, int(rank), variant, seed, variant.get("cap", args.cap))}
                    keep(r, rows, args.out, f"  {name} {spec} {vname} seed {seed}: steps {r['steps']} certified "
                         f"{r['n_certified']}/{r['n_records']} wall {r['wall_s']:.1f} s "
                         f"({r['steps_per_s'] or 0:.2f} steps/s)")
    print(f"\nmachine: {machine()}; commit {commit}; cap {args.cap} steps\n")
    table([r for r in rows if r["seed"] in args.seeds])


def table(rows: list[dict]) -> None:
    """Per (record set, adapter, variant): seeds certified, median steps and seconds, steps per seed."""
    print("medians over seeds (a run that did not certify counts as the cap, and its seconds as its wall time); "
          "load: median 1-minute load average at the runs' starts (2 cores)\n")
    head = (f"{'set':7} {'adapter':9} {'variant':16} {'certified':>9} {'steps':>6} {'seconds':>8} {'steps/s':>8} "
            f"{'load':>5}  steps per seed")
    print_head(head)
    for name in dict.fromkeys(r["set"] for r in rows):
        for spec in dict.fromkeys(r["adapter"] for r in rows if r["set"] == name):
            for vname in dict.fromkeys(r["variant"] for r in rows if (r["set"], r["adapter"]) == (name, spec)):
                rs = sorted((r for r in rows if (r["set"], r["adapter"], r["variant"]) == (name, spec, vname)),
                            key=lambda r: r["seed"])
                steps = statistics.median(r["steps"] for r in rs)
                secs = statistics.median(r["wall_s"] for r in rs)
                rate = statistics.median(r["steps"] / r["wall_s"] for r in rs)
                load = statistics.median(r["load"][0] for r in rs) if all("load" in r for r in rs) else float("nan")
                ok = sum(r["certified"] for r in rs)
                each = " ".join(f"{r['seed']}:{r['steps']}{'' if r['certified'] else '+'}" for r in rs)
                print(f"{name:7} {spec:9} {vname:16} {ok:>4}/{len(rs):<4} {steps:6.0f} {secs:8.1f} {rate:8.3f} "
                      f"{load:5.1f}  {each}")


if __name__ == "__main__":
    main()
