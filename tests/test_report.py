"""The report: a 2×2 tiny sweep with p_t into a tmp store, figures, `memlaw report`, redaction, headless Chromium."""

import json
import random
import re
import shutil
import subprocess
from collections import Counter

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from typer.testing import CliRunner

from memlaw import analysis, experiments, phase
from memlaw.cli import app
from memlaw.records import Record, write_records
from memlaw.report import build_report, html, plots
from memlaw.rho import RhoOptions
from memlaw.store import open_store
from memlaw.sweep import run_local, sweep_from_dict
from memlaw.sweep.cell import CellResult

SECRET = "908172"            # one record's value: it must never reach the store or the report
ERROR_SECRET = "quoted-input-3141"
runner = CliRunner()


@pytest.fixture(scope="module")
def store_path(tmp_path_factory, tiny_base):
    tmp = tmp_path_factory.mktemp("report")
    rng = random.Random(1)
    values = ["".join(rng.choice("0123456789") for _ in range(6)) for _ in range(8)]
    values[2] = SECRET
    write_records(tmp / "records.jsonl", [Record(f"key {c}", v) for c, v in zip("abcdefgh", values)])
    sweep = sweep_from_dict({
        "name": "tiny-report", "model": "tiny", "dtype": "float32", "ranks": [2, 8], "lengths": [24, 48],
        "benchmark": {"name": "records", "path": str(tmp / "records.jsonl")}, "adapter": {"layer": 1},
        "prompt": {"template": "plain"}, "train": {"lr": 0.03, "batch_size": 8, "max_steps": 100, "check_every": 10},
        "objectives": [{"name": "sft"}, {"name": "memft-ot"}], "seeds": [0, 1], "token_probs": True})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with open_store(tmp / "runs.db") as store:
            run_local(sweep, store, base=tiny_base)
            cell = sweep.cells()[0]                     # a failed row whose error quotes some input
            store.add_cell(CellResult("f" * 64, cell, "failed", versions={}, error=f"bad input {ERROR_SECRET}"),
                           sweep="tiny-report")
    finally:
        torch.set_num_threads(threads)
    return tmp / "runs.db"


@pytest.fixture(scope="module")
def rows(store_path):
    with open_store(store_path, create=False) as store:
        rows = store.load_cells()
        return rows, {r["key"]: store.token_probs(r["key"]) for r in rows}


@pytest.fixture(scope="module")
def page_dir(store_path, tmp_path_factory):
    """`memlaw report` run once through the CLI, shared by the tests that read it."""
    out = tmp_path_factory.mktemp("page")
    res = runner.invoke(app, ["report", "--store", str(store_path), "--out", str(out / "site")])
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output
    return out / "site"


# ---------------------------------------------------------------- analysis on a real tiny sweep


def test_the_tiny_sweep_obeys_the_theory(rows):
    rows, probs = rows
    assert len(rows) == 16 and all(probs[r["key"]] for r in rows)
    pooled = phase.phase_summary([p for r in rows for p in phase.phase_points(r, probs[r["key"]])])
    assert pooled["on_path"] > 0 and pooled["violations"] == 0          # p_t > 0.5 on the path => right
    counts = Counter()                                  # the same table counted from p_t and the verdicts alone
    for r in rows:
        _, final = analysis.final_probs(probs[r["key"]])
        for x in analysis.record_rows(r):
            p, ff = final[x["record"]], x["first_failure"]
            right, above = np.arange(p.size) < (x["n_value"] + 1 if ff is None else ff), p > 0.5
            counts.update(right_above=int((right & above).sum()), right_below=int((right & ~above).sum()))
            if ff is not None:
                counts["violations" if p[ff] > 0.5 else "wrong_below"] += 1
    assert {k: pooled[k] for k in ("right_above", "right_below", "wrong_below", "violations")} == {
        k: counts[k] for k in ("right_above", "right_below", "wrong_below", "violations")}
    groups = phase.study(rows, probs, by=("model", "objective"), options=RhoOptions(resamples=200, draws=200))
    assert [g.group["objective"] for g in groups] == ["sft", "memft-ot"]
    assert {k: sum(g.phase[k] for g in groups) for k in pooled} == pooled   # the groups split the table
    for g in groups:
        c = g.correlation
        assert g.cells == g.cells_with_probs == 8 and g.phase["violations"] == 0
        assert c.order_violations == 0 and c.counts["no-stubborn"] == 0 and c.sets_measured == c.n
    assert sum(g.correlation.n for g in groups) > 0
    for r in rows:                                      # final stored p_t (float16) matches the verdicts
        recs = analysis.record_rows(r)
        _, final = analysis.final_probs(probs[r["key"]])
        for x in recs:
            p = final[x["record"]]
            assert (p < 0.499).sum() <= x["stubborn"] <= (p <= 0.501).sum()
            assert x["min_p"] == pytest.approx(float(p.min()), abs=1e-3)


# ---------------------------------------------------------------- figures


def test_every_figure_function_returns_a_figure_that_renders(rows):
    rows, probs = rows
    lrows = [{"rank": r["rank"], "length": r["length"], "delta_loss": r["delta_loss"]} for r in rows]
    params = {"C": 1.0, "alpha": 0.5, "beta": 0.2, "b": 0.1}
    key = rows[0]["key"]
    steps, grid = analysis.probability_grid(probs[key], 0)
    failed = [x for x in phase.record_table(rows) if x["inclusion"] == "rho"]
    pts = [p for r in rows for p in phase.phase_points(r, probs[r["key"]])]
    figs = [plots.law_panels(lrows, params), plots.law_panels(lrows, None), plots.predicted_vs_true(lrows, params),
            plots.heatmap(rows, "em_rate", title="EM"), plots.heatmap(rows, "L_final", title="L"),
            plots.probability_grid(steps, grid, n_value=6, first_failure=2),
            plots.stubborn_figure(analysis.stubborn_curves(rows), failed, rho=0.5, n=len(failed)),
            plots.stubborn_figure([], failed, rho=None, n=len(failed), note="2 groups"),
            plots.stubborn_figure([], [], rho=None, n=0),
            plots.phase_figure(pts, phase.phase_summary(pts)),
            plots.methods_figure(experiments.compare(rows)[0], metric="EM %")]
    assert all(isinstance(f, Figure) for f in figs)
    png, svg = plots.render(figs[0], "png"), plots.render(figs[0], "svg")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and b"<svg" in svg[:500]
    again = plots.heatmap(rows, "em_rate", title="EM")                          # no timestamps: reproducible
    assert plots.render(again, "svg") == plots.render(figs[3], "svg")


# ---------------------------------------------------------------- the page


def test_report_page_has_every_section_table_and_embedded_image(page_dir):
    html = (page_dir / "index.html").read_text()
    for table in ("rho-table", "timeline-table", "phase-table", "misalignment-table", "methods-tiny--probe--records",
                  "cells-table", "failed-table"):
        assert f'id="{table}"' in html, table
    for objective in ("sft", "memft-ot"):                   # one law per experiment: never one over both objectives
        assert re.search(rf'id="fit-objective-name-{objective}-[0-9a-f]{{8}}"', html), objective
    for text in ("Spearman ρ", "0.908", "155", "held-out MAPE", "R²", "MAPE", "memft-ot", " ± ", "[2]"):
        assert text in html
    figures = sorted(p.stem for p in (page_dir / "figures").glob("*.png"))
    assert sorted(p.stem for p in (page_dir / "figures").glob("*.svg")) == figures
    assert len(figures) >= 8 and {"stubborn", "phase", "methods-tiny--probe--records"} <= set(figures)
    assert any(f.startswith("grid-") for f in figures) and any(f.startswith("heat-em") for f in figures)
    assert html.count('src="data:image/png;base64,') == len(figures)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)      # nothing to fetch: opens offline
    assert ERROR_SECRET in html                                                # errors are shown unless --redact
    summary = json.loads((page_dir / "report.json").read_text())
    assert summary["cells"] == 16 and summary["phase"]["violations"] == 0
    assert sorted(law["config"]["objective"]["name"] for law in summary["laws"]) == ["memft-ot", "sft"]
    assert summary["phase_transition"]["paper"] == {"rho": 0.908, "n": 155}
    (group,) = summary["phase_transition"]["groups"]                 # one model, one benchmark
    assert group["correlation"]["n"] > 0 and group["phase"] == summary["phase"]


def _text(page: str) -> str:
    """The page's visible text, in order (no style, script, tags or attributes)."""
    import html as html_lib

    page = re.sub(r"<(style|script)>.*?</\1>", " ", page, flags=re.S)
    return html_lib.unescape(re.sub(r"<[^>]+>", " ", page))


def test_the_page_opens_with_a_plain_summary_of_what_was_measured_and_found(page_dir, rows):
    rows, _ = rows
    text = " ".join(_text((page_dir / "index.html").read_text()).split())
    start = text.index("Summary What was measured")
    assert start < text.index("Symbols and words") < text.index("Memory law: objective.name=sft")
    summary = text[start:text.index("Symbols and words")]
    em_all = sum(r["em_rate"] == 1.0 for r in rows)
    certified = sum(r["certified_rate"] == 1.0 for r in rows)
    assert (f"What was measured: 16 memories, each a set of key → value records (from a records file) trained into a "
            f"small adapter (probe) of the frozen model tiny, with adapter ranks (sizes) 2 to 8 and memories of 24 to "
            f"48 value tokens.") in summary
    for objective in ("sft", "memft-ot"):                        # one budget line and one finding per experiment
        assert (f"Training budget (objective.name={objective}): objective {objective}, 100 optimizer steps of batches "
                "of 8 at learning rate 0.03, for the whole budget.") in summary
        assert f"Main finding (objective.name={objective})" in summary
    assert (f"Exact recall: {em_all} of 16 memories came back exactly, every record. {certified} were certified: every "
            "answer token had probability above one half, which guarantees exact recall.") in summary


def test_every_symbol_is_defined_before_its_first_use(page_dir):
    from memlaw.report.summary import SYMBOLS

    text = _text((page_dir / "index.html").read_text())
    glossary = text.index("Symbols and words")
    for entry in SYMBOLS:
        for symbol in entry.split(", "):
            if (len(symbol) == 1 and symbol.isascii()) or symbol.islower():   # r, C, b, K; words ("certified")
                continue                                                      # are defined where the summary uses them
            first = re.search(rf"(?<!\w){re.escape(symbol)}(?!\w)", text).start()
            defined = text.index(f"{entry}:", glossary)
            assert glossary < first <= defined, (symbol, text[first - 80:first + 40])


def test_warnings_sit_beside_the_numbers_they_qualify():
    """Held-out MAPE over 10% (by rank, and by length) gets its warning in its own table cell; a law that
    predicts well gets none."""
    from memlaw.law import law
    from memlaw.report.html import table_html
    from memlaw.report.sections import law_section

    def cells(noise):
        rng = np.random.default_rng(0)
        return [{"status": "done", "model": "m", "kind": "probe", "objective": "sft", "benchmark": "phonebook",
                 "rank": r, "length": n, "em_rate": 1.0 if n <= 10 * r else 0.0, "L_final": 1.0,
                 "delta_loss": float(law(r, n, 3.0, 0.5, 0.2, 0.1)) * (1 + noise * rng.standard_normal())}
                for r in (1, 2, 4, 8, 16, 32) for n in (20, 40, 80, 160)]

    for noise, warned in ((0.0, False), (0.6, True)):
        [experiment] = experiments.group(cells(noise))          # rows without a config: one experiment
        sec, fit = law_section(experiment)
        ho = fit["fit"]["held_out"]["mape"]
        assert (ho > 10) is warned
        table = table_html(sec.tables[0])
        row = re.search(r"<tr><td>held-out MAPE.*?</tr>", table).group()
        assert ('class="warn"' in row and "above 10%: the law does not predict the larger ranks well" in row) is warned
        held_out = [h for f in fit["fit"]["forms"].values() for h in f["held_out"].values() if h]
        assert table.count("above 10%") == sum(h["mape"] > 10 for h in held_out)   # beside each, nowhere else


def test_secret_values_never_reach_the_store_or_any_report(store_path, rows, tmp_path):
    assert SECRET.encode() not in store_path.read_bytes()
    rows, probs = rows
    with open_store(store_path, create=False) as store:
        failed = store.load_cells(status="failed")
    for redact in (False, True):
        rep = build_report(rows, probs, failed=failed, redact=redact)
        text = html.page(rep, {f.name: b"" for f in rep.figures}) + json.dumps(rep.summary)   # no rendering
        assert SECRET not in text
        assert (ERROR_SECRET in text) is (not redact)
        assert ("Redacted" in text) is redact
    res = runner.invoke(app, ["report", "--store", str(store_path), "--out", str(tmp_path / "cli"), "--redact",
                              "--no-svg"])
    assert res.exit_code == 0, res.output
    assert SECRET not in (tmp_path / "cli" / "index.html").read_text()
    assert not list((tmp_path / "cli" / "figures").glob("*.svg"))


def test_report_errors_are_one_line(tmp_path, store_path):
    res = runner.invoke(app, ["report", "--store", str(tmp_path / "none.db"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "no such store" in res.output
    res = runner.invoke(app, ["report", "--store", str(store_path), "--out", str(tmp_path / "o"),
                              "--where", "rank>=100"])
    assert res.exit_code == 2 and "no finished cells" in res.output
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- headless Chromium

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian chromium (`make chromium` installs it)")
def test_chromium_loads_every_image_and_shows_the_tables(page_dir, tmp_path):
    url = (page_dir / "index.html").resolve().as_uri()
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
                          "--window-size=1280,800", "--dump-dom", url], capture_output=True, text=True,
                         timeout=120).stdout
    body = re.search(r"<body[^>]*>", dom)
    assert body, dom[-2000:]
    attr = lambda name: int(re.search(rf'data-{name}="(-?\d+)"', body.group()).group(1))  # noqa: E731
    n, loaded = attr("images"), attr("images-loaded")
    assert n >= 8 and loaded == n                          # every <img> decoded (naturalWidth > 0)
    assert attr("tables-scrolling") >= 1 and attr("page-overflow") <= 0   # the wide cells table scrolls in its box
    summary = re.search(r'<section id="summary">(.*?)</section>', dom, re.S).group(1)
    assert dom.index('id="summary"') < dom.index("<nav>")  # the page opens with it
    assert "What was measured: 16 memories" in summary and "100 optimizer steps of batches of 8" in summary
    for table in ("rho-table", "phase-table", "misalignment-table", "cells-table", "methods-tiny--probe--records"):
        assert re.search(rf'<table id="{table}">.*?<td>', dom, re.S), table
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile2'}", "--window-size=1280,3000",
                    "--virtual-time-budget=5000", f"--screenshot={shot}", url], capture_output=True, timeout=120)
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1280, 3000)
        assert len(set(np.asarray(im.convert("L").resize((64, 150))).ravel().tolist())) > 20   # not blank


def test_grid_picks_read_each_cell_margin():
    """A record whose p_t end in (0.5, 0.5 + margin] is certified late without a margin, not certified with it."""
    from memlaw.report.sections import _grid_picks

    probs = [(10, 0, [0.3, 0.9]), (20, 0, [0.55, 0.9]), (30, 0, [0.56, 0.95])]
    row = {"key": "k", "rank": 1, "length": 2, "metrics": {"records": {"first_failure": [None]}}}
    plain = _grid_picks([row], {"k": probs})
    strict = _grid_picks([{**row, "config": {"train": {"margin": 0.1}}}], {"k": probs})
    assert [why for _, _, why in plain] == ["certified late"]
    assert [why for _, _, why in strict] == ["not certified at the end"]
