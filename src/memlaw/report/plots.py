"""The report's figures: rows in, `matplotlib.figure.Figure` out. No I/O, no pyplot (no global state).

Each function takes plain rows (store rows, `memlaw.analysis` rows, law parameters) and returns a
Figure drawn on the Agg canvas; `render` turns one into PNG or SVG bytes.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg   # headless, and no pyplot backend switch
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from memlaw.law import predict_with

DPI = 100


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, list]:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0].tolist()
    return fig, axes


def render(fig: Figure, fmt: str = "png") -> bytes:
    """PNG or SVG bytes of `fig` (no timestamps in the file, so equal figures give equal bytes)."""
    buf = io.BytesIO()
    meta = {"Software": None} if fmt == "png" else {"Date": None, "Creator": None}
    with matplotlib.rc_context({"svg.hashsalt": "memlaw", "svg.fonttype": "path"}):
        fig.savefig(buf, format=fmt, metadata=meta)
    return buf.getvalue()


def _colors(n: int, cmap: str = "viridis") -> list:
    cm = matplotlib.colormaps[cmap]
    return [cm(x) for x in (np.linspace(0.0, 0.85, n) if n > 1 else [0.3])]


def _mean_by(rows: Iterable[Mapping[str, Any]], value: str) -> dict[tuple[float, float], float]:
    """Mean of `value` per (rank, length) over seeds; rows without it are skipped."""
    acc: dict[tuple[float, float], list[float]] = defaultdict(list)
    for r in rows:
        if r.get(value) is not None:
            acc[(float(r["rank"]), float(r["length"]))].append(float(r[value]))
    return {k: float(np.mean(v)) for k, v in acc.items()}


def law_panels(rows: Sequence[Mapping[str, Any]], params: Mapping[str, float] | None, *,
               title: str = "", form: str = "paper") -> Figure:
    """ΔL vs rank per length and ΔL vs length per rank (log x), measured points and the fitted law.

    Args:
        rows: law rows with rank, length, delta_loss (and L_base for the bounded form).
        params: fitted parameters of `form`, or None to draw the points only.
        form: "paper" or "bounded"; a bounded line uses the mean L_base of the cells on it.
    """
    fig, (ax_r, ax_l) = _figure(10, 4, ncols=2)
    means = _mean_by(rows, "delta_loss")
    bases = _mean_by(rows, "L_base")
    ranks = sorted({k[0] for k in means})
    lengths = sorted({k[1] for k in means})
    for ax, outer, inner, xlabel, what in ((ax_r, lengths, ranks, "rank r", "ℓ"),
                                           (ax_l, ranks, lengths, "length ℓ (value tokens)", "r")):
        for color, o in zip(_colors(len(outer)), outer):
            pts = [(i, means[(i, o) if ax is ax_r else (o, i)]) for i in inner
                   if ((i, o) if ax is ax_r else (o, i)) in means]
            if not pts:
                continue
            x, y = np.array(pts).T
            ax.plot(x, y, "o", color=color, label=f"{what} = {o:g}")
            line = [bases[(i, o) if ax is ax_r else (o, i)] for i in inner if ((i, o) if ax is ax_r else (o, i)) in bases]
            if params is not None and (form == "paper" or line):
                grid = np.geomspace(min(inner), max(inner), 64) if len(inner) > 1 else np.array(inner)
                l_base = float(np.mean(line)) if line else None
                fit = (predict_with(form, params, grid, o, l_base) if ax is ax_r
                       else predict_with(form, params, o, grid, l_base))
                ax.plot(grid, fit, "-", color=color, alpha=0.8, lw=1.2)
        ax.set_xscale("log")
        ax.set_xticks(inner, [f"{v:g}" for v in inner])          # the measured values, not 2×10⁰
        ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.set_ylabel("ΔL (nats)")
        ax.grid(alpha=0.3, which="both")
        if len(outer) <= 10:
            ax.legend(fontsize=8)
    ax_r.set_title("ΔL vs rank, per length" + (" (lines: fitted law)" if params else ""))
    ax_l.set_title("ΔL vs length, per rank")
    if title:
        fig.suptitle(title)
    return fig


def predicted_vs_true(rows: Sequence[Mapping[str, Any]], params: Mapping[str, float], *, title: str = "",
                      form: str = "paper") -> Figure:
    """Law prediction against measured ΔL, coloured by rank, with the identity line (the bounded form: each
    cell at its own L_base)."""
    fig, (ax,) = _figure(5, 4.5)
    y = np.array([float(r["delta_loss"]) for r in rows])
    l_base = [float(r["L_base"]) for r in rows] if form == "bounded" else None
    pred = predict_with(form, params, [float(r["rank"]) for r in rows], [float(r["length"]) for r in rows], l_base)
    ranks = np.array([float(r["rank"]) for r in rows])
    sc = ax.scatter(y, pred, c=np.log2(ranks), cmap="viridis", s=30, edgecolor="k", lw=0.3)
    lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=1, label="predicted = measured")
    ax.set_xlabel("measured ΔL (nats)")
    ax.set_ylabel("predicted ΔL (nats)")
    ax.set_title(title or "Law: predicted vs measured")
    fig.colorbar(sc, ax=ax, label="log2 rank")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def heatmap(rows: Sequence[Mapping[str, Any]], value: str, *, title: str, fmt: str = "{:.2f}",
            cmap: str = "viridis") -> Figure:
    """`value` (mean over seeds) on a rank × length grid, each cell annotated."""
    means = _mean_by(rows, value)
    ranks = sorted({k[0] for k in means})
    lengths = sorted({k[1] for k in means})
    grid = np.full((len(ranks), len(lengths)), np.nan)
    for (r, length), v in means.items():
        grid[ranks.index(r), lengths.index(length)] = v
    fig, (ax,) = _figure(1.6 + 0.9 * max(3, len(lengths)), 1.4 + 0.5 * max(3, len(ranks)))
    im = ax.imshow(grid, cmap=cmap, aspect="auto", origin="lower")
    ax.set_xticks(range(len(lengths)), [f"{x:g}" for x in lengths])
    ax.set_yticks(range(len(ranks)), [f"{x:g}" for x in ranks])
    ax.set_xlabel("length ℓ (value tokens)")
    ax.set_ylabel("rank r")
    for i in range(len(ranks)):
        for j in range(len(lengths)):
            if np.isfinite(grid[i, j]):
                r, g, b, _ = im.cmap(im.norm(grid[i, j]))
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5         # perceived brightness of the square
                ax.text(j, i, fmt.format(grid[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
    fig.colorbar(im, ax=ax)
    ax.set_title(title)
    return fig


def probability_grid(steps: np.ndarray, grid: np.ndarray, *, n_value: int | None = None, title: str = "",
                     first_failure: int | None = None) -> Figure:
    """p_t of one record's answer tokens (rows: positions) over training steps (columns).

    The colour scale is centred at 0.5 (the certificate): blue above, red at or below.
    """
    n_pos, n_steps = grid.shape
    fig, (ax,) = _figure(min(12.0, 3.0 + 0.25 * n_steps), min(8.0, 2.0 + 0.22 * n_pos))
    im = ax.imshow(grid, aspect="auto", cmap="RdBu", norm=TwoSlopeNorm(vmin=0.0, vcenter=0.5, vmax=1.0),
                   interpolation="nearest", origin="upper")
    step_ticks = np.unique(np.linspace(0, n_steps - 1, min(n_steps, 8)).round().astype(int)) if n_steps else []
    ax.set_xticks(step_ticks, [str(int(steps[i])) for i in step_ticks])
    ax.set_xlabel("training step")
    ax.set_ylabel("answer position t")
    if n_value is not None and n_value < n_pos:
        ax.axhline(n_value - 0.5, color="k", lw=1, ls=":")
        ax.text(n_steps - 0.5, n_value - 0.6, "terminator ↓", ha="right", va="bottom", fontsize=7)
    if first_failure is not None:
        ax.plot([n_steps - 0.5], [first_failure], marker="<", color="k", ms=8, clip_on=False)
    fig.colorbar(im, ax=ax, label="p_t (0.5 = certificate)")
    ax.set_title(title or "p_t over training")
    return fig


def stubborn_figure(curves: Sequence[Mapping[str, Any]], points: Sequence[Mapping[str, Any]], *,
                    rho: float | None, n: int, paper: tuple[float, int] | None = (0.908, 155),
                    note: str | None = None) -> Figure:
    """Left: stubborn tokens vs step, one line per cell. Right: earliest stubborn vs first failure with ρ
    (`note` instead of ρ where the points pool several groups, each with its own ρ)."""
    fig, (ax_c, ax_s) = _figure(11, 4.2, ncols=2)
    by_cell: dict[str, list] = defaultdict(list)
    label: dict[str, str] = {}
    for c in curves:
        if c.get("stubborn") is not None:
            by_cell[c["key"]].append((c["step"], c["stubborn"]))
            label[c["key"]] = f"r{c.get('rank')} ℓ{c.get('length')}"
    for color, (key, pts) in zip(_colors(len(by_cell), "plasma"), by_cell.items()):
        x, y = np.array(sorted(pts)).T
        ax_c.plot(x, y, "-", color=color, lw=1.2, label=label[key])
    ax_c.set_yscale("symlog", linthresh=1)
    ax_c.set_xlabel("training step")
    ax_c.set_ylabel("stubborn tokens (p_t ≤ 0.5)")
    ax_c.set_title("Stubborn tokens over training")
    ax_c.grid(alpha=0.3)
    if 0 < len(by_cell) <= 12:
        ax_c.legend(fontsize=7, ncol=2)
    if points:
        x = np.array([p["earliest_stubborn"] for p in points], dtype=float)
        y = np.array([p["first_failure"] for p in points], dtype=float)
        rng = np.random.default_rng(0)                       # jitter: positions are integers, many coincide
        ax_s.scatter(x + rng.uniform(-0.15, 0.15, x.size), y + rng.uniform(-0.15, 0.15, y.size),
                     s=16, alpha=0.6, edgecolor="none")
        hi = float(max(x.max(), y.max())) + 1
        ax_s.plot([0, hi], [0, hi], "k--", lw=1, label="first failure = earliest stubborn")
        ax_s.legend(fontsize=8, loc="upper left")
    else:
        ax_s.text(0.5, 0.5, "no failed records", ha="center", va="center", transform=ax_s.transAxes)
    text = (f"{note}, n = {n}" if note is not None else f"Spearman ρ = {rho:.3f}, n = {n}" if rho is not None
            else f"ρ undefined (n = {n})")
    if paper is not None:
        text += f"\npaper: ρ = {paper[0]}, n = {paper[1]}"
    ax_s.text(0.98, 0.03, text, ha="right", va="bottom", transform=ax_s.transAxes, fontsize=9,
              bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.7"})
    ax_s.set_xlabel("earliest stubborn position")
    ax_s.set_ylabel("first free-run failure position")
    ax_s.set_title("Earliest stubborn token vs first failure")
    ax_s.grid(alpha=0.3)
    return fig


def phase_figure(points: Sequence[Mapping[str, Any]], summary: Mapping[str, int]) -> Figure:
    """p_t of every on-path answer position against right/wrong under free-run; the boundary at 0.5."""
    fig, (ax,) = _figure(8, 3.6)
    rng = np.random.default_rng(0)
    for y0, status, color in ((1, "right", "tab:blue"), (0, "wrong", "tab:red")):
        p = np.array([x["p"] for x in points if x["status"] == status], dtype=float)
        if p.size:
            ax.scatter(p, y0 + rng.uniform(-0.3, 0.3, p.size), s=6, alpha=0.35, color=color, edgecolor="none",
                       label=f"{status} ({p.size})", rasterized=p.size > 2000)
    ax.axvline(0.5, color="k", lw=1.2, ls="--")
    ax.axvspan(0.5, 1.0, ymin=0.0, ymax=0.5, color="tab:red", alpha=0.06)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.6, 1.6)
    ax.set_yticks([0, 1], ["wrong\n(first failure)", "right"])
    ax.set_xlabel("final teacher-forced p_t")
    ax.set_title(f"Phase picture: p_t > 0.5 ⇒ right; violations (shaded) = {summary.get('violations', 0)} "
                 f"of {summary.get('on_path', 0)} on-path positions")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3, axis="x")
    return fig


def methods_figure(comparison, *, metric: str = "score", title: str = "") -> Figure:
    """MemFT vs SFT: grouped bars with error bars (sd over seeds), one group per (rank, length), one bar per objective."""
    columns = comparison.columns
    fig, (ax,) = _figure(max(5.0, 1.2 + 1.1 * len(columns)) + 2.6, 3.8)   # + the legend beside the bars
    width = 0.8 / max(1, len(comparison.objectives))
    x = np.arange(len(columns))
    for k, (name, color) in enumerate(zip(comparison.objectives, _colors(len(comparison.objectives), "tab10"))):
        stats = [comparison.cells[name].get(c) for c in columns]
        means = [np.nan if s is None else 100.0 * s.mean for s in stats]
        sds = [0.0 if s is None or s.sd is None else 100.0 * s.sd for s in stats]
        bars = ax.bar(x + (k - (len(comparison.objectives) - 1) / 2) * width, means, width, yerr=sds, capsize=3,
                      label=name, color=color)
        ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
    ax.set_xticks(x, [f"r{r} ℓ{n}" for r, n in columns])
    ax.set_ylabel(metric)
    ax.set_ylim(0, 115)
    ax.set_title(title or comparison.label)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))   # never over a bar
    ax.grid(alpha=0.3, axis="y")
    return fig


def locality_figure(setup) -> Figure:
    """Mean KL(base || adapted) against rank, one line per (adapter · objective, ℓ), error bars the sd over seeds."""
    fig, (ax,) = _figure(6.0, 3.8)
    lengths = sorted({n for _, n in setup.columns})
    lines = [(line, n) for line in setup.lines for n in lengths]
    for (line, n), color in zip(lines, _colors(len(lines), "tab10")):
        points = sorted((r, st) for (r, m), per in setup.cells[line].items() if m == n and (st := per.get("kl_mean")))
        if not points:
            continue
        ax.errorbar([r for r, _ in points], [st.mean for _, st in points],
                    yerr=[st.sd or 0.0 for _, st in points], marker="o", capsize=3, color=color,
                    label=line if len(lengths) == 1 else f"{line} ℓ{n}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_xlabel("rank r")
    ax.set_ylabel("mean KL(base || adapted), nats")
    ax.set_title(setup.label)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return fig


__all__ = ["law_panels", "predicted_vs_true", "heatmap", "probability_grid", "stubborn_figure", "phase_figure",
           "methods_figure", "locality_figure", "render"]
