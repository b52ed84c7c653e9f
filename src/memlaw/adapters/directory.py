"""The adapter directory format: what `memlaw write` leaves on disk, written atomically and checked on read.

An adapter directory holds `memlaw.json` (what was written, onto which base, how prompts render)
plus the tensors (`adapter.safetensors` for `probe`, a plain PEFT adapter for `lora`) and, unless
asked not to, `records.jsonl`. It is written atomically (`memlaw.atomic.atomic_dir`). Integrity:
memlaw.json records the sha256 of every tensor file, of the records, and of its own other fields
(`meta_sha256`), so an edit to any of them is reported, never silently used; loading also checks the
base model's fingerprint, and never unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from memlaw.adapters.card import model_card
from memlaw.atomic import atomic_dir, is_temp_dir
from memlaw.config import AdapterConfig, PromptConfig, choices
from memlaw.errors import AdapterError, ConfigError
from memlaw.fileio import json_ready, open_input
from memlaw.records import Record, keys_sha256, load_records, records_sha256, write_records

META = "memlaw.json"
RECORDS = "records.jsonl"
CARD = "README.md"
"""The model card: counts, base model, certificate; never a key or a value (`memlaw.adapters.card`)."""
MAX_META_BYTES = 16 << 20   # memlaw.json is a few kB; a larger one is not read
FORMAT_VERSION = 2
"""2: memlaw.json carries `meta_sha256`, the sha256 of its own other fields (1 did not)."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_out_dir(out: str | os.PathLike, *, replace: bool = False, force: bool = False) -> Path:
    """Check that `out` may receive an adapter directory, before any work is done.

    `out` is replaced as a whole, so it must be absent or an empty directory. A memory memlaw wrote
    (recognised by its validated memlaw.json, not by the name alone) is replaced only with `replace`
    (`update` writing in place) or `force` (`write --force`), and only with `force` when it also
    holds files memlaw did not write (they would go with it). Anything else (a file, a directory of
    other files, a directory whose memlaw.json does not validate, a symbolic link, a temp
    directory of an interrupted write) is refused, never deleted.

    Raises:
        AdapterError: naming `out` and why it cannot be written.
    """
    out = Path(out)
    if is_temp_dir(out):
        raise AdapterError(f"{out}: looks like a temporary directory of an interrupted write; choose another --out")
    if out.is_symlink():
        raise AdapterError(f"{out}: is a symbolic link; give the directory itself as --out")
    if out.exists() and not out.is_dir():
        raise AdapterError(f"{out}: exists and is not a directory; --out names the adapter directory to write")
    if out.is_dir() and any(out.iterdir()):
        _check_replaceable(out, replace=replace, force=force)
    parent = next(p for p in out.absolute().parents if p.exists()) if not out.exists() else out.absolute().parent
    if not parent.is_dir():
        raise AdapterError(f"{out}: cannot be created: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise AdapterError(f"{out}: cannot be written: no write permission in {parent}")
    return out


def _check_replaceable(out: Path, *, replace: bool, force: bool) -> None:
    """Refuse to replace the non-empty directory `out` unless it is a memory memlaw wrote and the caller may."""
    if not (out / META).is_file():
        raise AdapterError(f"{out}: exists and is not a memlaw adapter (no {META}); an adapter directory is "
                           f"replaced as a whole, so choose a new --out or empty it first")
    try:
        meta = read_meta(out)
    except AdapterError as e:
        raise AdapterError(f"{out}: exists and is not a memlaw adapter ({META} does not validate: "
                           f"{str(e).removeprefix(str(out / META) + ': ')[:160]}); memlaw replaces only directories "
                           f"it wrote: choose a new --out, or delete it yourself") from None
    foreign = sorted(set(os.listdir(out)) - written_files(meta))
    if foreign and not force:
        names = ", ".join(repr(n[:60]) for n in foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise AdapterError(f"{out}: holds files memlaw did not write ({names}), which replacing the memory would "
                           f"delete; move them out, or pass --force to replace the directory with them")
    if not (replace or force):
        n = meta.get("n_records", "?")
        raise AdapterError(f"{out}: already holds a memory ({n} record{'' if n == 1 else 's'}); `memlaw update "
                           f"{out} CHANGES` changes it in place, --force replaces it")


def written_files(meta: dict) -> set[str]:
    """The names memlaw wrote into an adapter directory: `files` in memlaw.json, or (adapters written
    before it was recorded) memlaw.json, records.jsonl, the model card, the tensor files and PEFT's config."""
    if isinstance(meta.get("files"), list):
        return {META, *(f for f in meta["files"] if isinstance(f, str))}
    peft = {"adapter_config.json"} if meta.get("kind") == "lora" else set()
    return {META, RECORDS, CARD, *meta.get("tensors_sha256", {}), *peft}


def save_adapter(out: str | Path, adapter, base, *, prompt: PromptConfig, terminator: list[int],
                 records: list[Record], save_records: bool = True, extra: dict[str, Any] | None = None,
                 replace: bool = False, force: bool = False) -> Path:
    """Write the adapter directory atomically: the previous complete directory or the new one, never torn.

    `memlaw.json` is written last; it records the names of the files written (`files`), the sha256
    of every tensor file and of the records, and `meta_sha256`, the sha256 of its own other fields.
    `replace` and `force`: see `check_out_dir`.

    Raises:
        AdapterError: `out` may not be written (see `check_out_dir`) or the file system refused.
    """
    out = check_out_dir(out, replace=replace, force=force)
    try:
        with atomic_dir(out) as tmp:
            files = adapter.save_tensors(tmp)
            if save_records:
                write_records(tmp / RECORDS, records)
            meta = {
                "format": FORMAT_VERSION,
                "kind": adapter.kind,
                "rank": adapter.rank,
                **adapter.meta(),
                "base_model": {"name": base.name, "fingerprint": base.fingerprint, "family": base.family},
                "prompt": {"template": prompt.template, "system": prompt.system, "format": prompt.format},
                "terminator_ids": list(terminator),
                "dtype": str(base.dtype).removeprefix("torch."),
                "n_params": adapter.n_params(),
                "n_records": len(records),
                "records_sha256": records_sha256(records),
                "keys_sha256": keys_sha256(records),     # which keys it holds, even without records.jsonl
                "records_saved": save_records,
                "tensors_sha256": {f: sha256_file(tmp / f) for f in files},
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **(extra or {}),
                "files": sorted({*os.listdir(tmp), META, CARD}),
            }
            meta = json_ready(meta)                  # strict JSON: a NaN metric is stored as null
            meta["meta_sha256"] = meta_sha256(meta)
            text = json.dumps(meta, indent=2, ensure_ascii=False, allow_nan=False)
            (tmp / META).write_text(text + "\n", encoding="utf-8")
            (tmp / CARD).write_text(model_card(meta), encoding="utf-8")   # replaces PEFT's empty template
    except OSError as e:
        raise AdapterError(f"{out}: cannot write the adapter ({e.strerror or type(e).__name__}"
                           f"{': ' + e.filename if isinstance(e.filename, str) else ''})") from None
    return out


def meta_sha256(meta: dict) -> str:
    """sha256 of memlaw.json's fields other than `meta_sha256`, as canonical JSON (sorted keys, compact)."""
    rest = {k: v for k, v in meta.items() if k != "meta_sha256"}
    text = json.dumps(rest, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_meta(directory: str | Path) -> dict:
    """Read and check `memlaw.json`: its own sha256 (edits), its fields and their types.

    Raises:
        AdapterError: naming the directory or file and the cause: not an adapter directory (missing,
            a file, a temp directory of an interrupted write), memlaw.json missing, not JSON, edited
            after it was written, or a field missing or malformed.
    """
    directory = Path(directory)
    path = directory / META
    if is_temp_dir(directory):
        raise AdapterError(f"{directory}: a temporary directory left by an interrupted write, not an adapter "
                           f"(safe to delete)")
    if not directory.is_dir():
        what = "is a file" if directory.exists() else "does not exist"
        raise AdapterError(f"{directory}: not an adapter directory (it {what}){_interrupted_hint(directory)}")
    if not path.is_file():
        raise AdapterError(f"{path}: missing; {directory} is not a memlaw adapter directory")
    try:
        with open_input(path, limit=MAX_META_BYTES, error=AdapterError, what=META) as f:
            meta = json.loads(f.read(MAX_META_BYTES + 1).decode("utf-8"))
    except UnicodeDecodeError as e:
        raise AdapterError(f"{path}: not valid UTF-8 (at byte {e.start + 1}); the file is damaged") from None
    except json.JSONDecodeError as e:  # the message names the place, never the text
        raise AdapterError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                           f"the file is damaged") from None
    except (OSError, RecursionError) as e:
        raise AdapterError(f"{path}: cannot read it ({getattr(e, 'strerror', None) or type(e).__name__})") from None
    if not isinstance(meta, dict):
        raise AdapterError(f"{path}: expected a JSON object, got {type(meta).__name__}; the file is damaged")
    fmt = meta.get("format", 1)
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt > FORMAT_VERSION:
        raise AdapterError(f"{path}: format {fmt!r} is not one this memlaw reads (1..{FORMAT_VERSION}); "
                           f"upgrade memlaw")
    if fmt >= 2 and meta.get("meta_sha256") != meta_sha256(meta):
        raise AdapterError(f"{path}: changed after it was written (tampered or torn): its fields no longer "
                           f"match its meta_sha256; write the adapter again")
    _check_fields(meta, path)
    return meta


def _check_fields(meta: dict, path: Path) -> None:
    def bad(field: str, want: str) -> AdapterError:
        return AdapterError(f"{path}: field {field!r} missing or not {want}")

    def is_int(x) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    required = {"kind": str, "base_model": dict, "prompt": dict, "dtype": str}
    for key, typ in required.items():
        if not isinstance(meta.get(key), typ):
            raise bad(key, f"a {'string' if typ is str else 'JSON object'}")
    kinds = choices(AdapterConfig, "kind")
    if meta["kind"] not in kinds:
        raise AdapterError(f"{path}: unknown adapter kind {meta['kind']!r} (expected one of {', '.join(kinds)})")
    if not is_int(meta.get("rank")) or meta["rank"] < 1:
        raise bad("rank", "an integer >= 1")
    if meta["kind"] == "probe" and (not is_int(meta.get("layer")) or meta["layer"] < 0):
        raise bad("layer", "an integer >= 0")
    base = meta["base_model"]
    if not isinstance(base.get("name"), str) or not isinstance(base.get("fingerprint"), str):
        raise bad("base_model", "an object with string fields 'name' and 'fingerprint'")
    term = meta.get("terminator_ids")
    if not isinstance(term, list) or not term or not all(is_int(t) and t >= 0 for t in term):
        raise bad("terminator_ids", "a non-empty list of token ids")
    unknown = set(meta["prompt"]) - {"template", "system", "format"}
    try:
        if unknown:
            raise ConfigError(f"unknown field {sorted(unknown)[0]!r}")
        PromptConfig(**meta["prompt"])
    except (ConfigError, TypeError) as e:
        raise AdapterError(f"{path}: field 'prompt' is malformed ({e})") from None
    tensors = meta.get("tensors_sha256")
    if not isinstance(tensors, dict) or not tensors:
        raise bad("tensors_sha256", "a JSON object of file name -> sha256")
    for name, digest in tensors.items():
        if not _PLAIN_NAME.match(name) or not (isinstance(digest, str) and _SHA256.match(digest)):
            raise AdapterError(f"{path}: field 'tensors_sha256' must map plain file names to sha256 hex digests; "
                               f"entry {name[:80]!r} does not")
    records = meta.get("records_sha256")
    if records is not None and not (isinstance(records, str) and _SHA256.match(records)):
        raise bad("records_sha256", "a sha256 hex digest")


_PLAIN_NAME = re.compile(r"^(?!\.{1,2}$)[^/\\\x00]{1,255}$")  # a file in the directory itself: no path
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _interrupted_hint(directory: Path) -> str:
    """'; an interrupted write left the previous adapter in ...' where one is there to restore."""
    try:
        left = sorted(directory.parent.glob(f".{directory.name}.*.old/{directory.name}"))
    except OSError:
        return ""
    left = [p for p in left if (p / META).is_file()]
    return f"; an interrupted write left the previous adapter in {left[-1]}" if left else ""


def check_integrity(directory: str | Path, meta: dict, *, records: bool = True) -> list[str]:
    """Problems with the files memlaw.json vouches for, one phrase each ([] when all match).

    Every tensor file must be there with the sha256 in `tensors_sha256` (a changed or truncated
    file is tampered or torn); with `records`, a `records.jsonl` that is there must hash to
    `records_sha256` (it may be absent: written with --no-records, or removed to share the adapter
    without its values).
    """
    directory = Path(directory)
    problems = []
    for name, digest in meta["tensors_sha256"].items():
        p = directory / name
        if not p.is_file():
            problems.append(f"{name} is missing")
        elif sha256_file(p) != digest:
            problems.append(f"{name} does not match its sha256 in {META} (tampered or torn)")
    saved = directory / RECORDS
    if records and saved.is_file() and sha256_file(saved) != meta.get("records_sha256"):
        problems.append(f"{RECORDS} does not match records_sha256 in {META}: the records were edited after "
                        f"the adapter was written")
    return problems


def load_adapter(directory: str | Path, base, *, check: bool = True,
                 dropout: float | None = 0.0) -> tuple[Any, dict]:
    """Load an adapter directory onto `base` (unattached) and return it with its metadata.

    `dropout` is the training-only dropout of the loaded adapter: 0 to use it, the written adapter's
    setting (None: the kind's default) to train it further (`update`).

    Raises:
        AdapterError: missing or malformed files, tensors whose sha256 does not match, or a base
            model whose fingerprint differs from the one the adapter was written on.
    """
    directory = Path(directory)
    meta = read_meta(directory)
    want = meta["base_model"]["fingerprint"]
    if want != base.fingerprint:
        raise AdapterError(f"{directory}: written on base model {meta['base_model']['name']!r} "
                           f"(fingerprint {want[:12]}), refusing to load onto {base.name!r} "
                           f"(fingerprint {base.fingerprint[:12]}): other weights")
    if check and (bad := check_integrity(directory, meta, records=False)):
        raise AdapterError(f"{directory}: {'; '.join(bad)}")
    cfg = AdapterConfig(kind=meta["kind"], rank=meta["rank"], layer=meta.get("layer"), dropout=dropout,
                        lora_alpha=meta.get("alpha"), lora_targets=_targets(meta), lora_layers=_layers(meta))
    from memlaw.adapters import make_adapter

    adapter = make_adapter(cfg, base)
    try:
        adapter.load_tensors(directory)
    except AdapterError:
        raise
    except Exception as e:  # safetensors raises its own errors on truncated files
        cause = (str(e).strip().splitlines() or [""])[0][:200]
        raise AdapterError(f"{directory}: cannot read the adapter tensors ({type(e).__name__}: {cause})") from None
    return adapter, meta


def load_saved_records(directory: str | Path) -> list[Record]:
    """The records saved with the adapter, after checking them against `records_sha256`.

    Raises:
        AdapterError: there is no records.jsonl, or it changed since the adapter was written.
    """
    directory = Path(directory)
    path = directory / RECORDS
    if not path.is_file():
        raise AdapterError(f"{directory}: no {RECORDS} (written with --no-records); pass the records file")
    meta = read_meta(directory)
    if sha256_file(path) != meta.get("records_sha256"):
        raise AdapterError(f"{path}: does not match records_sha256 in {META}: the records were edited after the "
                           f"adapter was written; pass the records to check explicitly")
    return load_records(path)


def _targets(meta: dict):
    t = meta.get("targets", "all-linear")
    return tuple(t) if isinstance(t, list) else t


def _layers(meta: dict):
    layers = meta.get("layers")
    return tuple(layers) if layers else None




__all__ = ["META", "RECORDS", "FORMAT_VERSION", "save_adapter", "load_adapter", "read_meta", "check_integrity",
           "check_out_dir", "load_saved_records", "meta_sha256", "sha256_file"]
