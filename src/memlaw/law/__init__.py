"""The Parametric Memory Law, in two forms, and the capacity frontier (DESIGN.md §7).

    paper:    ΔL(r, ℓ) = C · r^α · ℓ^(−β) + b
    bounded:  ΔL(r, ℓ) = L_base · (1 − exp(−C · r^α · ℓ^(−β)))

ΔL = L_base − L_final is the loss reduction an adapter of rank r buys on answers of length ℓ; α is
the capacity exponent, β the length penalty. The paper's form holds away from the ceiling ΔL =
L_base; the bounded form knows the ceiling and fits whole grids (`memlaw.law.bounded` says why that
form). Both are fitted by nonlinear least squares on ΔL and report R², MAPE, AIC, BIC and standard
errors; `held_out_mape` checks that a fit extrapolates in rank or length; `fit_table` fits every
form on the same cells of one experiment. `Frontier` fits the largest fully recalled length per
rank as ℓ_max = K · r^γ.

Modules: `estimation` (checks, solve, errors, goodness of fit), `paper` and `bounded` (the forms),
`forms` (by name), `held_out`, `frontier`, `tables` (one experiment's table), `files` (CSV input).
Everything is pure (arrays in, numbers out) except `read_law_csv`.
"""

from memlaw.law.bounded import BoundedLaw, BoundedParams, bounded_law
from memlaw.law.estimation import LOSSES
from memlaw.law.files import read_law_csv
from memlaw.law.forms import FORMS, check_form, make_law, predict_with
from memlaw.law.frontier import Frontier
from memlaw.law.held_out import held_out_mape
from memlaw.law.paper import LawParams, MemoryLaw, law
from memlaw.law.tables import BOTH, best_form, fit_table, seed_spread, unsaturated

__all__ = ["law", "LawParams", "MemoryLaw", "bounded_law", "BoundedParams", "BoundedLaw", "FORMS", "BOTH",
           "check_form", "make_law", "predict_with", "held_out_mape", "Frontier", "fit_table", "best_form",
           "seed_spread", "unsaturated", "read_law_csv", "LOSSES"]
