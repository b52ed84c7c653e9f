"""Verify throughput: certify 1,000 PhoneBook records and greedy-recall them, against the paths they replaced.

The adapter is a probe (rank 16 at the model's default layer) with a random nonzero B ~ N(0, 0.02²);
`--write K` first trains it on the first K records for `--write-steps` steps, so that some records
sit near the certificate's threshold. Certifying costs the same whether a record certifies or not
(one teacher-forced pass), and greedy decoding is asked for exactly the answer's length, as
`verify` does.

Timed rows, each `--repeats` times at every `--threads` count, interleaved, in this one process on one
resident model; wall and process CPU seconds, medians, and "× before" as the median of the ratios
within each repeat:
- certify, before: the padded pass `verify` ran before issue 15.4 (cached prefix, every prompt
  token in every row, chunks of `--batch`, vocabulary statistics on whole chunks);
- certify: the certificate's pass `verify` runs now (`memlaw.certify.certificate_probs`);
- greedy, before: `verify.greedy` with the model's own `logits_to_keep=1` prefill (as before issue 15.4),
  on the first `--greedy-n` records;
- greedy: `verify.greedy` now, on the same records;
- verify (certify + recall): `verify(recall=True)`, what `memlaw verify` and every sweep cell run (once).

Checks printed above the table:
- p_t of the certificate's pass against the pass before it on every answer token (max |Δp_t|,
  tokens bit-identical) and the certified sets of both;
- against the plain pass of a float32 copy of the base on the first `--f32-n` records (bf16 models
  only): max |Δp_t| and the certified sets;
- greedy tokens: now, before and HF `generate` on the `--greedy-n` records.

    OMP_WAIT_POLICY=PASSIVE python bench/verify_speed.py --threads 1 2 --write 16   # SmolLM2-135M
    python bench/verify_speed.py --model tiny --n 40 --f32-n 40    # the tiny random model (shows it works)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from transformers import DynamicCache

import memlaw.verify as verify_module
from machine import machine, matmul_rate
from memlaw.adapters import make_adapter
from memlaw.benchmarks.phonebook import phonebook
from memlaw.certificate import certified
from memlaw.certify import certificate_probs
from memlaw.config import AdapterConfig, ObjectiveConfig, PromptConfig, TrainConfig
from memlaw.encode import encode
from memlaw.forward import TeacherForcer, TokenProbs, answer_probs
from memlaw.models import load_base, resolve_device
from memlaw.train import write
from memlaw.verify import greedy, verify


def timed(fn):
    """fn's result, wall seconds and this process's CPU seconds (all its threads). On a shared machine the
    CPU seconds are the steadier measure of the work; the wall seconds are what a user waits."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, (time.perf_counter() - t0, time.process_time() - c0)


def layer_matmul_rate() -> float:
    """bf16 GFLOP/s of one thread at an MLP matmul's shape (1408 × 576 × 1536), median of 5: how much
    of the CPU this process gets at the moment."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return matmul_rate(1408, 576, 1536, torch.bfloat16, reps=5, stat=statistics.median) / 1e9
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def certify_before(base, enc, start_layer: int, chunk: int) -> dict[int, TokenProbs]:
    """The certificate pass `verify` ran before issue 15.4: padded chunks, every prompt token in every row,
    log-softmax and a bf16 argmax on the whole (B, T, V) logits."""
    tf = TeacherForcer(base, enc, start_layer=start_layer)
    out = {}
    for part in tf.batches(range(len(enc)), chunk):
        logits, batch = tf.logits(part)
        nll = -torch.log_softmax(logits.float(), dim=-1).gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)
        correct = logits.argmax(-1) == batch.targets
        for b, i in enumerate(part):
            n = int(batch.mask[b].sum())
            out[i] = TokenProbs(torch.exp(-nll[b, :n]), nll[b, :n], correct[b, :n])
    return out


def _greedy_batch_before(base, ids, n_new: int, stop_id: int) -> list[list[int]]:
    """`verify._greedy_batch` before issue 15.4: the model's forward with logits_to_keep=1."""
    model = base.model
    kw = {verify_module.cache_arg(model.model): DynamicCache(config=model.config), "use_cache": True,
          "logits_to_keep": 1}
    logits = model(input_ids=ids, **kw).logits[:, -1]
    done = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
    steps = []
    for t in range(n_new):
        token = logits.float().argmax(-1)
        steps.append(token)
        done |= token == stop_id
        if t == n_new - 1 or bool(done.all()):
            break
        logits = model(input_ids=token[:, None], **kw).logits[:, -1]
    return torch.stack(steps, 1).tolist()


def greedy_before(*args, **kwargs):
    now = verify_module._greedy_batch
    verify_module._greedy_batch = _greedy_batch_before
    try:
        return greedy(*args, **kwargs)
    finally:
        verify_module._greedy_batch = now


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--n", type=int, default=1000, help="PhoneBook records")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--greedy-n", type=int, default=128, help="records the greedy before/now rows decode")
    ap.add_argument("--f32-n", type=int, default=128, help="records checked against a float32 plain pass")
    ap.add_argument("--write", type=int, default=0, help="train the probe on the first K records first")
    ap.add_argument("--write-steps", type=int, default=60)
    ap.add_argument("--profile", action="store_true",
                    help="instead: the operator profile of one certify pass, before and now, and one greedy batch")
    args = ap.parse_args()
    device = resolve_device(args.device)
    base = load_base(args.model, dtype=args.dtype, device=device)
    prompt = PromptConfig(template="plain") if args.model == "tiny" else PromptConfig()
    enc = encode(phonebook(args.n), base.tokenizer, prompt, max_length=base.context_length)
    adapter = make_adapter(AdapterConfig(kind="probe", rank=args.rank, layer=1 if args.model == "tiny" else None),
                           base, seed=0)
    with torch.no_grad():
        adapter.B.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(0))
    adapter.attach(base)
    wrote = ""
    if args.write:
        part = encode(phonebook(args.n)[: args.write], base.tokenizer, prompt, max_length=base.context_length)
        _, (s, _) = timed(lambda: write(base, adapter, part, ObjectiveConfig(), TrainConfig(
            until="budget", max_steps=args.write_steps, lr=4e-2, batch_size=16)))
        wrote = f"; probe trained on the first {args.write} records for {args.write_steps} steps (lr 4e-2, {s:.0f} s)"
    adapter.eval()
    stop = enc.terminator[0]
    limits = [len(enc.answer_ids(i)) for i in range(len(enc))]
    if args.profile:
        return profile(base, enc, adapter, args, limits)
    sub = list(range(min(args.greedy_n, len(enc))))
    sub_prompts, sub_limits = [enc.prompt_ids[i] for i in sub], [limits[i] for i in sub]

    warm = [next(i for i in range(len(enc)) if len(enc.prompt_ids[i]) == n) for n in set(map(len, enc.prompt_ids))]
    greedy(base, [enc.prompt_ids[i] for i in warm], [limits[i] for i in warm], stop)   # warm-up: every prompt length
    times: dict[tuple[str, int], list[tuple[float, float]]] = {}
    keep: dict[str, object] = {}
    rows = {
        "certify, before": (len(enc), lambda: certify_before(base, enc, adapter.first_layer, args.batch)),
        "certify": (len(enc), lambda: certificate_probs(base, enc, batch_size=args.batch)),
        "greedy, before": (len(sub), lambda: greedy_before(base, sub_prompts, sub_limits, stop, args.batch)),
        "greedy": (len(sub), lambda: greedy(base, sub_prompts, sub_limits, stop, args.batch)),
    }
    load, rate = [os.getloadavg()], [layer_matmul_rate()]
    for _ in range(args.repeats):
        for threads in args.threads:
            torch.set_num_threads(threads)
            for what, (_, fn) in rows.items():
                keep[what], s = timed(fn)
                times.setdefault((what, threads), []).append(s)
    load.append(os.getloadavg())
    rate.append(layer_matmul_rate())
    once = {
        "verify (certify + recall)": (len(enc), lambda: verify(base, adapter, enc, recall=True, batch_size=args.batch)),
    }
    for threads in args.threads:
        torch.set_num_threads(threads)
        for what, (_, fn) in once.items():
            keep[what], s = timed(fn)
            times[(what, threads)] = [s]
    load.append(os.getloadavg())
    rate.append(layer_matmul_rate())
    hf = greedy(base, sub_prompts, sub_limits, stop, args.batch, hf_generate=True)
    checks = compare(keep, hf)
    adapter.detach()
    if base.dtype != torch.float32 and args.f32_n:
        checks += float32_check(args, enc, adapter, keep["certify, before"], keep["certify"])
    counts = {**rows, **once}

    print(f"\nmachine: {machine(device)} (the table's threads: {', '.join(map(str, args.threads))}; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')})")
    print(f"load average (1, 5, 15 min) before, after the repeats, at the end: "
          + "; ".join(", ".join(f"{x:.2f}" for x in la) for la in load))
    print("one thread's bf16 matmul rate at an MLP shape (1408×576×1536), at the same three points: "
          + ", ".join(f"{r:.0f}" for r in rate) + " GFLOP/s")
    print(f"model {args.model} ({base.dtype}, {device}); PhoneBook {len(enc)} records, "
          f"{len(set(map(len, enc.prompt_ids)))} distinct prompt lengths, answers of {min(limits)}-{max(limits)} "
          f"tokens; probe r={args.rank} at layer {adapter.first_layer}, random nonzero B{wrote}; batch {args.batch}; "
          f"medians of {args.repeats}")
    for line in checks:
        print(line)
    print()
    head = (f"{'':26} {'threads':>7} {'records':>7} {'wall s':>7} {'records/s':>9} {'× before':>8} "
            f"{'CPU s':>7} {'rec/CPU-s':>9} {'× before':>8}")
    print(head)
    print("-" * len(head))
    for threads in args.threads:
        for what, (n, _) in counts.items():
            runs = times[(what, threads)]
            wall, cpu = (statistics.median(x[k] for x in runs) for k in (0, 1))
            ref = {"certify": "certify, before", "greedy": "greedy, before"}.get(what)
            ratios = ["-", "-"]
            if ref:       # median of the ratios within each repeat: the load drifts between repeats
                pairs = list(zip(times[(ref, threads)], runs))
                ratios = [f"{statistics.median(a[k] / b[k] for a, b in pairs):7.2f}×" for k in (0, 1)]
            print(f"{what:26} {threads:7d} {n:7d} {wall:7.1f} {n / wall:9.1f} {ratios[0]:>8} "
                  f"{cpu:7.1f} {n / cpu:9.1f} {ratios[1]:>8}")
    print("\n(wall, CPU seconds of every run: " + "; ".join(
        f"{w} @{t}: " + ", ".join(f"{a:.1f}/{b:.1f}" for a, b in v) for (w, t), v in times.items()) + ")")


def profile(base, enc, adapter, args, limits) -> None:
    """Where a pass's time goes: torch.profiler's operators by self CPU time, with matmul GFLOP/s."""
    n = min(args.greedy_n, len(enc))
    prompts = [enc.prompt_ids[i] for i in range(len(enc)) if len(enc.prompt_ids[i]) == len(enc.prompt_ids[0])][:n]
    passes = {
        f"certify, before ({len(enc)} records)": lambda: certify_before(base, enc, adapter.first_layer, args.batch),
        f"certify ({len(enc)} records)": lambda: certificate_probs(base, enc, batch_size=args.batch),
        f"greedy ({len(prompts)} prompts of one length)": lambda: greedy(base, prompts, limits[0], enc.terminator[0],
                                                                        args.batch),
    }
    print(f"machine: {machine(str(base.device))}; load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for what, fn in passes.items():
        fn()                                                    # warm-up
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], with_flops=True) as prof:
            _, (wall, cpu) = timed(fn)
        ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in ops)
        mm = [e for e in ops if e.key in ("aten::mm", "aten::bmm", "aten::addmm")]
        mm_s, mm_flop = sum(e.self_cpu_time_total for e in mm) / 1e6, sum(e.flops for e in mm)
        print(f"\n{what}: {wall:.1f} s wall, {cpu:.1f} CPU s (profiled); matmuls {mm_s / (total / 1e6):.0%} of operator "
              f"time at {mm_flop / mm_s / 1e9:.0f} GFLOP/s, {mm_flop / 1e12:.2f} TFLOP")
        print(f"  {'operator':48} {'self s':>7} {'share':>6} {'calls':>6}")
        for e in ops[:12]:
            print(f"  {e.key:48} {e.self_cpu_time_total / 1e6:7.2f} {e.self_cpu_time_total / total:6.1%} {e.count:6d}")


def _certified(probs, rows) -> set[int]:
    return {i for i in rows if certified(probs[i].p)}


def _max_dp(a, b, rows) -> float:
    return max(float((a[i].p - b[i].p).abs().max()) for i in rows)


def compare(keep, hf) -> list[str]:
    """The checks: p_t and certified sets of the certificate's pass against the pass before it; greedy tokens."""
    before, now = keep["certify, before"], keep["certify"]
    rows = sorted(before)
    same = sum(torch.equal(before[i].p, now[i].p) and torch.equal(before[i].correct, now[i].correct) for i in rows)
    near = sum(abs(float(now[i].p.min()) - 0.5) < 0.05 for i in rows)
    lines = [
        f"p_t, certificate's pass vs the pass before it: max |Δp_t| {_max_dp(before, now, rows):.2e} over "
        f"{sum(len(before[i].p) for i in rows)} answer tokens; {same} of {len(rows)} records bit-identical "
        f"(p_t and argmax)",
        f"certified: before {len(_certified(before, rows))}, now {len(_certified(now, rows))}, same set: "
        f"{'yes' if _certified(before, rows) == _certified(now, rows) else 'NO'} "
        f"({near} records with min p_t within 0.05 of 0.5)",
    ]
    verified = keep["verify (certify + recall)"].summary()
    lines.append(f"verify (certify + recall): certified {verified['certified']}, EM {verified['em']}, "
                 f"certificate violations {verified['certificate_violations']}")
    loop, old = keep["greedy"], keep["greedy, before"]
    lines.append(f"greedy tokens on {len(loop)} records, now vs before: {sum(a != b for a, b in zip(loop, old))} "
                 f"differ; "
                 f"now vs HF generate: {sum(a != b for a, b in zip(loop, hf))} differ")
    return lines


def float32_check(args, enc, adapter, before, now) -> list[str]:
    """The plain full-model pass of a float32 copy of the base against both bf16 passes, first `--f32-n` records."""
    f32 = load_base(args.model, dtype="float32", device=resolve_device(args.device))
    rows = list(range(min(args.f32_n, len(enc))))
    adapter.attach(f32)
    try:
        ref = answer_probs(TeacherForcer(f32, enc, plain=True), rows, chunk=args.batch)
    finally:
        adapter.detach()
    cert = _certified(ref, rows)
    flips = {name: len(cert ^ _certified(p, rows)) for name, p in (("before", before), ("now", now))}
    return [f"float32 plain pass, first {len(rows)} records: certified {len(cert)}; records whose verdict differs "
            f"from it: before {flips['before']}, now {flips['now']}; max |Δp_t| against it: before "
            f"{_max_dp(ref, before, rows):.2e}, now {_max_dp(ref, now, rows):.2e}"]


if __name__ == "__main__":
    main()
