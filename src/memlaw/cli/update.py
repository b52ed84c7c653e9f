"""CLI: `memlaw update`, add, change and delete records of an existing memory (DESIGN §7b)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from memlaw.cli._common import (DeviceOpt, JsonOpt, VerboseOpt, app, err, flag, nullcontext, out, run,
                                setup_logging)
from memlaw.cli.living import RANDOM_KEYS_HELP, SHOW_LEAKS_HELP, leakage_exit, leakage_json, print_leakage
from memlaw.cli.memory import MARGIN_HELP, Objective, margin_text, progress_bar, summary_table
from memlaw.cli.progress import duration, step_lines
from memlaw.certificate import parse_margin

AS_WRITTEN = "as the memory was written"


@app.command()
def update(
    directory: Annotated[Path, typer.Argument(help="The memory (adapter directory) to update.")],
    changes: Annotated[Optional[Path], typer.Argument(help=(
        "Records (JSONL or CSV): new keys are added, existing keys take their new values."))] = None,
    delete: Annotated[Optional[list[str]], typer.Option("--delete", help="A key to delete (repeat for more).",
                                                        show_default="none")] = None,
    delete_file: Annotated[Optional[Path], typer.Option(help=(
        "Keys to delete: one per line, or JSON Lines of {\"key\": ...} (.jsonl)."), show_default="none")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help=(
        "Save the updated memory in this new directory."), show_default="DIRECTORY, in place, atomically")] = None,
    records: Annotated[Optional[Path], typer.Option(help="The memory's current records, for one written with "
                                                         "--no-records.", show_default="records.jsonl")] = None,
    objective: Annotated[Optional[Objective], typer.Option(help="Training objective.", show_default=AS_WRITTEN)] = None,
    lr: Annotated[Optional[float], typer.Option(help="AdamW learning rate.",
                                                 show_default="a quarter of the memory's")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Step budget (a cap: an update stops when every record "
                                                          "certifies).", show_default=AS_WRITTEN)] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epoch budget instead of --max-steps.",
                                                  show_default=AS_WRITTEN)] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Records per optimizer step.", show_default=AS_WRITTEN)] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed (order, dropout).", show_default=AS_WRITTEN)] = None,
    margin: Annotated[str, typer.Option(metavar="auto|M", help=MARGIN_HELP + " auto is also at least the margin the memory was "
                                               "written (or last updated) with.")] = "auto",
    device: DeviceOpt = "auto",
    store: Annotated[Optional[Path], typer.Option(help=(
        "A sweep store: its capacity law says, before training, whether the adapter's rank holds the update."),
        show_default="none: no law")] = None,
    leakage: Annotated[bool, flag("--leakage", help=(
        "After training, also run verify --leakage's check, watching the old values of changed and deleted "
        "keys (exit 1 if any value comes out; the update is saved all the same)."))] = False,
    random_keys: Annotated[int, typer.Option(min=0, help=RANDOM_KEYS_HELP)] = 32,
    show_leaks: Annotated[bool, flag("--show-leaks", help=SHOW_LEAKS_HELP)] = False,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Add, change and delete records of a memory: warm-start from its adapter, train until every record
    certifies, check that no changed or deleted key returns its old value, and save.

    Records the adapter already holds with margin (every p_t > 0.7) rest while the added, changed and
    deleted ones train; a check that finds one below that margin puts it back.

    Deleted keys are trained to answer nothing. The update is saved only when every record certifies,
    greedy decoding recalls every value exactly (a certificate it contradicts is not confirmed), and every
    old value is gone (exit 0); otherwise nothing is written (exit 1). Refused with exit 2 and nothing
    written: a delete of a key the memory does not hold, a change to a key's current value, malformed
    changes, records or a base model that are not the memory's. memlaw.json keeps a history of updates
    (counts, steps, time; never values).
    """
    setup_logging(verbose)

    def go():
        from memlaw.adapters import check_integrity, read_meta
        from memlaw.changes import deletes_of, diff, load_deletes
        from memlaw.errors import AdapterError
        from memlaw.records import load_records
        from memlaw.update import check_target, current_records, update_settings

        # everything that can be refused is refused here, before torch and the model load
        meta = read_meta(directory)
        if problems := check_integrity(directory, meta):
            raise AdapterError(f"{directory}: {'; '.join(problems)}")
        obj = None
        if objective is not None:
            from memlaw.config import ObjectiveConfig

            obj = ObjectiveConfig(name=objective.value)
        certify_margin = parse_margin(margin, "--margin")
        obj, train = update_settings(meta, obj, lr=lr, max_steps=max_steps, epochs=epochs, batch_size=batch_size,
                                     seed=seed)
        current = current_records(directory, meta, records)
        new = load_records(changes) if changes is not None else []
        deletes = deletes_of(delete or []) + (load_deletes(delete_file) if delete_file is not None else [])
        diff(current, new, deletes)
        check_target(directory, out_dir)
        from memlaw.update import update_memory

        bar, on_step = progress_bar(not as_json and sys.stderr.isatty())
        on_step = on_step or step_lines("update", "certified")
        with bar if bar is not None else nullcontext():
            result = update_memory(directory, new, delete=delete or [], delete_file=delete_file, out=out_dir,
                                   device=device, records=current, objective=obj, train=train,
                                   margin=certify_margin, store=store,
                                   leakage=leakage, random_keys=random_keys, on_step=on_step,
                                   on_capacity=lambda line: err.print(line, markup=False, soft_wrap=True))
        _report(result, directory, as_json, show_leaks)
        if not result.saved:
            err.print(f"memlaw: {_why_not_saved(result)}; nothing was written ({directory} is as it was)",
                      markup=False, soft_wrap=True)
            raise typer.Exit(1)
        leakage_exit(result.leakage)

    run(go)


def _why_not_saved(r) -> str:
    s = r.verification.summary()
    if not r.certified:
        return (f"the update did not certify every record within {r.train.steps} steps (records {s['certified']}/"
                f"{s['n_records']}, deleted keys answering nothing {r.deleted_certified}/{r.counts['deleted']}); "
                f"raise --max-steps or write a memory with a larger rank")
    if not r.confirmed:
        return r.not_confirmed_text()
    return f"{len(r.old_recalled)} changed or deleted keys still return their old value"


def _report(r, directory: Path, as_json: bool, show_leaks: bool) -> None:
    s = r.verification.summary()
    c = r.counts
    facts = {"adapter": str(directory), "out": None if r.out is None else str(r.out), "saved": r.saved, **c,
             "steps": r.train.steps, "train_s": round(r.train.wall_s, 3), "time_to_certified": r.train.time_to_certified,
             "wall_s": round(r.wall_s, 3), "certified": r.certified, "confirmed": r.confirmed,
             "not_confirmed": r.not_confirmed, "margin": r.margin, "old_values_recalled": len(r.old_recalled),
             "deleted_answering_nothing": r.deleted_certified, "capacity": r.capacity}
    if as_json:
        out.print_json(json.dumps({**facts, "summary": s, **leakage_json(r.leakage, False)}))
        return
    out.print(summary_table(str(r.out or directory), s))
    where = "not saved" if r.out is None else ("saved in place" if r.out == directory else f"saved to {r.out}")
    out.print(f"update: {c['added']} added, {c['changed']} changed, {c['deleted']} deleted ({c['n_records_before']} -> "
              f"{c['n_records']} records); {r.train.steps} steps, training {duration(r.train.wall_s)}, total "
              f"{duration(r.wall_s)}; old values recalled {len(r.old_recalled)}/{c['changed'] + c['deleted']}; "
              f"deleted keys answering nothing {r.deleted_certified}/{c['deleted']}; {margin_text(r.margin)}; {where}",
              markup=False,
              soft_wrap=True)
    print_leakage(r.leakage, show_leaks)


__all__ = ["update"]
