"""Three methods cells through the old `memlaw bench methods` code (ce12205), one at a time."""
import json, sys, time
import torch
torch.set_num_threads(1)
from memlaw.benchmarks.methods import MethodsGrid, run_methods
from memlaw.models import load_base
base = load_base("smollm2-135m")
cells = [dict(benchmark="phonebook", ranks=(4,), lengths=(160,), methods=("SFT",), steps=300, batch_size=8),
         dict(benchmark="long-context", ranks=(4,), lengths=(200,), methods=("MemFT-SW",), steps=300, ratio="r100"),
         dict(benchmark="linear-rule", ranks=(16,), lengths=(100,), methods=("MemFT-SW",), steps=350, batch_size=8,
              held_out=100)]
for kw in cells:
    t0 = time.time()
    [row] = run_methods(MethodsGrid(**kw), base)
    m = row["metrics"]
    out = {"benchmark": kw["benchmark"], "method": kw["methods"][0], "rank": kw["ranks"][0],
           **{k: m[k] for k in ("em_rate", "free_acc", "certified", "L_base", "L_final", "delta_loss", "tf_acc", "stubborn")},
           "generalization_em_rate": (row["generalization"] or {}).get("em_rate"), "wall_s": round(time.time() - t0, 1)}
    print(json.dumps(out), flush=True)
