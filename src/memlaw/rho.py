"""ρ(earliest stubborn, first failure) over per-record rows: the inclusion rule, Spearman's ρ with a
bootstrap interval, and the null baseline that accounts for the structure. Pure: rows in, numbers out.

Positions are 0-based answer positions (value tokens, then the terminator). **Earliest stubborn**:
the first position with p_t ≤ 0.5; **first failure**: the first position where greedy decoding
leaves the target (`memlaw.phase` defines the free-run statuses).

**Which records count (the inclusion rule).** Every record of every finished cell with per-record
verdicts from greedy recall (`metrics.records`) gets one row in `memlaw.phase.record_table`, with `inclusion`:
- `rho`: greedy decoding left the target (a first failure) and the record has a stubborn token:
  one point (earliest stubborn, first failure) of ρ. n = the number of these. A record written in
  several cells (other ranks, seeds, objectives) is a point in each: each is a separate write.
- `recalled`: greedy output equals the target tokens (no first failure), stubborn tokens or not.
- `no-stubborn`: a first failure but no stubborn token, i.e. a certified record that greedy got
  wrong (numerics between the two passes); counted, left out of ρ.
- `no-position`: EM false yet the greedy tokens equal the target up to where decoding stopped (the
  text differs, no token position does); counted, left out.
- `no-recall`: the cell was verified without greedy decoding; left out.
Cells without per-record verdicts (older memlaw) are counted as such. Ties: Spearman's ρ is
Pearson's r of the ranks with tied values given their average rank (as `scipy.stats.spearmanr`).

**Why ρ needs a null.** On the path greedy is right wherever p_t > 0.5, so the first failure can
only be a stubborn position: first failure ∈ S (the record's stubborn positions) and therefore
first failure ≥ earliest stubborn = min S. Pooled over records of different lengths, that alone
makes ρ large. What the certificate does *not* say is *which* stubborn position breaks greedy: the
paper's claim is that it is the earliest. So the null keeps each record's measured earliest stubborn
position, length and stubborn positions, and makes the failure uninformative among the positions
where the certificate allows it:

- **ρ_null** (the baseline): each included record's first failure replaced by a uniformly random
  element of C = {earliest stubborn} ∪ {stubborn positions after it that greedy reaches (≤ n_value)}.
  S is the measured set where the cell stored its final p_t (sweep option `token_probs`); otherwise
  the record's other `stubborn` − 1 stubborn tokens are placed uniformly at random (without
  replacement) over the answer positions after the earliest stubborn one: the stubborn mask
  permuted within the record with the earliest stubborn position fixed (`sets_measured` says how
  many records had their measured set). ρ_null is the mean of Spearman ρ over `draws` Monte Carlo
  draws (seeded); `null_interval` their central `level` range; `p_null` = (1 + #{draws with ρ* ≥ ρ})
  / (draws + 1), a conditional randomization test; `excess` = ρ − ρ_null, the part of ρ that is
  not structure. Under this null the first failure is at the earliest stubborn position with
  probability E[1/|C|] (`exact_null`, against the measured `exact`).
- **ρ_bound** (for scale): the first failure uniform on {earliest stubborn, ..., n_value}: what first
  failure ≥ earliest stubborn and the records' lengths give without S. It can lie above or below
  ρ_null (where S is spread evenly it is close); ρ_null is the baseline because it uses all the
  certificate says.

The bootstrap interval of ρ resamples cells with replacement (default; records of one cell share
one adapter, so they are not independent) or records, and takes the percentile interval over the
resamples where ρ is defined.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from memlaw.errors import ConfigError

PAPER_RHO, PAPER_N = 0.908, 155
"""The paper's Spearman ρ(earliest stubborn, first failure) and its number of failed records."""
INCLUSIONS = ("rho", "recalled", "no-stubborn", "no-position", "no-recall")
FEW_CELLS = 10
"""Below this many cells a cell-bootstrap interval gets a note: the percentile interval of a few clusters is rough."""


@dataclass(frozen=True, kw_only=True)
class RhoOptions:
    """How the interval and the null are drawn."""

    resamples: int = 2000
    """Bootstrap resamples for the interval of ρ."""
    draws: int = 2000
    """Monte Carlo draws of the null."""
    seed: int = 0
    """Seeds both (each group's stream also depends on its label, so groups do not share draws)."""
    unit: Literal["cell", "record"] = "cell"
    """What the bootstrap resamples: whole cells (their records share an adapter) or single records."""
    level: float = 0.95

    def __post_init__(self) -> None:
        problems = [f"{name} must be an integer >= 100, got {getattr(self, name)!r}" for name in ("resamples", "draws")
                    if not _is_int(getattr(self, name)) or getattr(self, name) < 100]
        if not _is_int(self.seed) or self.seed < 0:
            problems.append(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.unit not in ("cell", "record"):
            problems.append(f"unit must be 'cell' or 'record', got {self.unit!r}")
        if not isinstance(self.level, float) or not 0.5 <= self.level < 1.0:
            problems.append(f"level must be a number in [0.5, 1), got {self.level!r}")
        if problems:
            raise ConfigError("phase: " + "; ".join(problems))


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def inclusion(record: Mapping[str, Any]) -> str:
    """Which of `INCLUSIONS` a record's verdict puts it in (module doc)."""
    if record.get("em") is None:
        return "no-recall"
    if record.get("first_failure") is None:
        return "recalled" if record.get("em") else "no-position"
    return "rho" if record.get("earliest_stubborn") is not None else "no-stubborn"


# ---------------------------------------------------------------- ρ, its interval, its null


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's ρ (average ranks for ties); None when n < 3 or either side is constant."""
    from scipy.stats import rankdata

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(_pearson_rows(rankdata(x), rankdata(y)[None, :])[0])


def _pearson_rows(rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
    """Pearson r of the vector rx (n,) with each row of ry (D, n); NaN where a row is constant."""
    a = rx - rx.mean()
    b = ry - ry.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum() * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (b @ a) / np.where(den > 0, den, 1.0), np.nan)


def bootstrap_interval(x: np.ndarray, y: np.ndarray, clusters: Sequence[Any], *, resamples: int, level: float,
                       rng: np.random.Generator) -> tuple[float, float, int] | None:
    """Percentile interval of Spearman ρ over resamples of `clusters` (one label per point) with replacement.

    Returns (low, high, resamples where ρ was defined), or None with fewer than 2 clusters or when
    ρ was defined in fewer than half of the resamples.
    """
    labels = list(dict.fromkeys(clusters))
    if len(labels) < 2:
        return None
    index = {c: i for i, c in enumerate(labels)}
    members = [[] for _ in labels]
    for i, c in enumerate(clusters):
        members[index[c]].append(i)
    members = [np.array(m) for m in members]
    values = []
    for _ in range(resamples):
        idx = np.concatenate([members[j] for j in rng.integers(0, len(labels), len(labels))])
        r = spearman(x[idx], y[idx])
        if r is not None:
            values.append(r)
    if len(values) < resamples / 2:
        return None
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi), len(values)


def null_failures(points: Sequence[Mapping[str, Any]], draws: int, rng: np.random.Generator) -> np.ndarray:
    """Draws of the first failure under the null (module doc), shape (draws, n points).

    Each point needs earliest_stubborn, first_failure, n_value, n_terminator, stubborn (count) and
    stubborn_positions (a list, or None when not measured).
    """
    out = np.empty((draws, len(points)), dtype=np.int64)
    for i, p in enumerate(points):
        es = int(p["earliest_stubborn"])
        top = max(int(p["n_value"]), int(p["first_failure"]), es)      # the last position greedy can fail at
        measured = p.get("stubborn_positions")
        if measured is not None:
            cands = np.array([es, *sorted(t for t in set(measured) if es < t <= top)])
            out[:, i] = cands[rng.integers(0, cands.size, draws)]
            continue
        after = max(int(p["n_value"]) + int(p["n_terminator"]) - 1, top) - es   # answer positions after es
        reach = max(top - es, 0)                                                  # of which greedy reaches
        others = min(max(int(p.get("stubborn") or 1) - 1, 0), after)
        j = rng.hypergeometric(reach, after - reach, others, size=draws) if others else np.zeros(draws, int)
        # a uniform element of {es} ∪ (a uniform j-subset of es+1..top) is es w.p. 1/(j+1), else uniform on es+1..top
        at_es = rng.random(draws) < 1.0 / (j + 1)
        later = es + 1 + rng.integers(0, max(reach, 1), draws)
        out[:, i] = np.where(at_es, es, later)
    return out


def bound_failures(points: Sequence[Mapping[str, Any]], draws: int, rng: np.random.Generator) -> np.ndarray:
    """Draws of the first failure uniform on earliest stubborn..n_value (ρ_bound), shape (draws, n points)."""
    es = np.array([int(p["earliest_stubborn"]) for p in points])
    top = np.array([max(int(p["n_value"]), int(p["first_failure"])) for p in points])
    return es + rng.integers(0, np.maximum(top - es, 0) + 1, size=(draws, len(points)))


def null_rho(x: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Spearman ρ of x against every row of `draws`; NaN where a row is constant."""
    from scipy.stats import rankdata

    if np.ptp(x) == 0:
        return np.full(len(draws), np.nan)
    return _pearson_rows(rankdata(x), rankdata(draws, axis=1))


@dataclass
class Correlation:
    """ρ(earliest stubborn, first failure) over one group's records, with its interval and null."""

    records: int = 0
    """Records with per-record verdicts."""
    counts: dict[str, int] = field(default_factory=dict)
    """Records per `inclusion` (module doc); counts["rho"] is n."""
    n: int = 0
    """Records in ρ: failed under greedy decoding, with a stubborn token."""
    cells_in_rho: int = 0
    recalled_with_stubborn: int = 0
    """Recalled records with a stubborn token: the target was the argmax anyway."""
    exact: int = 0
    """Points whose first failure is the earliest stubborn position."""
    order_violations: int = 0
    """Points with first failure < earliest stubborn: must be 0 (up to numerics), as phase violations."""
    rho: float | None = None
    ci: list[float] | None = None
    """[low, high]: bootstrap percentile interval of ρ at `options.level`."""
    ci_resamples: int = 0
    rho_null: float | None = None
    null_interval: list[float] | None = None
    p_null: float | None = None
    exact_null: float | None = None
    """Expected points with first failure = earliest stubborn under the null (compare `exact`)."""
    rho_bound: float | None = None
    excess: float | None = None
    """ρ − ρ_null."""
    sets_measured: int = 0
    """Points whose null used their measured stubborn positions (the rest: the permuted mask)."""
    options: dict[str, Any] = field(default_factory=dict)
    note: str | None = None
    """Why ρ is undefined, or (ρ defined) what qualifies its interval."""


def correlate(records: Sequence[Mapping[str, Any]], options: RhoOptions = RhoOptions(), *,
              stream: str = "") -> Correlation:
    """ρ, its bootstrap interval, ρ_null and ρ_bound over `record_table` rows (module doc).

    `stream` (the group's label) is mixed into the seed, so each group has its own draws.
    """
    res = Correlation(records=len(records), options=asdict(options))
    res.counts = {k: sum(r["inclusion"] == k for r in records) for k in INCLUSIONS}
    points = [r for r in records if r["inclusion"] == "rho"]
    res.n, res.cells_in_rho = len(points), len({p["key"] for p in points})
    res.recalled_with_stubborn = sum(r["inclusion"] == "recalled" and r.get("earliest_stubborn") is not None
                                     for r in records)
    x = np.array([p["earliest_stubborn"] for p in points], dtype=float)
    y = np.array([p["first_failure"] for p in points], dtype=float)
    res.exact, res.order_violations = int((x == y).sum()), int((y < x).sum())
    res.sets_measured = sum(p.get("stubborn_positions") is not None for p in points)
    res.rho = spearman(x, y)
    if res.rho is None:
        res.note = (f"ρ needs at least 3 failed records with a stubborn token, got {res.n}" if res.n < 3 else
                    "ρ is undefined: one of the two positions is the same for every failed record")
        return res
    rng = np.random.default_rng([options.seed, zlib.crc32(stream.encode())])
    ci = bootstrap_interval(x, y, [p["key"] if options.unit == "cell" else i for i, p in enumerate(points)],
                            resamples=options.resamples, level=options.level, rng=rng)
    if ci is None:
        res.note = f"no bootstrap interval: ρ needs more than one {options.unit} that varies"
    else:
        res.ci, res.ci_resamples = [ci[0], ci[1]], ci[2]
        if options.unit == "cell" and res.cells_in_rho < FEW_CELLS:
            res.note = (f"the interval resamples only {res.cells_in_rho} cells: too few for a reliable cell "
                        "bootstrap (a record bootstrap is narrower but treats records of one adapter as independent)")
    draws = null_failures(points, options.draws, rng)
    rhos = null_rho(x, draws)
    if np.isfinite(rhos).any():
        ok = rhos[np.isfinite(rhos)]
        res.rho_null = float(ok.mean())
        res.null_interval = [float(q) for q in np.quantile(ok, [(1 - options.level) / 2, (1 + options.level) / 2])]
        res.p_null = float((1 + (ok >= res.rho - 1e-12).sum()) / (ok.size + 1))
        res.excess = res.rho - res.rho_null
    res.exact_null = float((draws == x[None, :]).mean(axis=0).sum())
    bound = null_rho(x, bound_failures(points, options.draws, rng))
    res.rho_bound = float(np.nanmean(bound)) if np.isfinite(bound).any() else None
    return res


__all__ = ["PAPER_RHO", "PAPER_N", "INCLUSIONS", "FEW_CELLS", "RhoOptions", "inclusion", "spearman",
           "bootstrap_interval", "null_failures", "bound_failures", "null_rho", "Correlation", "correlate"]
