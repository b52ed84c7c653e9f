"""The law forms by name, and the other `--law` choices, decided without numpy.

Kept apart from `memlaw.law` (numpy and scipy) so that the command line can offer the choices
without loading them at start-up, as `memlaw.model_names` does for models. `memlaw.law.FORMS`
maps these names to the estimators and checks, on import, that it has exactly these.
"""

from __future__ import annotations

FORM_NAMES: tuple[str, ...] = ("paper", "bounded")
"""The law forms: `paper` (ΔL = C·r^α·ℓ^(−β) + b) and `bounded` (ΔL = L_base·(1 − exp(−C·r^α·ℓ^(−β))))."""
BOTH = "both"
"""`fit --law both`: every form on the same cells, side by side."""
AUTO = "auto"
"""`plan --law auto`: every form on the same cells, and the one with the lower held-out MAPE used."""

__all__ = ["FORM_NAMES", "BOTH", "AUTO"]
