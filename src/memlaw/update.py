"""Update a living memory (DESIGN §7b): add, change and delete records of an existing adapter.

`update_memory` checks the change set against the memory's records (`memlaw.changes.diff`), then
warm-starts from the saved adapter and trains until every record of the updated memory certifies,
with the same options as `write` (by default those the memory was written with; the margin "auto":
0.07 in bfloat16, 0 in float32, or the memory's own if larger, `memlaw.certificate`). A deleted key is
trained to answer nothing: its answer is the terminator alone, certified like every record, so greedy
decoding cannot return the old value from that key. After training, greedy decoding of every changed
and deleted key checks that none returns its old value.

Only an update whose records all certify, are recalled exactly by greedy decoding (a certificate it
contradicts is not confirmed) and whose old values are all gone is saved: in place by
default, atomically (a kill at any moment leaves the previous adapter or the new one), with
`records.jsonl` and memlaw.json's `records_sha256` updated and an entry added to memlaw.json's
`history` (counts, steps, time; never a value). Otherwise nothing is written.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from memlaw.adapters import check_integrity, check_out_dir, load_adapter, load_saved_records, read_meta, save_adapter
from memlaw.certificate import Margin, margin_note, not_confirmed_advice, resolve_margin
from memlaw.changes import Delete, Diff, deletes_of, diff, load_deletes
from memlaw.config import AdapterConfig, ObjectiveConfig, PromptConfig, TrainConfig, from_dict, to_dict
from memlaw.errors import AdapterError, ConfigError
from memlaw.records import Record, check_records, load_records, records_sha256

logger = logging.getLogger(__name__)


@dataclass
class UpdateOutcome:
    """What an update did. `saved` is False when it did not certify or an old value still came back."""

    out: Path | None                  # where the updated adapter was saved (None: nothing written)
    counts: dict[str, int]            # added, changed, deleted, n_records_before, n_records
    train: object                     # TrainResult of the warm-started training
    verification: object              # Verification of the updated memory's records (deleted keys' rows left out)
    old_recalled: list[str]           # keys whose old value greedy decoding still returns (should be none)
    deleted_certified: int            # deleted keys certified to answer nothing
    capacity: str                     # what the capacity law said before training
    wall_s: float
    history: dict = field(default_factory=dict)   # the entry added to memlaw.json's history
    leakage: object = None            # Leakage of the updated memory, when asked
    not_confirmed: int = 0            # records and deleted keys certified that greedy decoding got wrong
    margin: dict = field(default_factory=dict)    # the certificate's margin: value, how chosen, dtype

    @property
    def saved(self) -> bool:
        return self.out is not None

    @property
    def certified(self) -> bool:
        """Every record and every deleted key certified (greedy decoding aside: see `confirmed`)."""
        s = self.verification.summary()
        return s["certified"] == s["n_records"] and self.deleted_certified == self.counts["deleted"]

    @property
    def confirmed(self) -> bool:
        """`certified`, and greedy decoding returned every value (and nothing for every deleted key)."""
        return self.certified and self.not_confirmed == 0

    def not_confirmed_text(self) -> str | None:
        """How many certificates greedy decoding contradicted, at which margin and dtype, and what to do;
        None when it contradicted none. Names no value."""
        if not self.not_confirmed:
            return None
        n, value, dtype = self.counts["n_records"] + self.counts["deleted"], self.margin["value"], self.margin["dtype"]
        which = "records and deleted keys" if self.counts["deleted"] else "records"
        return (f"{self.not_confirmed} of {n} {which} certified but not recalled exactly by greedy "
                f"decoding (certificate not confirmed at margin {value:g} in {dtype}): "
                f"{not_confirmed_advice(value, dtype)}")


def written_settings(meta: dict) -> tuple[AdapterConfig, ObjectiveConfig, TrainConfig]:
    """The adapter, objective and train configs a memory was written with (defaults where not recorded)."""
    t = meta.get("training") if isinstance(meta.get("training"), dict) else {}
    try:
        adapter = from_dict(AdapterConfig, t.get("adapter") or {"kind": meta["kind"], "rank": meta["rank"]},
                            "memlaw.json training.adapter")
        objective = from_dict(ObjectiveConfig, t.get("objective"), "memlaw.json training.objective")
        train = from_dict(TrainConfig, t.get("train") or {"until": "certified"}, "memlaw.json training.train")
    except ConfigError as e:
        raise AdapterError(f"cannot read the settings the memory was written with: {e}") from None
    return adapter, objective, train


def written_margin(meta: dict) -> float:
    """The margin the memory was last certified with: its latest update's, else its write's, else 0."""
    for entry in reversed(meta.get("history") or []):
        margin = entry.get("train", {}).get("margin") if isinstance(entry, dict) else None
        if isinstance(margin, (int, float)):
            return float(margin)
    t = meta.get("training") if isinstance(meta.get("training"), dict) else {}
    margin = (t.get("train") or {}).get("margin", 0.0)
    return float(margin) if isinstance(margin, (int, float)) else 0.0


RETIRE_MARGIN = 0.2
"""An update's `TrainConfig.retire_margin` unless the memory was written with one or it is given: records
certified with this margin (every p_t > 0.7, most of a warm start's records) leave the training batches
until a check finds them below it, so the steps go to the added, changed and deleted records."""

UPDATE_LR_FACTOR = 0.25
"""An update's learning rate as a fraction of the one the memory was written with, unless `lr` is given. A warm
start sits near the write's minimum, which the write's own lr overshoots: on 32 SmolLM2 PhoneBook entries
(results/update-lr, one seed) the probe's update took 277 steps at the write's 4e-2 and 61 at 1e-2, LoRA's
70 steps at the write's 2e-3 and 18 at 5e-4."""


def update_settings(meta: dict, objective: ObjectiveConfig | None = None, **train: object
                    ) -> tuple[ObjectiveConfig, TrainConfig]:
    """The objective and train configs of an update: those the memory was written with, `until="certified"`,
    `UPDATE_LR_FACTOR` times the write's lr (its kind's default, `TrainConfig.for_kind`, where it set none),
    `retire_margin` `RETIRE_MARGIN` where the write had none, the margin of its latest update (if any), and
    the given `train` fields (None: as written) on top.

    Raises:
        ConfigError: an unknown or invalid train field.
    """
    adapter, written_objective, written_train = written_settings(meta)
    given = {k: v for k, v in train.items() if v is not None}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown := sorted(set(given) - names):
        raise ConfigError(f"unknown train setting {unknown[0]!r}; valid: {', '.join(sorted(names))}")
    if given.get("max_steps") is not None and "epochs" not in given:
        given["epochs"] = None
    if given.get("epochs") is not None and "max_steps" not in given:
        given["max_steps"] = None
    retire = RETIRE_MARGIN if written_train.retire_margin is None else written_train.retire_margin
    lr = written_train.for_kind(adapter.kind).lr * UPDATE_LR_FACTOR
    update = {"until": "certified", "lr": lr, "retire_margin": retire, "margin": written_margin(meta)}
    return objective or written_objective, dataclasses.replace(written_train, **{**update, **given})


def current_records(directory: Path, meta: dict, records: str | os.PathLike | Sequence[Record] | None) -> list[Record]:
    """The memory's records: the saved ones, or `records` (for a memory written with --no-records), which
    must hash to memlaw.json's records_sha256.

    Raises:
        AdapterError: no saved records and none given, or records that are not the memory's.
    """
    if records is None:
        return load_saved_records(directory)
    recs = load_records(records) if isinstance(records, (str, os.PathLike)) else list(records)
    check_records(recs)
    if records_sha256(recs) != meta.get("records_sha256"):
        name = os.fspath(records) if isinstance(records, (str, os.PathLike)) else "the records given"
        raise AdapterError(f"{name}: not the records {directory} holds (records_sha256 differs); an update starts "
                           f"from the memory's exact records")
    return recs


def check_target(directory: Path, out: str | os.PathLike | None) -> Path:
    """Where the update goes: `directory` itself (in place; refused if it holds files memlaw did not
    write, which replacing it would delete), or a new `out` (refused if it holds a memory or anything else)."""
    if out is None or Path(out).absolute() == directory.absolute():
        return check_out_dir(directory, replace=True)
    return check_out_dir(out)


def update_memory(directory: str | os.PathLike, changes: str | os.PathLike | Sequence[Record] | None = None, *,
                  delete: Sequence[str] = (), delete_file: str | os.PathLike | None = None,
                  out: str | os.PathLike | None = None, base=None, device: str = "auto",
                  records: str | os.PathLike | Sequence[Record] | None = None,
                  objective: ObjectiveConfig | None = None, train: TrainConfig | None = None,
                  margin: Margin = "auto", store: str | os.PathLike | None = None, leakage: bool = False,
                  random_keys: int = 32, on_step=None, on_capacity: Callable[[str], None] | None = None
                  ) -> UpdateOutcome:
    """Add, change and delete records of the memory in `directory`; save only if all certify (module doc).

    Args:
        changes: records to add (new keys) or change (existing keys); a records file or Records.
        delete, delete_file: keys to delete, given directly or as a file (`memlaw.changes.load_deletes`).
        out: save the updated memory there instead of in place (a new directory).
        base: a loaded base model (default: load the one the memory was written on, on `device`).
        records: the memory's records, for a memory saved without them (--no-records).
        objective, train: training settings (default: those the memory was written with).
        margin: certified means every p_t > 0.5 + margin. "auto": 0.07 when the base runs in bfloat16,
            0 in float32, or `train.margin` (default: the memory's own) if larger; a number replaces it.
        store: a sweep store; its capacity law says before training whether the rank holds the update.
        leakage: also run the leakage check (`memlaw.leakage`) on the updated memory, watching the old
            values of changed and deleted keys; its counts are in `outcome.leakage` (they do not stop the save).
        random_keys: random keys of the leakage check.
        on_step: progress callback of the training loop.
        on_capacity: called with the capacity line before training.

    Raises:
        RecordError: a malformed or refused change set (`memlaw.changes`), or a value the tokenizer cannot
            round-trip. AdapterError: a damaged adapter, records or base model that are not the memory's.
        Nothing is written when any is raised.
    """
    t0 = time.perf_counter()
    directory = Path(directory)
    meta = read_meta(directory)
    if problems := check_integrity(directory, meta):
        raise AdapterError(f"{directory}: {'; '.join(problems)}")
    current = current_records(directory, meta, records)
    new = [] if changes is None else (load_records(changes) if isinstance(changes, (str, os.PathLike)) else list(changes))
    if new:
        check_records(new)
    deletes: list[Delete] = deletes_of(delete) + (load_deletes(delete_file) if delete_file is not None else [])
    d = diff(current, new, deletes)
    target = check_target(directory, out)
    written_adapter = written_settings(meta)[0]
    if train is None or objective is None:
        written_objective, written_train = update_settings(meta)
        objective, train = objective or written_objective, train or written_train

    from memlaw.encode import encode
    from memlaw.engine import Written, write_and_verify
    from memlaw.models import load_base
    from memlaw.verify import base_answer_losses

    if base is None:
        base = load_base(meta["base_model"]["name"], dtype=meta["dtype"], device=device)
    train = dataclasses.replace(train, margin=resolve_margin(margin, base.dtype, at_least=train.margin))
    prompt = PromptConfig(**meta["prompt"])
    tombstones = [Record(r.key, "", r.where) for r in d.deleted]     # deleted keys answer nothing
    enc = encode(d.final + tombstones, base.tokenizer, prompt, max_length=base.context_length)
    if enc.terminator != list(meta["terminator_ids"]):
        raise AdapterError(f"{directory}: the tokenizer renders terminator {enc.terminator}, the adapter was "
                           f"written with {meta['terminator_ids']}")
    adapter, _ = load_adapter(directory, base, dropout=written_adapter.dropout)   # fingerprint checked here
    losses = base_answer_losses(base, enc)
    note = capacity_note(store, meta, enc.length, len(d.final), _value_loss(losses[: len(d.final)], enc))
    if on_capacity is not None:
        on_capacity(note)

    n = len(d.final)
    outcome = UpdateOutcome(None, d.counts(), None, None, [], 0, note, 0.0,
                            margin=margin_note(margin, base.dtype, train.margin))

    def check_and_save(w: Written) -> None:
        """With the trained adapter still attached (a LoRA saves from its PEFT model): the old values, the
        leakage check if asked, and the save if every record certified, greedy decoding confirmed every
        certificate, and every old value is gone."""
        outcome.train, outcome.verification = w.train, _first(w.verification, n, len(enc.terminator))
        outcome.deleted_certified = sum(v.certified for v in w.verification.records[n:])
        outcome.not_confirmed = len(w.verification.not_confirmed)
        outcome.old_recalled = old_values_recalled(base, enc, d.gone)
        if leakage:
            from memlaw.leakage import check_leakage

            outcome.leakage = check_leakage(base, enc.prompt, enc.terminator, d.final, watched=d.gone,
                                            random_keys=random_keys)
        outcome.history = history_entry(d, outcome, meta, records_sha256(d.final), objective, train,
                                        time.perf_counter() - t0)
        if outcome.confirmed and not outcome.old_recalled:
            save_adapter(target, w.adapter, base, replace=target == directory, prompt=enc.prompt,
                         terminator=enc.terminator, records=d.final, save_records=meta.get("records_saved", True),
                         extra={"created": meta.get("created"), "training": meta.get("training"),
                                "history": [*meta.get("history", []), outcome.history],
                                "metrics": outcome.verification.summary()})
            outcome.out = target

    write_and_verify(base, enc, adapter, objective, train, base_losses=losses, on_step=on_step,
                     while_attached=check_and_save)
    outcome.wall_s = time.perf_counter() - t0
    return outcome


def old_values_recalled(base, enc, gone: Sequence[Record]) -> list[str]:
    """Keys of `gone` (changed or deleted records, with their old values) whose greedy answer on `base`
    (adapter attached) is still the old value; each decoded for as many tokens as its old answer."""
    if not gone:
        return []
    from memlaw.encode import prompt_ids
    from memlaw.verify import greedy

    tok, stop = base.tokenizer, enc.terminator[0]
    limits = [len(tok(r.value, add_special_tokens=False).input_ids) + len(enc.terminator) for r in gone]
    outs = greedy(base, [prompt_ids(r.key, tok, enc.prompt) for r in gone], limits, stop)
    texts = [tok.decode(o[: o.index(stop)] if stop in o else o, skip_special_tokens=False,
                        clean_up_tokenization_spaces=False) for o in outs]
    return [r.key for r, text in zip(gone, texts) if text == r.value]


def _first(v, n: int, n_terminator: int):
    """The verification of the first `n` records (the memory), without the deleted keys' rows after them."""
    if len(v.records) == n:
        return v
    return dataclasses.replace(v, records=v.records[:n], terminator_tokens=n * n_terminator,
                               bits=None if v.bits is None else v.bits.first(n))


def _value_loss(losses: list[tuple[float, float]], enc) -> float:
    """Token-weighted mean value-token loss (L_base) of the records the losses belong to."""
    lengths = [len(v) for v in enc.value_ids[: len(losses)]]
    return sum(loss * k for (loss, _), k in zip(losses, lengths)) / max(1, sum(lengths))


def capacity_note(store: str | os.PathLike | None, meta: dict, length: int, n_records: int, L_base: float) -> str:
    """One line: whether the capacity law fitted to `store`'s cells says the adapter's rank holds `length`."""
    rank = meta["rank"]
    if store is None:
        return (f"capacity: no law available to check rank {rank} against ℓ = {length} value tokens (give --store "
                f"with sweep results for this model and adapter kind)")
    from memlaw.errors import MemlawError
    from memlaw.fitting import law_rows
    from memlaw.plan import plan
    from memlaw.store import open_store

    try:
        with open_store(store, create=False) as db:
            cells = db.load_cells({"model": meta["base_model"]["name"], "kind": meta["kind"]})
        p = plan(length, law_rows(cells), n_records=n_records, L_base=L_base)
    except MemlawError as e:
        return f"capacity: no law available from {os.fspath(store)} ({e})"
    where = os.fspath(store)
    if p.rank is None:
        return f"capacity: the cells in {where} give no rank for ℓ = {length} value tokens"
    source = {"measured": "the measured cells in", "frontier": "the capacity frontier fitted to",
              "law": "the law fitted to"}.get(p.rank_source, f"the {p.rank_source} of")
    extra = f" ({'; '.join(p.extrapolating)}: an extrapolation)" if p.extrapolating else ""
    if p.rank > rank:
        return (f"capacity: warning: by {source} {where}, ℓ = {length} value tokens need rank {p.rank}, and this "
                f"adapter has rank {rank}: the update may not certify{extra}")
    return f"capacity: ℓ = {length} value tokens fit rank {rank} by {source} {where} (it needs rank {p.rank}){extra}"


def history_entry(d: Diff, outcome: UpdateOutcome, meta: dict, sha_after: str, objective: ObjectiveConfig,
                  train: TrainConfig, wall_s: float) -> dict:
    """memlaw.json's record of one update: counts, steps, time, certificate; never a key's value."""
    r = outcome.train
    return {"updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **d.counts(),
            "steps": r.steps, "train_s": round(r.wall_s, 3), "wall_s": round(wall_s, 3), "time_to_certified": r.time_to_certified,
            "certified": outcome.certified, "old_values_recalled": len(outcome.old_recalled),
            "records_sha256_before": meta.get("records_sha256"), "records_sha256": sha_after,
            "objective": to_dict(objective), "train": to_dict(train), "margin": outcome.margin}


__all__ = ["update_memory", "UpdateOutcome", "written_settings", "written_margin", "UPDATE_LR_FACTOR", "current_records",
           "capacity_note", "history_entry"]
