"""Quick probe: update steps/seconds at several learning rates from one certified memory (PB, SmolLM2 probe r16)."""
import json, random, shutil, sys, time, dataclasses
from pathlib import Path
sys.path.insert(0, "/work/main/bench")
from update_speed import changes
from memlaw.benchmarks import phonebook
from memlaw.benchmarks.phonebook import generate_phonebook
from memlaw.config import AdapterConfig, TrainConfig
from memlaw.memory import write_memory
from memlaw.models import load_base
from memlaw.update import update_memory

n = int(sys.argv[1]); lrs = [float(x) for x in sys.argv[2].split(",")]
base = load_base("smollm2-135m")
work = Path("/work/out/upd/w"); shutil.rmtree(work, ignore_errors=True)
book = phonebook(n + 16); cur, pool = book[:n], book[n:]
taken = {r.value for r in book}
numbers = [r.value for r in generate_phonebook(200, seed=1) if r.value not in taken]
train = TrainConfig(until="certified", max_steps=2000, batch_size=16, seed=0)
t0 = time.perf_counter()
w = write_memory(cur, model=base, out=work / "m", adapter=AdapterConfig(kind=sys.argv[3] if len(sys.argv) > 3 else "probe", rank=16), train=train)
print(json.dumps({"what": "write", "n": n, "steps": w.train.steps, "s": round(time.perf_counter() - t0, 1)}), flush=True)
added, changed = changes(cur, pool, round(0.1 * n), round(0.05 * n), random.Random(0), numbers)
for lr in lrs:
    for retire in (0.2,):
        d = work / f"u{lr}"; shutil.copytree(work / "m", d)
        t0 = time.perf_counter()
        u = update_memory(d, base=base, changes=added + changed, train=dataclasses.replace(train, lr=lr, retire_margin=retire))
        print(json.dumps({"what": "update", "lr": lr, "retire": retire, "steps": u.train.steps, "saved": u.saved,
                          "s": round(time.perf_counter() - t0, 1)}), flush=True)
