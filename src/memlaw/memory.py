"""The Python API the CLI is a thin layer over: write a memory, open it, recall, verify.

    from memlaw import write_memory, Memory
    out = write_memory("phonebook.jsonl", model="smollm2-135m", out="pb-adapter",
                       adapter=AdapterConfig(kind="probe", rank=16),
                       train=TrainConfig(until="certified", max_steps=500))
    mem = Memory.open("pb-adapter")
    mem.recall(["Jerry Becerra:"])          # -> ["9100672710"]
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from memlaw.adapters import check_out_dir, load_adapter, load_saved_records, make_adapter, read_meta, save_adapter
from memlaw.config import AdapterConfig, ObjectiveConfig, PromptConfig, TrainConfig, to_dict
from memlaw.encode import encode, prompt_ids
from memlaw.errors import AdapterError
from memlaw.leakage import Leakage, check_leakage
from memlaw.models import BaseModel, load_base
from memlaw.records import Record, check_records, load_records, records_sha256
from memlaw.train import StepCallback, TrainResult, write
from memlaw.verify import Verification, VerifyCallback, base_answer_losses, greedy, verify

logger = logging.getLogger(__name__)


@dataclass
class WriteOutcome:
    out: Path | None
    train: TrainResult
    verification: Verification
    wall_s: float


def _records(records: str | os.PathLike | Sequence[Record]) -> list[Record]:
    if isinstance(records, (str, os.PathLike)):
        return load_records(records)
    records = list(records)
    check_records(records)
    return records


def write_memory(records: str | os.PathLike | Sequence[Record], *, model: str | BaseModel = "smollm2-135m",
                 out: str | os.PathLike | None = None, adapter: AdapterConfig = AdapterConfig(),
                 objective: ObjectiveConfig = ObjectiveConfig(), train: TrainConfig = TrainConfig(until="certified"),
                 prompt: PromptConfig = PromptConfig(), dtype: str = "auto", device: str = "auto",
                 save_records: bool = True, recall: bool = True, on_step: StepCallback | None = None) -> WriteOutcome:
    """Write records into a fresh adapter, verify them, and (if `out`) save the adapter directory.

    The base model is only borrowed: the adapter is detached again before returning. Bad records
    or an `out` that may not be written are refused before any training; nothing is written then.
    """
    t0 = time.perf_counter()
    recs = _records(records)
    if out is not None:
        check_out_dir(out)
    base = model if isinstance(model, BaseModel) else load_base(model, dtype=dtype, device=device)
    enc = encode(recs, base.tokenizer, prompt, max_length=base.context_length)
    losses = base_answer_losses(base, enc)           # L_base: once per memory, no adapter attached
    ad = make_adapter(adapter, base, seed=train.seed)
    ad.attach(base)
    try:
        result = write(base, ad, enc, objective, train, on_step=on_step)
        checked = verify(base, ad, enc, recall=recall, margin=train.margin, base_losses=losses)
        if out is not None:
            save_adapter(out, ad, base, prompt=enc.prompt, terminator=enc.terminator, records=recs,
                         save_records=save_records, extra={
                             "training": {"adapter": to_dict(adapter), "objective": to_dict(objective),
                                          "train": to_dict(train), "steps": result.steps,
                                          "device": base.device.type,
                                          "wall_s": round(result.wall_s, 3),
                                          "time_to_certified": result.time_to_certified},
                             "metrics": checked.summary(),
                         })
    finally:
        ad.detach()
    return WriteOutcome(Path(out) if out is not None else None, result, checked, time.perf_counter() - t0)


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
        if max_new_tokens is None:
            max_new_tokens = self._max_answer_tokens()
        prompts = [prompt_ids(k, self.base.tokenizer, self.prompt) for k in keys]
        outs = greedy(self.base, prompts, max_new_tokens, self.terminator[0])
        stop = self.terminator[0]
        tok = self.base.tokenizer
        return [tok.decode(o[: o.index(stop)] if stop in o else o, skip_special_tokens=False,
                           clean_up_tokenization_spaces=False) for o in outs]

    def verify(self, records: Sequence[Record] | str | os.PathLike | None = None, *, recall: bool = True,
               margin: float = 0.0, base_losses: bool = True,
               on_progress: VerifyCallback | None = None) -> Verification:
        """Certificate, EM and losses of `records` (default: the records saved with the adapter)."""
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


__all__ = ["write_memory", "Memory", "WriteOutcome"]
