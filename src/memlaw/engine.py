"""One write-and-verify: the sequence every write runs, written once (DESIGN §1 in run order).

    L_base (no adapter) -> attach -> write (train until budget or certified) -> verify (certificate,
    greedy EM, held-out EM) -> locality (base against base + adapter on neutral prompts) -> detach

`write_and_verify` is what the Python API (`memory.write_memory`), sweep cells and bench scripts
call; a stacked sweep group trains in one pass (`train.write_many`) and then runs only the verify
half, `measure`, on each adapter. Nothing here touches the disk: saving is the caller's job, done
inside `while_attached` where it needs the adapter attached (a PEFT LoRA saves from its model).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from memlaw.adapters import Adapter, make_adapter
from memlaw.config import AdapterConfig, ObjectiveConfig, TrainConfig
from memlaw.encode import Encoded
from memlaw.locality import Locality, locality as measure_locality
from memlaw.train import CheckCallback, StepCallback, TrainResult, write
from memlaw.verify import Verification, base_answer_losses, verify


@dataclass
class Written:
    """What one write-and-verify produced; the adapter is trained and detached again."""

    adapter: Adapter
    train: TrainResult
    verification: Verification
    held_out: Verification | None
    """Greedy EM on records the adapter was not trained on (the linear rule's generalization), if given."""
    base_losses: list[tuple[float, float]]
    """Per record (value-token loss, terminator-inclusive loss) of the base model: L_base."""
    locality: Locality | None = None
    """What the adapter costs the base model on neutral prompts (`memlaw.locality`), if asked."""


@dataclass
class Measured:
    """The verify half of a write: the memory's verification, held-out EM and locality (each if asked)."""

    verification: Verification
    held_out: Verification | None = None
    locality: Locality | None = None


@contextmanager
def attached(adapter: Adapter, base) -> Iterator[Adapter]:
    """`adapter` hooked onto `base` while inside; the base model is left as it was after."""
    adapter.attach(base)
    try:
        yield adapter
    finally:
        adapter.detach()


def measure(base, adapter: Adapter, enc: Encoded, *, margin: float, base_losses: list[tuple[float, float]] | None,
            held_out: Encoded | None = None, recall: bool = True, locality: bool = False) -> Measured:
    """Verify an attached adapter on its memory (certificate, greedy EM, ΔL), on held-out records if
    given, and (`locality`) compare it with the base model on neutral prompts in the memory's prompt spec."""
    checked = verify(base, adapter, enc, recall=recall, margin=margin, base_losses=base_losses)
    held = verify(base, adapter, held_out, recall=True, margin=margin) if held_out is not None else None
    local = measure_locality(base, adapter, enc.prompt, enc.terminator) if locality else None
    return Measured(checked, held, local)


def write_and_verify(base, enc: Encoded, adapter: AdapterConfig | Adapter, objective: ObjectiveConfig,
                     train: TrainConfig, *, base_losses: list[tuple[float, float]] | None = None,
                     held_out: Encoded | None = None, recall: bool = True, locality: bool = False,
                     on_step: StepCallback | None = None,
                     on_check: CheckCallback | None = None,
                     while_attached: Callable[[Written], None] | None = None) -> Written:
    """Write an encoded memory into an adapter on `base` and verify it; the base is only borrowed.

    Args:
        base: the loaded, frozen base model (no adapter attached).
        enc: the encoded memory.
        adapter: an `AdapterConfig` (a fresh adapter, initialised from `train.seed`) or an unattached
            adapter object to go on training (a warm start, e.g. an update of a saved memory).
        objective: the per-token weighting (sft, memft-*).
        train: optimizer, budget, stop rule, margin.
        base_losses: L_base per record if already known (a sweep shares it across a memory's cells);
            else computed here, before the adapter is attached.
        held_out: records to measure greedy EM on, not trained on.
        recall: confirm the certificate with greedy decoding (EM, free-run accuracy, first failure).
        locality: also measure what the adapter costs the base model on neutral prompts (`memlaw.locality`).
        on_step, on_check: progress and p_t callbacks of the write loop.
        while_attached: called with the result before the adapter is detached (save it there).
    """
    losses = base_answer_losses(base, enc) if base_losses is None else base_losses
    ad = make_adapter(adapter, base, seed=train.seed) if isinstance(adapter, AdapterConfig) else adapter
    with attached(ad, base):
        trained = write(base, ad, enc, objective, train, on_step=on_step, on_check=on_check)
        got = measure(base, ad, enc, margin=train.margin, base_losses=losses, held_out=held_out, recall=recall,
                      locality=locality)
        written = Written(ad, trained, got.verification, got.held_out, losses, got.locality)
        if while_attached is not None:
            while_attached(written)
    return written


__all__ = ["Written", "Measured", "attached", "measure", "write_and_verify"]
