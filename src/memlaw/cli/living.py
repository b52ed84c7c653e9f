"""CLI for living memories (DESIGN §7b): the leakage report that `verify` and `update` print, and
`verify --locality`'s line."""

from __future__ import annotations

import typer
from rich.table import Table

from memlaw.cli._common import out

LEAKAGE_HELP = ("Also decode prompts that are not keys (an empty turn, generic questions, random keys shaped "
                "like the real ones, real keys' words recombined) and count the outputs holding a stored value "
                "or an 8-character run of one. Counts only; exit 1 when any is found.")
WATCH_HELP = ("Records whose values must not come back (e.g. deleted records, or old values of changed keys): "
              "their keys are prompted too, and their values searched for in every leakage output.")
RANDOM_KEYS_HELP = "Leakage: how many random keys shaped like the real ones (and as many recombined ones)."
LOCALITY_HELP = ("Also measure what the adapter costs the base model (DESIGN §2 Locality): on 48 neutral "
                 "prompts in the memory's prompt format, greedy agreement and the mean KL(base || adapted) of "
                 "the next-token distributions along the base model's greedy continuation (32 tokens). "
                 "Numbers only.")
SHOW_LEAKS_HELP = ("Leakage: print each leaking prompt, the key whose value came out, and the output (the value "
                   "itself: mind where stdout goes). Not with --redact.")


def leakage_text(s: dict) -> str:
    """One line of counts: prompts that leaked, per kind, and how many distinct values came out."""
    kinds = ", ".join(f"{k} {v['leaking']}/{v['prompts']}" for k, v in s["by_kind"].items())
    leaking = sum(v["leaking"] for v in s["by_kind"].values())
    text = (f"leakage: {leaking} of {s['prompts']} prompts that are not keys returned a stored value or an "
            f"{s['run_chars']}-character run of one ({kinds}); stored values found {s['stored_values_leaked']}"
            f"/{s['n_stored']}")
    if s["n_watched"]:
        text += f", watched values found {s['watched_values_leaked']}/{s['n_watched']}"
    return text


def hits_table(leaks) -> Table:
    t = Table(title="leaks (values shown)")
    for col in ("kind", "prompt", "key of the value", "whole", "output"):
        t.add_column(col)
    for h in leaks.hits:
        t.add_row(h.kind, h.prompt or "(empty)", h.key + (" (watched)" if h.watched else ""),
                  "yes" if h.full else "run", h.output)   # the console shows strings literally (`visible`)
    return t


def print_leakage(leaks, show: bool) -> None:
    if leaks is None:
        return
    out.print(leakage_text(leaks.summary()), markup=False, soft_wrap=True)
    if show and leaks.hits:
        out.print(hits_table(leaks))


def leakage_json(leaks, show: bool) -> dict:
    return {} if leaks is None else {"leakage": leaks.to_dict(show=show)}


def locality_text(local) -> str:
    """One line: how much of the base model's behaviour on neutral prompts the adapter leaves as it was."""
    return (f"locality: {local.n_prompts} neutral prompts, {local.positions} positions: greedy continuation "
            f"unchanged for {local.identical:.0%}, token agreement {local.agreement:.1%} (teacher-forced), "
            f"{local.greedy_prefix:.1%} reproduced before the first change; KL(base || adapted) mean "
            f"{local.kl_mean:.3g} nats, max {local.kl_max:.3g}")


def leakage_exit(leaks) -> None:
    """Exit 1 when a leakage check found a value (after everything is printed)."""
    if leaks is not None and leaks.leaks:
        raise typer.Exit(1)


__all__ = ["LEAKAGE_HELP", "LOCALITY_HELP", "WATCH_HELP", "RANDOM_KEYS_HELP", "SHOW_LEAKS_HELP", "leakage_text",
           "locality_text", "print_leakage", "leakage_json", "leakage_exit"]
