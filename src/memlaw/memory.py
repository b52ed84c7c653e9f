"""The Python API the CLI is a thin layer over: write a memory, open it, recall, verify.

    from memlaw import AdapterConfig, Memory, TrainConfig, write_memory

    out = write_memory("phonebook.jsonl", model="smollm2-135m", out="pb-adapter",
                       adapter=AdapterConfig(kind="probe", rank=16),
                       train=TrainConfig(until="certified", max_steps=500))
    out.raise_unless_certified()            # NotCertifiedError unless every record certified and recalled
    with Memory.open("pb-adapter") as mem:
        mem.recall(["Jerry Becerra:"])      # -> ["9100672710"]
        mem.recall_checked(["Jerry Becera:"])   # -> [Recalled(in_memory=False, certified=False, ...)]

Records may be a JSONL/CSV path or a list of `Record`s or of dicts (`{"key": ..., "value": ...}`).
The defaults are the `memlaw write` command's: a probe of rank 16, SFT, lr 1e-2, batches of 16,
until every record is certified or 2000 steps, at `margin="auto"` (0.07 when the base runs in
bfloat16, 0 in float32: `memlaw.certificate`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memlaw.adapters import check_out_dir, load_adapter, load_saved_records, read_meta, save_adapter
from memlaw.config import AdapterConfig, ObjectiveConfig, PromptConfig, TrainConfig, to_dict
from memlaw.encode import Encoded, encode, prompt_ids
from memlaw.certificate import Margin, certified, margin_note, resolve_margin
from memlaw.forward import TeacherForcer, answer_probs
from memlaw.errors import AdapterError
from memlaw.leakage import Leakage, check_leakage
from memlaw.locality import NEW_TOKENS, Locality, locality as measure_locality

from memlaw.models import BaseModel, load_base
from memlaw.engine import Written, write_and_verify
from memlaw.records import Record, as_records, load_records, records_sha256
from memlaw.train import StepCallback, TrainResult
from memlaw.update import UpdateOutcome, written_margin
from memlaw.verify import Verification, VerifyCallback, base_answer_losses, greedy, verify

logger = logging.getLogger(__name__)


@dataclass
class WriteOutcome:
    """What `write_memory` did. Not certifying is a result, not an exception: check `certified`, or
    call `raise_unless_certified()`. A record certified but not recalled exactly by greedy decoding
    does not count as certified (its certificate was not confirmed)."""

    out: Path | None
    train: TrainResult
    verification: Verification
    wall_s: float
    margin: dict = field(default_factory=dict)
    """The certificate's margin as memlaw.json states it: value, chosen ("auto" or "given"), dtype, why."""

    @property
    def certified(self) -> bool:
        """Every record certified by the final verification and, where greedy recall ran (the default),
        recalled exactly (`memlaw write` exits 0 exactly then)."""
        return self.verification.confirmed

    def raise_unless_certified(self) -> WriteOutcome:
        """Return self when `certified`; else raise `NotCertifiedError` (how many records did not certify,
        how many certificates greedy decoding did not confirm, and what to do)."""
        self.verification.raise_unless_certified()
        return self


@dataclass(frozen=True, slots=True)
class Recalled:
    """One key's greedy recall and how far to trust it."""

    key: str
    value: str = field(repr=False)   # greedy output cut at the terminator (a value: shown only when asked)
    in_memory: bool | None           # the adapter was written with this key (None: it keeps no record of its keys)
    certified: bool                  # in memory, the stored value (where kept) and p_t > 0.5 + margin everywhere
    min_p: float | None              # lowest teacher-forced p_t over the recalled answer tokens, terminator
                                     # included (None: decoding hit its limit before the terminator)


def _records(records: str | os.PathLike | Sequence[Record | Mapping[str, Any]]) -> list[Record]:
    if isinstance(records, (str, os.PathLike)):
        return load_records(records)
    return as_records(records)


def write_memory(records: str | os.PathLike | Sequence[Record | Mapping[str, Any]], *, model: str | BaseModel = "smollm2-135m",
                 out: str | os.PathLike | None = None, adapter: AdapterConfig = AdapterConfig(),
                 objective: ObjectiveConfig = ObjectiveConfig(), train: TrainConfig = TrainConfig(until="certified"),
                 prompt: PromptConfig = PromptConfig(), dtype: str = "auto", device: str = "auto",
                 margin: Margin = "auto", save_records: bool = True, recall: bool = True,
                 on_step: StepCallback | None = None, force: bool = False) -> WriteOutcome:
    """Write records into a fresh adapter, verify them, and (if `out`) save the adapter directory.

    `records`: a JSONL/CSV path, or `Record`s or dicts (`{"key": ..., "value": ...}`). The defaults
    are the `memlaw write` command's (`AdapterConfig()`: a probe of rank 16). The base model is only
    borrowed: the adapter is detached again before returning. Bad records
    or an `out` that may not be written are refused before any training; nothing is written then.
    An `out` that already holds a memory is refused unless `force` (`memlaw.update` changes one).

    `margin`: certified means every p_t > 0.5 + margin, for the stop rule and the verdict. "auto": 0.07
    when the base runs in bfloat16 (where p_t moves with the batch shape), 0 in float32, or
    `train.margin` if larger; a number replaces `train.margin`. memlaw.json states which it was.
    Success (`certified`) also needs greedy decoding (`recall`, on by default) to return every value.
    """
    t0 = time.perf_counter()
    recs = _records(records)
    train = train.for_kind(adapter.kind)             # the saved settings say which learning rate ran
    if out is not None:
        check_out_dir(out, force=force)
    base = model if isinstance(model, BaseModel) else load_base(model, dtype=dtype, device=device)
    train = dataclasses.replace(train, margin=resolve_margin(margin, base.dtype, at_least=train.margin))
    enc = encode(recs, base.tokenizer, prompt, max_length=base.context_length)

    def save(done: Written) -> None:
        save_adapter(out, done.adapter, base, prompt=enc.prompt, terminator=enc.terminator, records=recs, force=force,
                     save_records=save_records, extra={
                         "training": {"adapter": to_dict(adapter), "objective": to_dict(objective),
                                      "train": to_dict(train), "steps": done.train.steps,
                                      "margin": margin_note(margin, base.dtype, train.margin),
                                      "device": base.device.type,
                                      "wall_s": round(done.train.wall_s, 3),
                                      "time_to_certified": done.train.time_to_certified},
                         "metrics": done.verification.summary(),
                     })

    done = write_and_verify(base, enc, adapter, objective, train, recall=recall, on_step=on_step,
                            while_attached=save if out is not None else None)
    result, checked = done.train, done.verification
    return WriteOutcome(Path(out) if out is not None else None, result, checked, time.perf_counter() - t0,
                        margin_note(margin, base.dtype, train.margin))


class Memory:
    """An adapter directory opened on its base model: recall keys, verify records."""

    def __init__(self, directory: Path, base: BaseModel, adapter, meta: dict):
        self.directory, self.base, self.adapter, self.meta = directory, base, adapter, meta
        self.prompt = PromptConfig(**meta["prompt"])
        self.terminator: list[int] = list(meta["terminator_ids"])

    @classmethod
    def open(cls, directory: str | os.PathLike, *, base: BaseModel | None = None, device: str = "auto") -> "Memory":
        """Load the base model the adapter was written on (in the dtype it was certified in, on `device`:
        "auto" is cuda where torch sees a GPU) and attach it."""
        directory = Path(directory)
        meta = read_meta(directory)
        if base is None:
            base = load_base(meta["base_model"]["name"], dtype=meta["dtype"], device=device)
        elif str(base.dtype).removeprefix("torch.") != meta["dtype"]:
            logger.warning("adapter was certified in %s, base runs in %s: certificates may not carry over",
                           meta["dtype"], base.dtype)
        adapter, meta = load_adapter(directory, base)
        adapter.attach(base)
        adapter.eval()
        return cls(directory, base, adapter, meta)

    def close(self) -> None:
        self.adapter.detach()

    def __enter__(self) -> "Memory":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def records(self) -> list[Record]:
        return load_saved_records(self.directory)

    def recall(self, keys: Sequence[str], *, max_new_tokens: int | None = None) -> list[str]:
        """Greedy values for `keys` (cut at the terminator)."""
        return self._greedy(keys, max_new_tokens)[3]

    def _greedy(self, keys: Sequence[str], max_new_tokens: int | None):
        """(prompt ids, raw outputs, value ids cut at the terminator, decoded values) for `keys`."""
        if max_new_tokens is None:
            max_new_tokens = self._max_answer_tokens()
        tok, stop = self.base.tokenizer, self.terminator[0]
        prompts = [prompt_ids(k, tok, self.prompt) for k in keys]
        outs = greedy(self.base, prompts, max_new_tokens, stop)
        values = [o[: o.index(stop)] if stop in o else o for o in outs]
        texts = [tok.decode(v, skip_special_tokens=False, clean_up_tokenization_spaces=False) for v in values]
        return prompts, outs, values, texts

    def recall_checked(self, keys: Sequence[str], *, max_new_tokens: int | None = None) -> list[Recalled]:
        """Greedy values for `keys`, each with whether the adapter holds that key, whether the recalled
        answer is certified, and its lowest p_t (one teacher-forced pass over the recalled tokens).

        Membership is read from the saved records, else from the key hashes in memlaw.json; where
        the records are kept, a recalled value other than the stored one is never certified.
        """
        prompts, outs, values, texts = self._greedy(keys, max_new_tokens)
        finished = [i for i, o in enumerate(outs) if self.terminator[0] in o]
        enc = Encoded([Record(keys[i], texts[i]) for i in finished], self.prompt, self.terminator,
                      [prompts[i] for i in finished], [values[i] for i in finished], self.base.tokenizer)
        margin = resolve_margin("auto", self.base.dtype, at_least=written_margin(self.meta))
        min_p: dict[int, float] = {}
        sure: dict[int, bool] = {}
        if finished:
            self.adapter.eval()
            tf = TeacherForcer(self.base, enc, start_layer=self.adapter.first_layer)
            for j, probs in answer_probs(tf).items():
                min_p[finished[j]], sure[finished[j]] = float(probs.p.min()), certified(probs.p, margin)
        stored, hashes = self._stored_keys()
        out = []
        for i, key in enumerate(keys):
            if stored is not None:
                inside: bool | None = key in stored
            elif hashes is not None:
                inside = hashlib.sha256(key.encode("utf-8")).hexdigest() in hashes
            else:
                inside = None
            same = stored is None or stored.get(key) == texts[i]
            out.append(Recalled(key, texts[i], inside, bool(inside) and same and sure.get(i, False), min_p.get(i)))
        return out

    def _stored_keys(self) -> tuple[dict[str, str] | None, set[str] | None]:
        """(key -> value of the saved records, or None; the key hashes of memlaw.json, or None)."""
        try:
            stored = {r.key: r.value for r in self.records()}
        except AdapterError:
            stored = None
        hashes = self.meta.get("keys_sha256")
        return stored, set(hashes) if isinstance(hashes, list) else None

    def verify(self, records: Sequence[Record] | str | os.PathLike | None = None, *, recall: bool = True,
               margin: Margin = "auto", base_losses: bool = True,
               on_progress: VerifyCallback | None = None) -> Verification:
        """Certificate, EM and losses of `records` (default: the records saved with the adapter).

        `margin`: "auto" is 0.07 when the base runs in bfloat16, 0 in float32, or the margin the memory
        was written (or last updated) with if larger; `Verification.confirmed` is the verdict.
        """
        margin = resolve_margin(margin, self.base.dtype, at_least=written_margin(self.meta))
        recs = self.records() if records is None else _records(records)
        enc = encode(recs, self.base.tokenizer, self.prompt, max_length=self.base.context_length)
        if enc.terminator != self.terminator:
            raise AdapterError(f"{self.directory}: the tokenizer renders terminator {enc.terminator}, "
                               f"the adapter was written with {self.terminator}")
        losses = None
        if base_losses:
            with self.adapter.disabled():
                losses = base_answer_losses(self.base, enc, on_progress=on_progress)
        return verify(self.base, self.adapter, enc, recall=recall, margin=margin, base_losses=losses,
                      on_progress=on_progress)

    def leakage(self, *, watched: Sequence[Record] | str | os.PathLike = (), random_keys: int = 32, seed: int = 0,
                max_new_tokens: int | None = None, records: Sequence[Record] | None = None) -> Leakage:
        """Greedy outputs for prompts that are not keys, searched for stored values (DESIGN §2 Leakage).

        Args:
            watched: records whose values must not come back from anywhere (deleted records, or the
                old values of changed keys), their own keys included; records or a records file.
            random_keys: random keys shaped like the real ones (and as many recombined ones).
            records: the stored records (default: the ones saved with the adapter).

        Returns:
            Counts (`summary()`) and the hits; the hits hold values, so show them only when asked.
        """
        stored = self.records() if records is None else _records(records)
        watch = _records(watched) if isinstance(watched, (str, os.PathLike)) else list(watched)
        return check_leakage(self.base, self.prompt, self.terminator, stored, watched=watch,
                             random_keys=random_keys, seed=seed, max_new_tokens=max_new_tokens)

    def locality(self, *, prompts: Sequence[str] | None = None, new_tokens: int = NEW_TOKENS) -> Locality:
        """What this adapter costs its base model (DESIGN §2 Locality, `memlaw.locality`): greedy agreement and
        mean KL(base || adapted) on neutral prompts rendered in this memory's prompt spec.

        Args:
            prompts: prompt texts (default: the 48 shipped neutral prompts).
            new_tokens: greedy tokens of the base model's continuation per prompt.
        """
        return measure_locality(self.base, self.adapter, self.prompt, self.terminator, prompts=prompts,
                                new_tokens=new_tokens)

    def update(self, changes: str | os.PathLike | Sequence[Record] | None = None, *, delete: Sequence[str] = (),
               delete_file: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
               **options) -> UpdateOutcome:
        """Add, change and delete records (`memlaw.update.update_memory`, on this memory's base model).

        Saved in place unless `out` names a new directory; after an in-place update this object holds
        the updated adapter. `options`: records, objective, train, margin, store, leakage, random_keys, on_step,
        on_capacity.
        """
        from memlaw.update import update_memory

        self.adapter.detach()                  # the update trains its own copy; one adapter attached at a time
        outcome = None
        try:
            outcome = update_memory(self.directory, changes, delete=delete, delete_file=delete_file, out=out,
                                    base=self.base, **options)
        finally:
            if outcome is not None and outcome.out is not None and outcome.out.absolute() == self.directory.absolute():
                self.adapter, self.meta = load_adapter(self.directory, self.base)   # updated in place
            self.adapter.attach(self.base)
            self.adapter.eval()
        return outcome

    def records_match(self, records: Sequence[Record]) -> bool:
        return records_sha256(records) == self.meta.get("records_sha256")

    def _max_answer_tokens(self) -> int:
        try:
            recs = self.records()
        except AdapterError:
            return 64
        tok = self.base.tokenizer
        longest = max(len(tok(r.value, add_special_tokens=False).input_ids) for r in recs)
        return longest + len(self.terminator)


__all__ = ["write_memory", "Memory", "WriteOutcome", "Recalled"]
