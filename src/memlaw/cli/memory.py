"""CLI commands for one memory: write, recall, verify, demo."""

from __future__ import annotations

import json
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from memlaw.cli._common import (DeviceOpt, JsonOpt, OnlineOpt, VerboseOpt, app, err, flag, go_online, nullcontext,
                                out, print_table, run, setup_logging)
from memlaw.cli.living import (LEAKAGE_HELP, LOCALITY_HELP, RANDOM_KEYS_HELP, SHOW_LEAKS_HELP, WATCH_HELP, leakage_exit,
                               leakage_json, locality_text, print_leakage)
from memlaw.cli.progress import step_lines, verify_lines
from memlaw.config import (DEFAULT_LR, DEFAULT_MAX_STEPS, AdapterConfig, ObjectiveConfig, PromptConfig, TrainConfig,
                           choices)
from memlaw.certificate import AUTO_MARGIN, BF16_SHIFT, parse_margin
from memlaw.errors import AdapterError
from memlaw.records import redact as redact_value


def _config_enum(name: str, cls: type, field: str) -> type[Enum]:
    """A CLI choice of a config `Literal` field's values (`config.choices`: the one list of them)."""
    return Enum(name, {v.replace("-", "_"): v for v in choices(cls, field)}, type=str)


Kind = _config_enum("Kind", AdapterConfig, "kind")
Objective = _config_enum("Objective", ObjectiveConfig, "name")
Until = _config_enum("Until", TrainConfig, "until")


def progress_bar(enabled: bool):
    """A rich bar whose description shows loss, stubborn tokens and certified records."""
    if not enabled:
        return None, None
    bar = Progress(TextColumn("[bold]write"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TextColumn("{task.description}"), TimeElapsedColumn(), console=err, transient=True)
    state = {"task": None, "desc": ""}

    def on_step(info) -> None:
        if state["task"] is None:
            state["task"] = bar.add_task("", total=info.total)
        if info.certified is not None:
            state["desc"] = f"stubborn {info.stubborn}  certified {info.certified}/{info.n_records}"
        bar.update(state["task"], completed=info.step, description=f"loss {info.loss:.4f}  {state['desc']}")

    return bar, on_step


def summary_table(name: str, s: dict) -> Table:
    """One memory: certified, EM, teacher-forced and free-run accuracy, stubborn count, losses."""
    t = Table(title=f"memory {name}  ({s['n_records']} records, ℓ = {s['length']} value tokens)")
    for col in ("certified", "EM", "tf acc", "free acc", "stubborn", "L_base", "L_final", "ΔL"):
        t.add_column(col, justify="right", no_wrap=True)
    f = lambda x, p=3: "-" if x is None else f"{x:.{p}f}"  # noqa: E731
    em = f"{s['em']}/{s['n_records']}" if "em" in s else "-"
    t.add_row(f"{s['certified']}/{s['n_records']}", em, f(s["tf_acc"]), f(s.get("free_acc")), str(s["stubborn"]),
              f(s["L_base"]), f(s["L_final"]), f(s["delta_loss"]))
    return t


def record_table(v, redact: bool) -> Table:
    t = Table(title="per record")
    for col in ("key", "certified", "EM", "min p_t", "stubborn", "earliest stubborn", "first failure", "output"):
        t.add_column(col)
    for r in v.records:
        shown = "" if r.output is None else (redact_value(r.output) if redact else r.output)
        t.add_row(r.key, "yes" if r.certified else "no", "-" if r.em is None else ("yes" if r.em else "no"),
                  f"{r.min_p:.3f}", str(r.stubborn), str(r.earliest_stubborn if r.earliest_stubborn is not None else "-"),
                  str(r.first_failure if r.first_failure is not None else "-"), shown)
    return t


LR_DEFAULT = ", ".join(f"{kind} {lr:g}" for kind, lr in DEFAULT_LR.items())   # the adapter kind's
_TRAIN = TrainConfig(until="certified")      # write_memory's default: the CLI's defaults are its (a test checks)
MARGIN_HELP = (f"Certified means p_t > 0.5 + MARGIN for every answer token. auto: "
               f"{AUTO_MARGIN['bfloat16']:g} when the base model runs in bfloat16, {AUTO_MARGIN['float32']:g} in "
               f"float32: in bf16, p_t moved by up to {BF16_SHIFT} between batch shapes on the demo "
               f"(docs/performance.md, bench/batch_shift.py), so a certificate at margin 0 may not hold for "
               f"greedy decoding, which batches differently. Or a number in [0, 0.5).")


@app.command()
def write(
    records: Annotated[Path, typer.Argument(help="Records: JSONL ({key, value} or {query, target}) or CSV.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Adapter directory to write (atomically).")],
    model: Annotated[str, typer.Option(help="smollm2-135m, gemma3-270m, tiny, a hub id or a local directory.")] = "smollm2-135m",
    adapter: Annotated[Kind, typer.Option(help="probe: the paper's single-layer map; lora: PEFT LoRA.")] = Kind.probe,
    rank: Annotated[int, typer.Option(help="Adapter rank r.")] = AdapterConfig().rank,
    layer: Annotated[Optional[int], typer.Option(help="Probe layer.", show_default="the paper's relative depth")] = None,
    objective: Annotated[Objective, typer.Option(help="Training objective (docs/memft.md).")] = Objective.sft,
    until: Annotated[Until, typer.Option(help="Stop when every record certifies, or after the budget.")] = Until.certified,
    max_steps: Annotated[Optional[int], typer.Option(
        help="Optimizer-step budget (the cap with --until certified).",
        show_default=f"{DEFAULT_MAX_STEPS}, unless --epochs")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epoch budget, used when --max-steps is not given.",
                                                  show_default="none")] = None,
    lr: Annotated[Optional[float], typer.Option(help="AdamW learning rate (linear decay to 0).",
                                                show_default=LR_DEFAULT)] = _TRAIN.lr,
    batch_size: Annotated[int, typer.Option(help="Records per optimizer step.")] = _TRAIN.batch_size,
    seed: Annotated[int, typer.Option(help="Seed (adapter init, order, dropout).")] = _TRAIN.seed,
    margin: Annotated[str, typer.Option(metavar="auto|M", help=MARGIN_HELP)] = "auto",
    dtype: Annotated[str, typer.Option(help="auto (bf16 where the device has fast bf16), bfloat16 or float32.")] = "auto",
    device: DeviceOpt = "auto",
    template: Annotated[Optional[str], typer.Option(help="Prompt template: chat or plain.",
                                                    show_default="chat where the tokenizer has one")] = None,
    no_records: Annotated[bool, flag("--no-records", help=(
        "Do not save records.jsonl with the adapter (memlaw.json keeps the keys' sha256, so recall still "
        "tells keys it holds from others)."))] = False,
    force: Annotated[bool, flag("--force", help=(
        "Replace a memory already at --out, with any files in it that memlaw did not write. Without it "
        "such an --out is refused: `memlaw update` changes a memory in place."))] = False,
    online: OnlineOpt = False,
    as_json: JsonOpt = False,
    redact: Annotated[bool, typer.Option(help="Hide values in everything printed (write never prints them: "
                                               "its table has none and --json shows their sizes only).")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Write RECORDS into a new adapter, verify them, and save the adapter directory.

    Exit code 0 when every record is certified and greedy decoding recalls every value exactly, 1 when
    the write ran but some record is not certified or a certificate is not confirmed by greedy
    decoding (the adapter is saved either way), 2 for bad input. Bad records, an unknown --model or an --out that
    is not an adapter directory are refused before any training, and nothing is written. Before
    training it prints what the write will cost (trainable parameters, size on disk, an estimated
    time from steps timed just now) and refuses an adapter that cannot work (a rank above the hidden
    size, training state above the device's memory). OUT is replaced atomically: killed at any
    moment, it holds the previous adapter or the new one, never a mix; rerun the command to finish
    an interrupted write.
    """
    setup_logging(verbose)
    go_online(online)

    def go():
        from memlaw.adapters import check_out_dir
        from memlaw.model_names import check_model_name
        from memlaw.records import load_records

        # bad input is refused here, in a fraction of a second, before torch and the model load
        adapter_cfg = AdapterConfig(kind=adapter.value, rank=rank, layer=layer)
        train_cfg = TrainConfig(lr=lr, batch_size=batch_size, max_steps=max_steps, epochs=epochs,
                                until=until.value, seed=seed)
        certify_margin = parse_margin(margin, "--margin")
        prompt = PromptConfig(template=template)
        recs = load_records(records)
        check_out_dir(out_dir, force=force)
        check_model_name(model)
        from memlaw.cost import estimate
        from memlaw.encode import encode
        from memlaw.memory import write_memory
        from memlaw.models import load_base

        base = load_base(model, dtype=dtype, device=device)
        objective_cfg = ObjectiveConfig(name=objective.value)
        enc = encode(recs, base.tokenizer, prompt, max_length=base.context_length)
        cost = estimate(base, enc, adapter_cfg, objective_cfg, train_cfg)   # refuses what cannot work
        err.print(cost.line(), soft_wrap=True)
        bar, on_step = progress_bar(not as_json and sys.stderr.isatty())
        on_step = on_step or step_lines("write", until.value)
        with bar if bar is not None else nullcontext():
            result = write_memory(recs, model=base, out=out_dir, adapter=adapter_cfg, objective=objective_cfg,
                                  train=train_cfg, prompt=prompt, margin=certify_margin,
                                  save_records=not no_records, on_step=on_step, force=force)
        _report(result, str(out_dir), as_json, redact, extra={"cost": cost.to_dict()})
        result.raise_unless_certified()      # NotCertifiedError (not certified, or not confirmed): exit 1

    run(go)


def _report(result, name: str, as_json: bool, redact: bool, extra: dict | None = None) -> None:
    s = result.verification.summary()
    payload = {"out": name, "confirmed": result.certified, "margin": result.margin,
               "steps": result.train.steps, "write_s": round(result.train.wall_s, 3),
               "steps_per_s": round(result.train.steps_per_s, 3), "time_to_certified": result.train.time_to_certified,
               "wall_s": round(result.wall_s, 3), **s, **(extra or {})}
    if as_json:
        out.print_json(json.dumps({**payload, "records": result.verification.to_dict(redact=True)["records"]}))
        return
    out.print(summary_table(name, s))
    from memlaw.bits import per_param_text

    bound = " (upper bound: no known generator)" if s.get("bits_kind") == "upper" else ""
    out.print(f"steps {result.train.steps}  write {result.train.wall_s:.1f} s ({result.train.steps_per_s:.2f} steps/s)  "
              f"time to certified {_secs(result.train.time_to_certified)}  total {result.wall_s:.1f} s  "
              f"params {s['n_params']:,}  bits/param {per_param_text(s)}{bound}  {margin_text(result.margin)}")


def margin_text(note: dict) -> str:
    """'margin 0.07 (auto, bfloat16)': the certificate's margin and how it was chosen."""
    return f"margin {note['value']:g} ({note['chosen']}, {note['dtype']})" if note else ""


def _secs(x) -> str:
    return "-" if x is None else f"{x:.1f} s"


@app.command()
def verify(
    directory: Annotated[Path, typer.Argument(help="Adapter directory.")],
    records: Annotated[Optional[Path], typer.Argument(help="Records to check.", show_default="the ones saved with the adapter")] = None,
    no_recall: Annotated[bool, flag("--no-recall", help="Certificate only; skip greedy decoding.")] = False,
    margin: Annotated[str, typer.Option(metavar="auto|M", help=MARGIN_HELP + " auto is also at least the margin the memory "
                                               "was written (or last updated) with.")] = "auto",
    device: DeviceOpt = "auto",
    per_record: Annotated[bool, flag("--per-record", help=(
        "Also print a row per record with its greedy output, which is the value itself when recalled: "
        "values are shown (table and --json) only with this option, and not with --redact."))] = False,
    as_json: JsonOpt = False,
    redact: Annotated[bool, typer.Option(help="Show greedy outputs (values) as their sizes only, even with "
                                              "--per-record.")] = False,
    leakage: Annotated[bool, flag("--leakage", help=LEAKAGE_HELP)] = False,
    watch: Annotated[Optional[Path], typer.Option(help=WATCH_HELP, show_default="none")] = None,
    random_keys: Annotated[int, typer.Option(min=0, help=RANDOM_KEYS_HELP)] = 32,
    show_leaks: Annotated[bool, flag("--show-leaks", help=SHOW_LEAKS_HELP)] = False,
    locality: Annotated[bool, flag("--locality", help=LOCALITY_HELP)] = False,
) -> None:
    """Certify the records in one forward pass and confirm with greedy decoding: a table, or JSON.

    Exit code 0 when every record is recalled exactly (with --no-recall: certified), 1 when some
    record is not (or, with --leakage, when a stored value leaks), 2 for bad input. First checks the
    directory's integrity: tensors and records.jsonl against the sha256s in memlaw.json, and
    memlaw.json against its own; any mismatch is an error (exit 2). With --leakage, also decodes
    prompts that are not keys and counts stored values in the outputs. With --locality, also measures
    what the adapter costs the base model on neutral prompts (a measurement: no effect on the exit code).
    """
    setup_logging()

    def go():
        from memlaw.adapters import check_integrity, read_meta
        from memlaw.records import load_records, records_sha256

        certify_margin = parse_margin(margin, "--margin")
        meta = read_meta(directory)
        problems = check_integrity(directory, meta)
        if problems:
            raise AdapterError(f"{directory}: {'; '.join(problems)}")
        recs = load_records(records) if records is not None else None
        watched = load_records(watch) if watch is not None else []
        from memlaw.memory import Memory

        t0 = time.perf_counter()
        with Memory.open(directory, device=device) as mem:
            v = mem.verify(recs, recall=not no_recall, margin=certify_margin, on_progress=verify_lines())
            leaks = mem.leakage(watched=watched, random_keys=random_keys, records=recs) if leakage else None
            local = mem.locality() if locality else None
        wall = time.perf_counter() - t0
        same = recs is None or records_sha256(recs) == meta.get("records_sha256")
        hide = redact or not per_record
        if as_json:
            out.print_json(json.dumps({"adapter": str(directory), "wall_s": round(wall, 3), "integrity": "ok",
                                       "records_match": same, "exact": v.all_exact,
                                       "all_certified": v.all_certified, "margin": v.margin, "dtype": v.dtype, **v.to_dict(redact=hide),
                                       **leakage_json(leaks, show_leaks and not redact),
                                       **({} if local is None else {"locality": local.summary()})}))
        else:
            out.print(summary_table(str(directory), v.summary()))
            if per_record:
                print_table(record_table(v, hide))
            if not same:
                out.print(f"note: {records} are not the records this adapter was written with (records_sha256 differs)",
                          markup=False)
            print_leakage(leaks, show_leaks and not redact)
            if local is not None:
                out.print(locality_text(local), markup=False, soft_wrap=True)
            out.print(f"integrity ok  ({wall:.1f} s)")
        v.raise_unless_exact()                # NotCertifiedError: one line on stderr, exit 1
        leakage_exit(leaks)

    run(go)


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Where to save the adapter.")] = Path("memlaw-demo"),
    n: Annotated[int, typer.Option(help="PhoneBook entries to write.")] = 32,
    rank: Annotated[int, typer.Option(help="Probe rank.")] = AdapterConfig().rank,
    model: Annotated[str, typer.Option(help="Base model.")] = "smollm2-135m",
    device: DeviceOpt = "auto",
    online: OnlineOpt = False,
    as_json: JsonOpt = False,
    redact: Annotated[bool, typer.Option(help="Hide values in the output.")] = False,
    force: Annotated[bool, flag("--force", help="Also replace files in --out that memlaw did not write (an "
                                "earlier demo's memory there is replaced anyway).")] = False,
) -> None:
    """Write a PhoneBook into the embedded SmolLM2 until every entry certifies, then verify by greedy decoding.

    Exit code 0 when every entry is certified and recalled exactly by greedy decoding, 1 when not.
    """
    setup_logging()
    go_online(online)

    def go():
        from memlaw.benchmarks import phonebook
        from memlaw.model_names import check_model_name

        check_model_name(model)
        from memlaw.adapters import check_out_dir
        from memlaw.memory import write_memory

        check_out_dir(out_dir, replace=True, force=force)   # an earlier demo's memory is the demo's to replace
        t0 = time.perf_counter()
        recs = phonebook(n)
        bar, on_step = progress_bar(not as_json and sys.stderr.isatty())
        on_step = on_step or step_lines("demo", DEMO_TRAIN.until)
        with bar if bar is not None else nullcontext():
            result = write_memory(recs, model=model, out=out_dir, adapter=AdapterConfig(kind="probe", rank=rank),
                                  train=DEMO_TRAIN, device=device, on_step=on_step, force=True)
        wall = time.perf_counter() - t0
        _report(result, str(out_dir), as_json, redact, extra={"demo_wall_s": round(wall, 3)})
        if not as_json:
            s = result.verification.summary()
            out.print(f"demo: {s['em']}/{s['n_records']} recalled exactly by greedy decoding, "
                      f"{s['certified']}/{s['n_records']} certified, wall time {wall:.1f} s; adapter in {out_dir}",
                      markup=False)
        result.raise_unless_certified()

    run(go)


DEMO_TRAIN = TrainConfig(until="certified", max_steps=600, batch_size=16, lr=1e-2, check_every=10)
