"""Measure a memory: p_t of every answer token in one teacher-forced pass, the certificate, greedy recall.

DESIGN §2. A record is *certified* when every answer token, terminator included, has p_t > 0.5 +
margin: then no other token can out-score it, so greedy decoding returns the value and stops.
`verify` checks the certificate in one batched forward pass and confirms it with real batched greedy
decoding (KV cache); a certified record that greedy decoding gets wrong is counted as a
`certificate_violation` (possible only through numerics: the cached decode runs other kernels, and
in bfloat16 p_t moves with the batch shape) and reported as a certificate not confirmed: a memory
holds (`Verification.confirmed`) only when every record is certified and recalled exactly.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import Tensor
from transformers import DynamicCache, GenerationConfig

from memlaw.bits import ValueBits, upper
from memlaw.encode import Encoded
from memlaw.certificate import certified, dtype_name, not_confirmed_advice, stubborn
from memlaw.certify import certificate_probs, side_by_side
from memlaw.errors import NotCertifiedError
from memlaw.forward import TeacherForcer, TokenProbs, cache_arg, answer_probs, lm_logits, top_token
from memlaw.records import redact as redact_value, shorten

LN2 = math.log(2.0)


@dataclass(frozen=True, slots=True)
class RecordVerdict:
    key: str
    certified: bool          # every answer token, terminator included, has p_t > 0.5 + margin
    min_p: float
    stubborn: int            # answer tokens with p_t <= 0.5
    earliest_stubborn: int | None
    n_value: int
    n_terminator: int
    tf_correct: int          # value tokens whose teacher-forced argmax is the target
    loss_final: float        # mean CE over value tokens
    loss_final_all: float    # terminator included
    loss_base: float | None = None
    loss_base_all: float | None = None
    em: bool | None = None   # greedy output, cut at the terminator, equals the value
    free_correct: int | None = None   # value positions where greedy output agrees with the target
    first_failure: int | None = None  # first answer position where greedy output differs
    output: str | None = field(default=None, repr=False)   # the greedy output (a value: shown only when asked)


def record_verdict(key: str, probs: TokenProbs, n_value: int, margin: float = 0.0) -> RecordVerdict:
    """Certificate and teacher-forced statistics of one record."""
    p, nll = probs.p, probs.nll
    weak = stubborn(p).nonzero()
    return RecordVerdict(
        key=key, certified=certified(p, margin), min_p=float(p.min()), stubborn=int(len(weak)),
        earliest_stubborn=int(weak[0]) if len(weak) else None, n_value=n_value,
        n_terminator=len(p) - n_value, tf_correct=int(probs.correct[:n_value].sum()),
        loss_final=float(nll[:n_value].mean()) if n_value else 0.0, loss_final_all=float(nll.mean()),
    )


@torch.no_grad()
def greedy(base, prompts: Sequence[Sequence[int]], max_new_tokens: int | Sequence[int], stop_id: int,
           batch_size: int = 64, *, hf_generate: bool = False,
           on_batch: Callable[[int, int], None] | None = None) -> list[list[int]]:
    """Batched greedy decoding with KV cache; prompts of equal length share a batch, so nothing is padded.

    Each output is cut after its first `stop_id` and at its limit. `hf_generate=True` decodes with
    transformers' `generate` instead of the minimal loop below (same tokens, more per-step overhead;
    kept as the reference the tests compare against). `on_batch(prompts done, prompts)` is called
    after each batch (progress lines).
    """
    limits = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    buckets: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        buckets[len(p)].append(i)
    decode = _generate_batch if hf_generate else _greedy_batch
    parts = [idx[lo: lo + batch_size] for _, idx in sorted(buckets.items()) for lo in range(0, len(idx), batch_size)]

    @torch.no_grad()                               # grad mode is per thread: the workers' too
    def one(part: list[int]) -> list[list[int]]:
        ids = torch.tensor([list(prompts[i]) for i in part], device=base.device)
        return decode(base, ids, max(limits[i] for i in part), stop_id)

    outputs: list[list[int]] = [[] for _ in prompts]
    done = 0
    # the KV-cache loop's batches side by side on a CPU's threads, as the certificate's pass; `generate`,
    # the reference, one after another
    with side_by_side(base.device, 1 if hf_generate else len(parts)) as run:
        for part, new in zip(parts, run(one, parts)):
            for b, i in enumerate(part):
                if stop_id in new[b]:
                    new[b] = new[b][: new[b].index(stop_id) + 1]
                outputs[i] = new[b][: limits[i]]
            done += len(part)
            if on_batch is not None:
                on_batch(done, len(prompts))
    return outputs


def greedy_steps(base, hidden: Tensor, n_new: int, stop_id: int, step: Callable[[Tensor], Tensor]) -> Tensor:
    """Argmax decoding from the prompts' last hidden states (B, D), after the decoder's prefill.

    The LM head runs on those (B, D) states as one matmul (`lm_logits`): the model's own
    `logits_to_keep=1` slices them out of (B, P, D) as a strided 3-D input, which torch turns into a
    batched matmul that first copies the head's weight once per row (3.6 GB at batch 64 on SmolLM2;
    6 s of every prefill on this CPU). `step(token)` runs the cached decoder on the tokens just chosen,
    shape (B,), and returns the next hidden states (B, D). Stops once every row has emitted `stop_id`,
    or after `n_new` tokens (n_new >= 1). Returns the tokens, (B, ≤ n_new).
    """
    done = torch.zeros(len(hidden), dtype=torch.bool, device=hidden.device)
    steps: list[Tensor] = []
    for t in range(n_new):
        token = top_token(lm_logits(base, hidden))                # (B,)
        steps.append(token)
        done |= token == stop_id
        if t == n_new - 1 or bool(done.all()):                    # a sync point, once per token
            break
        hidden = step(token)
    return torch.stack(steps, 1)


def _greedy_batch(base, ids: Tensor, n_new: int, stop_id: int) -> list[list[int]]:
    """Argmax decoding of equal-length prompts (B, P): one prefill, then one cached step per token.

    The same model calls `generate` makes (no padding, so no attention mask; positions from the
    cache), without its per-step logits processors and stopping criteria. Returns (B, ≤ n_new) tokens.
    """
    if n_new <= 0:
        return [[] for _ in range(len(ids))]
    decoder = base.model.model
    kw = {cache_arg(decoder): DynamicCache(config=base.model.config), "use_cache": True}
    hidden = decoder(input_ids=ids, **kw).last_hidden_state[:, -1]
    return greedy_steps(base, hidden, n_new, stop_id,
                        lambda token: decoder(input_ids=token[:, None], **kw).last_hidden_state[:, -1]).tolist()


def _generate_batch(base, ids: Tensor, n_new: int, stop_id: int) -> list[list[int]]:
    pad = base.tokenizer.pad_token_id if base.tokenizer.pad_token_id is not None else stop_id
    cfg = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=n_new, eos_token_id=stop_id, pad_token_id=pad)
    out = base.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=cfg)
    return out[:, ids.shape[1]:].tolist()


def score_recall(enc: Encoded, i: int, out: list[int]) -> tuple[bool, int, int | None, str]:
    """EM, free-run correct value positions, first failing answer position, and the decoded output."""
    stop = enc.terminator[0]
    value_out = out[: out.index(stop)] if stop in out else out
    text = enc.tokenizer.decode(value_out, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    answer = enc.answer_ids(i)
    n_value = len(enc.value_ids[i])
    free = sum(1 for t in range(n_value) if t < len(out) and out[t] == answer[t])
    # positions past the terminator's first token are not generated: compare the generated ones
    compared = answer[: len(out)] if stop in out else answer
    first = next((t for t in range(len(compared)) if t >= len(out) or out[t] != compared[t]), None)
    return text == enc.records[i].value, free, first, text


@dataclass
class Verification:
    records: list[RecordVerdict]
    n_params: int
    length: int                 # ℓ: value tokens summed over the records
    terminator_tokens: int
    bits: ValueBits | None
    """Information in each value: exact under a known generator (a benchmark's), else an upper bound."""
    recalled: bool
    margin: float = 0.0
    """Certified means every answer token has p_t > 0.5 + margin."""
    dtype: str | None = None
    """The dtype the base model ran in ('bfloat16', 'float32'), where known."""

    def _mean(self, attr: str, weight: str) -> float | None:
        vals = [(getattr(v, attr), getattr(v, weight)) for v in self.records]
        if any(x is None for x, _ in vals):
            return None
        total = sum(w for _, w in vals)
        return sum(x * w for x, w in vals) / total if total else 0.0

    def summary(self) -> dict:
        """Aggregates over the memory (token-weighted losses, so ΔL is a per-token quantity)."""
        n = len(self.records)
        n_all = lambda v: v.n_value + v.n_terminator  # noqa: E731
        L_base, L_final = self._mean("loss_base", "n_value"), self._mean("loss_final", "n_value")
        vals = [(v.loss_final_all, n_all(v)) for v in self.records]
        L_final_all = sum(x * w for x, w in vals) / max(1, sum(w for _, w in vals))
        base_all = [(v.loss_base_all, n_all(v)) for v in self.records]
        L_base_all = None if any(x is None for x, _ in base_all) else sum(x * w for x, w in base_all) / max(1, sum(w for _, w in base_all))
        s = {
            "n_records": n,
            "certified": sum(v.certified for v in self.records),
            "length": self.length,
            "terminator_tokens": self.terminator_tokens,
            "tf_acc": sum(v.tf_correct for v in self.records) / max(1, self.length),
            "stubborn": sum(v.stubborn for v in self.records),
            "L_base": L_base, "L_final": L_final,
            "delta_loss": None if L_base is None else L_base - L_final,
            "L_base_all": L_base_all, "L_final_all": L_final_all,
            "delta_loss_all": None if L_base_all is None else L_base_all - L_final_all,
            "n_params": self.n_params,
        }
        if self.recalled:
            s["em"] = sum(bool(v.em) for v in self.records)
            s["em_rate"] = s["em"] / max(1, n)
            s["free_acc"] = sum(v.free_correct or 0 for v in self.records) / max(1, self.length)
            s["certificate_violations"] = sum(v.certified and not v.em for v in self.records)
            if self.bits is not None:     # bits_stored / bits_per_param, or their _upper bounds
                s.update(self.bits.metrics([bool(v.em) for v in self.records], self.n_params))
        s["certified_rate"] = s["certified"] / max(1, n)
        return s

    @property
    def all_certified(self) -> bool:
        """Every record certified (whatever greedy decoding then did: see `confirmed`)."""
        return all(v.certified for v in self.records)

    @property
    def all_exact(self) -> bool | None:
        """Every record recalled exactly by greedy decoding; None when recall was not run."""
        return all(bool(v.em) for v in self.records) if self.recalled else None

    @property
    def not_confirmed(self) -> list[RecordVerdict]:
        """Records certified that greedy decoding did not recall exactly (none when recall was not run)."""
        return [v for v in self.records if v.certified and v.em is False] if self.recalled else []

    @property
    def confirmed(self) -> bool:
        """Every record certified and, where greedy recall ran, recalled exactly: the verdict of a write
        or an update (exit code 0 of `memlaw write` and `memlaw update`)."""
        return self.all_certified and not self.not_confirmed

    def not_confirmed_text(self) -> str | None:
        """One clause on the certificates greedy decoding contradicted: how many, the margin and dtype, and
        what to do; None when there are none. Names no value."""
        bad = self.not_confirmed
        if not bad:
            return None
        dtype = self.dtype or "an unknown dtype"
        return (f"{len(bad)} of {len(self.records)} records certified but not recalled exactly by greedy decoding "
                f"(certificate not confirmed at margin {self.margin:g} in {dtype}; first: key {shorten(bad[0].key)}): "
                f"{not_confirmed_advice(self.margin, dtype)}")

    def raise_unless_certified(self) -> Verification:
        """Return self when `confirmed`; else raise `NotCertifiedError` naming how many records did not
        certify and how many certificates greedy decoding did not confirm."""
        parts = []
        failed = [v for v in self.records if not v.certified]
        if failed:
            worst = min(failed, key=lambda v: v.min_p)
            parts.append(f"{len(failed)} of {len(self.records)} records not certified (lowest min p_t "
                         f"{worst.min_p:.3f}, key {shorten(worst.key)}); train longer or at a higher rank")
        if (text := self.not_confirmed_text()) is not None:
            parts.append(text)
        if parts:
            raise NotCertifiedError("; ".join(parts))
        return self

    def raise_unless_exact(self) -> Verification:
        """Return self when every record was recalled exactly (or, without recall, certified, which
        implies it); else raise `NotCertifiedError`."""
        if not self.recalled:
            return self.raise_unless_certified()
        failed = [v for v in self.records if not v.em]
        if failed:
            text = self.not_confirmed_text()
            raise NotCertifiedError(f"{len(failed)} of {len(self.records)} records not recalled exactly "
                                    f"(first: key {shorten(failed[0].key)})" + (f"; {text}" if text else ""))
        return self

    def to_dict(self, *, redact: bool = True) -> dict:
        rows = []
        for v in self.records:
            d = asdict(v)
            if d["output"] is not None and redact:
                d["output"] = redact_value(d["output"])
            rows.append(d)
        return {"summary": self.summary(), "records": rows}


@dataclass(frozen=True, slots=True)
class VerifyProgress:
    """Where a verify is: `stage` ("L_base", "certificate" or "recall"), records done of `total`, and
    (certificate stage) the records certified and stubborn tokens among those done."""

    stage: str
    done: int
    total: int
    certified: int | None = None
    stubborn: int | None = None


VerifyCallback = Callable[[VerifyProgress], None]


def _certificate_progress(on_progress: VerifyCallback | None, margin: float):
    """An `answer_probs` on_chunk that reports certified records and stubborn tokens so far."""
    if on_progress is None:
        return None
    seen: dict[int, tuple[bool, int]] = {}

    def on_chunk(probs: dict[int, TokenProbs], total: int) -> None:
        for i, p in probs.items():
            if i not in seen:
                seen[i] = (certified(p.p, margin), int(stubborn(p.p).sum()))
        on_progress(VerifyProgress("certificate", len(seen), total, sum(c for c, _ in seen.values()),
                                   sum(n for _, n in seen.values())))
    return on_chunk


def verify(base, adapter, enc: Encoded, *, recall: bool = True, margin: float = 0.0,
           base_losses: list[tuple[float, float]] | None = None, batch_size: int = 64,
           fast: bool = True, on_progress: VerifyCallback | None = None,
           value_bits: ValueBits | None = None) -> Verification:
    """Certify every record in one teacher-forced pass and (optionally) confirm by greedy recall.

    Args:
        base: the base model, with `adapter` attached.
        adapter: the attached adapter (for its parameter count and first layer).
        enc: the encoded memory.
        recall: also run batched greedy decoding (EM, free-run accuracy, first failure).
        margin: certified means p_t > 0.5 + margin.
        base_losses: per record (value-token loss, terminator-inclusive loss) of the base model, from
            `base_answer_losses`; computed once per memory, not here.
        fast: the certificate's pass (`memlaw.certify`: length-bucketed rows, the shared prompt run once,
            answer-only logits; the plain pass's numbers); False: the plain full-model pass itself.
        on_progress: called after each chunk of the certificate pass and each batch of greedy recall.
        value_bits: the values' information under their generator (`benchmarks.value_bits`); None:
            an upper bound from the values alone (`memlaw.bits.upper`), reported as one.
    """
    adapter.eval()
    on_chunk = _certificate_progress(on_progress, margin)
    if fast:
        probs = certificate_probs(base, enc, batch_size=batch_size, on_chunk=on_chunk)
    else:
        probs = answer_probs(TeacherForcer(base, enc, plain=True), chunk=batch_size, on_chunk=on_chunk)
    verdicts = [record_verdict(r.key, probs[i], len(enc.value_ids[i]), margin) for i, r in enumerate(enc.records)]
    if base_losses is not None:
        verdicts = [replace(v, loss_base=b[0], loss_base_all=b[1]) for v, b in zip(verdicts, base_losses)]
    if recall:
        limits = [len(enc.answer_ids(i)) for i in range(len(enc))]
        on_batch = None if on_progress is None else lambda done, n: on_progress(VerifyProgress("recall", done, n))
        outs = greedy(base, enc.prompt_ids, limits, enc.terminator[0], batch_size, on_batch=on_batch)
        scored = [score_recall(enc, i, o) for i, o in enumerate(outs)]
        verdicts = [replace(v, em=em, free_correct=free, first_failure=first, output=text)
                    for v, (em, free, first, text) in zip(verdicts, scored)]
    n_params = adapter.n_params()
    bits = value_bits if value_bits is not None else upper(enc.records)
    dtype = getattr(base, "dtype", None)
    return Verification(verdicts, n_params, enc.length, enc.terminator_tokens, bits, recall, margin,
                        None if dtype is None else dtype_name(dtype))


@torch.no_grad()
def base_answer_losses(base, enc: Encoded, batch_size: int = 64, *,
                       on_progress: VerifyCallback | None = None) -> list[tuple[float, float]]:
    """Per record (value-token loss, terminator-inclusive loss) of the base model, no adapter attached."""
    tf = TeacherForcer(base, enc)
    on_chunk = None if on_progress is None else lambda probs, n: on_progress(VerifyProgress("L_base", len(probs), n))
    probs = answer_probs(tf, chunk=batch_size, on_chunk=on_chunk)
    out = []
    for i in range(len(enc)):
        n = len(enc.value_ids[i])
        nll = probs[i].nll
        out.append((float(nll[:n].mean()) if n else 0.0, float(nll.mean())))
    return out
