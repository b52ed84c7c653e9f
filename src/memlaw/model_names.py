"""What a model name means, decided without torch: embedded, tiny, a local directory, or a hub id.

Kept apart from `memlaw.models` (which imports torch and transformers, seconds on a busy machine)
so that a typo is refused at once: `check_model_name` runs before anything heavy loads.

memlaw never goes to the network unless asked: a hub id loads from the Hugging Face cache, and is
downloaded only with the network allowed (`--online` on the command line, or `MEMLAW_ONLINE=1`).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from memlaw.errors import ModelError

HUB_IDS: dict[str, str] = {
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "gemma3-270m": "google/gemma-3-270m",
}
"""The hub id of each embedded model (memlaw's copy is the GGUF build, dequantized): what a LoRA
adapter's `base_model_name_or_path` names, so that it loads anywhere."""
EMBEDDED_NAMES: tuple[str, ...] = tuple(HUB_IDS)
NAMES: tuple[str, ...] = (*EMBEDDED_NAMES, "tiny")
ONLINE_ENV = "MEMLAW_ONLINE"


def network_allowed() -> bool:
    """True when the user allowed hub downloads ($MEMLAW_ONLINE set to anything but '' or '0')."""
    return os.environ.get(ONLINE_ENV, "") not in ("", "0")


def allow_network() -> None:
    """Allow hub downloads for this process and the processes it starts (Ray actors)."""
    os.environ[ONLINE_ENV] = "1"


def hub_id(name: str) -> str:
    """What to name the base model outside memlaw: the hub id of an embedded model, the absolute
    path of a local directory, or the hub id as given."""
    if name in HUB_IDS:
        return HUB_IDS[name]
    path = Path(name).expanduser()
    return str(path.absolute()) if path.is_dir() else name


def _in_hub_cache(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:              # not a valid repo id, no cache: not there
        return False


def check_model_name(name: str) -> None:
    """Refuse, in well under a second, a model name that cannot load.

    Passes: an embedded name, `tiny`, a local directory, a hub id in the Hugging Face cache, and,
    with the network allowed, any other hub id (its download may still fail, with its own message).

    Raises:
        ModelError: one line naming the nearest known names and how to allow the network.
    """
    if name in NAMES or Path(name).expanduser().is_dir() or _in_hub_cache(name) or network_allowed():
        return
    raise ModelError(f"unknown model {name!r}: not an embedded model ({', '.join(NAMES)}), not a local "
                     f"directory, and not a hub id in the Hugging Face cache{_nearest(name)} (to download "
                     f"a hub id, allow the network: --online or {ONLINE_ENV}=1)")


def _nearest(name: str) -> str:
    """'; did you mean ...?' over the embedded names and their hub ids (which suggest the embedded name)."""
    by_lower = {n.lower(): n for n in NAMES} | {h.lower(): e for e, h in HUB_IDS.items()}
    if name.lower() in by_lower:
        return f"; did you mean {by_lower[name.lower()]!r}?"
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.5)
    picks = list(dict.fromkeys(by_lower[c] for c in close))
    prefix = [n for n in NAMES if n.startswith(name.lower()) and n not in picks] if name else []
    picks = list(dict.fromkeys(prefix + picks))
    return f"; did you mean {' or '.join(repr(p) for p in picks)}?" if picks else ""


__all__ = ["HUB_IDS", "EMBEDDED_NAMES", "NAMES", "ONLINE_ENV", "network_allowed", "allow_network", "hub_id",
           "check_model_name"]
