"""Living memories on SmolLM2: an update's time against a fresh write of the same final records.

For each adapter kind: write a certified memory of the first N PhoneBook entries; update it (add 10%
more entries, change 5% of the values) and time that against a fresh write of the final set; run more
such updates in a row (a memory certified after each?); then delete 5% of the records, time that
against a fresh write of what is left, and run the leakage check watching the deleted values. After
every update the memory is re-opened from disk and verified independently (certificate and greedy EM).
Updates run with memlaw's update settings (those the memory was written with at a quarter of its lr,
`memlaw.update.UPDATE_LR_FACTOR`; records certified with margin resting: `memlaw.update.RETIRE_MARGIN`); `--compare-every-record` also times update 1 with every
record training (`retire_margin` None), from a copy of the same memory.
One process, one base model; times exclude loading it. Each row also holds the load average when it
ended (a shared machine: compare times as ratios within one run). Values are never printed.

    OMP_NUM_THREADS=1 python bench/update_speed.py [--kinds probe,lora] [--n 64] [--updates 5] [--lr LR]
        [--rows rows.jsonl] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from machine import machine
from memlaw.benchmarks import phonebook
from memlaw.benchmarks.phonebook import generate_phonebook
from memlaw.config import AdapterConfig, TrainConfig, default_lr
from memlaw.memory import Memory, write_memory
from memlaw.models import load_base
from memlaw.records import Record
from memlaw.update import UPDATE_LR_FACTOR, update_memory, written_settings


def fresh(records, base, kind: str, rank: int, train: TrainConfig, out: Path) -> dict:
    t0 = time.perf_counter()
    w = write_memory(records, model=base, out=out, adapter=AdapterConfig(kind=kind, rank=rank), train=train)
    wall = time.perf_counter() - t0
    s = w.verification.summary()
    return {"steps": w.train.steps, "wall_s": wall, "certified": s["certified"], "em": s.get("em"), "n": s["n_records"]}


def checked(directory: Path, base) -> dict:
    """The saved memory, opened from disk and verified: certified and exact counts."""
    with Memory.open(directory, base=base) as mem:
        s = mem.verify().summary()
    return {"certified": s["certified"], "em": s["em"], "n": s["n_records"]}


def changes(current: list[Record], pool: list[Record], n_add: int, n_change: int, rng: random.Random,
            numbers: list[str]) -> tuple[list[Record], list[Record]]:
    """`n_add` unseen PhoneBook entries and `n_change` existing keys with new (unused) numbers."""
    added = pool[:n_add]
    del pool[:n_add]
    changed = [Record(r.key, numbers.pop()) for r in rng.sample(current, n_change)]
    return added, changed


def entries(n: int, spare: int) -> tuple[list[Record], list[Record], list[str]]:
    """The memory's first `n` PhoneBook entries, `spare` more to add later, and numbers no entry holds
    (new values for changed keys)."""
    book = phonebook(n + spare)
    taken = {r.value for r in book}
    return book[:n], book[n:], [r.value for r in generate_phonebook(200, seed=1) if r.value not in taken]


class Rows(list):
    """The rows of one kind; each is also printed to stderr as it comes (a long run shows its progress) and
    appended to `path` (a run cut off keeps its rows)."""

    def __init__(self, kind: str, path: Path | None):
        super().__init__()
        self.kind, self.path = kind, path

    def append(self, row: dict) -> None:
        row = {**row, "load_avg_1m": round(os.getloadavg()[0], 1)}
        super().append(row)
        line = json.dumps({"kind": self.kind, **row})
        print(line, file=sys.stderr, flush=True)
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line + "\n")


def timed_update(mem: Path, base, **options) -> tuple[object, float]:
    t0 = time.perf_counter()
    u = update_memory(mem, base=base, **options)
    return u, time.perf_counter() - t0


def run_kind(kind: str, args, base, work: Path) -> list[dict]:
    train = TrainConfig(until="certified", lr=args.lr, max_steps=args.max_steps, batch_size=16, seed=0)
    rng = random.Random(0)
    current, pool, numbers = entries(args.n, args.updates * round(0.10 * args.n) + 8)
    mem = work / kind / "memory"
    rows = Rows(kind, args.rows)
    rows.append({"what": f"write {args.n}", **fresh(current, base, kind, args.rank, train, mem)})
    n_add, n_change = round(0.10 * args.n), round(0.05 * args.n)
    for i in range(1, args.updates + 1):
        added, changed = changes(current, pool, n_add, n_change, rng, numbers)
        if i == 1 and args.compare_every_record:
            shutil.copytree(mem, work / kind / "every")
            written = written_settings(json.loads((mem / "memlaw.json").read_text()))[2]
            every = dataclasses.replace(written, until="certified", retire_margin=None)
            u, wall = timed_update(work / kind / "every", base, changes=added + changed, train=every)
            rows.append({"what": f"update 1 with every record training: +{n_add} ~{n_change}"
                         + ("" if u.saved else " (NOT SAVED)"), "steps": u.train.steps, "wall_s": wall,
                         **checked(work / kind / "every", base), "old_recalled": len(u.old_recalled)})
        u, wall = timed_update(mem, base, changes=added + changed)
        if u.saved:
            by_key = {r.key: r for r in changed}
            current = [by_key.get(r.key, r) for r in current] + added
        row = {"what": f"update {i}: +{n_add} ~{n_change}" + ("" if u.saved else " (NOT SAVED)"), "steps": u.train.steps,
               "wall_s": wall, **checked(mem, base), "old_recalled": len(u.old_recalled)}
        if i == 1:
            row["fresh"] = fresh(current, base, kind, args.rank, train, work / kind / "fresh1")
        rows.append(row)
    gone = rng.sample(current, n_change)
    u, wall = timed_update(mem, base, delete=[r.key for r in gone])
    if u.saved:
        current = [r for r in current if r not in gone]
    with Memory.open(mem, base=base) as m:
        leak = m.leakage(watched=gone, random_keys=args.random_keys).summary()
        answers = m.recall([r.key for r in gone])
    rows.append({"what": f"delete {n_change}" + ("" if u.saved else " (NOT SAVED)"), "steps": u.train.steps, "wall_s": wall, **checked(mem, base),
                 "old_recalled": len(u.old_recalled) + sum(a == r.value for a, r in zip(answers, gone)),
                 "fresh": fresh(current, base, kind, args.rank, train, work / kind / "fresh_del"), "leakage": leak})
    return rows


def table(kind: str, rows: list[dict], rank: int, lr: float | None) -> str:
    write_lr = lr or default_lr(kind, "certified")
    lines = [f"\n{kind}, rank {rank}, writes at lr {write_lr:g}, updates at {write_lr * UPDATE_LR_FACTOR:g} "
             f"(UPDATE_LR_FACTOR {UPDATE_LR_FACTOR:g}), until certified",
             "| step | steps | time (s) | certified | EM | old values recalled | fresh write of the same records: "
             "steps, time (s) | update / fresh | load |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = r.get("fresh")
        ratio = f"{r['wall_s'] / f['wall_s']:.2f}" if f else ""
        fresh_text = f"{f['steps']}, {f['wall_s']:.1f} ({f['certified']}/{f['n']} certified)" if f else ""
        lines.append(f"| {r['what']} | {r['steps']} | {r['wall_s']:.1f} | {r['certified']}/{r['n']} | {r['em']}/{r['n']} "
                     f"| {r.get('old_recalled', '')} | {fresh_text} | {ratio} | {r['load_avg_1m']} |")
    leak = rows[-1]["leakage"]
    lines.append(f"after the delete, leakage: {leak['prompts']} prompts that are not keys (the deleted keys "
                 f"included), {leak['leaks']} outputs holding a value or an 8-character run of one; stored values "
                 f"found {leak['stored_values_leaked']}/{leak['n_stored']}, deleted values found "
                 f"{leak['watched_values_leaked']}/{leak['n_watched']}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", default="probe,lora")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--updates", type=int, default=5)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--lr", type=float, default=None, help="The writes' lr (updates take UPDATE_LR_FACTOR of it). "
                    "Default: the kind's for writes until certified (config.CERTIFY_LR).")
    ap.add_argument("--max-steps", type=int, default=2000)
    ap.add_argument("--random-keys", type=int, default=32)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--json", type=Path, help="Also write the rows as JSON here.")
    ap.add_argument("--rows", type=Path, help="Append each row to this JSON Lines file as it comes.")
    ap.add_argument("--compare-every-record", action="store_true",
                    help="Also time update 1 with every record training (no retiring), on a copy.")
    args = ap.parse_args()
    base = load_base(args.model)
    print(f"{args.model}, {base.dtype}, {machine()}, load average {os.getloadavg()[0]:.1f}")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds.split(","):
            t0 = time.perf_counter()
            out[kind] = run_kind(kind, args, base, Path(tmp))
            print(table(kind, out[kind], args.rank, args.lr), flush=True)
            print(f"({kind}: {time.perf_counter() - t0:.0f} s in all)", flush=True)
            shutil.rmtree(Path(tmp) / kind, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
