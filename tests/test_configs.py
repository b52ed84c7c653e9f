"""Every shipped grid loads, expands and dry-runs without a model; configs/paper/ holds the paper's grids.

The paper's numbers below are typed from reference_method.md (§2.2 hyper-parameter tables, the
"Resulting optimizer steps" of SFT/OT and the MemFT-SW step table, §8.3 sweep grids), not derived
from the configs.
"""

import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memlaw.cli import app
from memlaw.flops import SHAPES
from memlaw.sweep import load_sweep

ROOT = Path(__file__).resolve().parents[1] / "configs"
ALL = sorted([*ROOT.glob("*.yaml"), *(ROOT / "paper").glob("*.yaml")])
PAPER = sorted((ROOT / "paper").glob("*.yaml"))
QWEN, LLAMA = "Qwen/Qwen3-8B", "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model, its cache or its tokenizer fails the test."""
    import transformers

    import memlaw.models

    def refuse(*a, **k):
        raise AssertionError("a dry run loaded a model")

    for name in ("load_base", "ensure_cached", "load_gguf"):
        monkeypatch.setattr(memlaw.models, name, refuse)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_config_loads_expands_and_dry_runs_without_a_model(path, tmp_path, no_model):
    cfg = load_sweep(path)
    cells = cfg.cells()
    assert cells and len({c.key for c in cells}) == len(cells)
    res = CliRunner().invoke(app, ["sweep", str(path), "--dry-run", "--json", "--store", str(tmp_path / "s.db")])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["n_cells"] == len(cells) == len(out["cells"]) and out["n_stored"] == 0
    assert [c["key"] for c in out["cells"]] == [c.key for c in cells]
    assert cfg.model in SHAPES and out["cost"]["flops"] > 0 and out["cost"]["seconds"] > 0
    assert "40% of an H100" in out["cost"]["assumption"]
    assert not (tmp_path / "s.db").exists()                       # a dry run writes nothing


def test_the_dry_run_table_and_its_cost_line(tmp_path, no_model):
    res = CliRunner().invoke(app, ["sweep", str(ROOT / "paper" / "qwen3-8b-phonebook-b16.yaml"), "--dry-run",
                                   "--store", str(tmp_path / "s.db")])
    assert res.exit_code == 0, res.output
    assert "14 cells, 0 stored" in res.stdout and "cost of the 14 cells to run" in res.stdout
    assert "not a measurement" in res.stdout


# ---------------------------------------------------------------- the paper's grids


def paper_cells(model: str) -> list:
    return [c for p in PAPER for c in load_sweep(p).cells() if c.model == model]


@pytest.mark.parametrize("model, sizes", [
    (QWEN, {("phonebook", "sft"): 56, ("phonebook", "memft-ot"): 56, ("phonebook", "memft-sw-curriculum"): 56,
            ("long-context", "sft"): 13 * 16 + 5 * 13 * 9, ("long-context", "memft-ot"): 11 * 16,
            ("long-context", "memft-sw"): 11 * 16}),
    (LLAMA, {("phonebook", "sft"): 56, ("phonebook", "memft-ot"): 56, ("phonebook", "memft-sw-curriculum"): 56,
             ("long-context", "sft"): 11 * 16 + 5 * 13 * 9, ("long-context", "memft-ot"): 11 * 16,
             ("long-context", "memft-sw"): 11 * 16}),
])
def test_paper_grid_sizes(model, sizes):
    cells = paper_cells(model)
    assert Counter((c.benchmark.name, c.objective.name) for c in cells) == sizes
    assert len({c.key for c in cells}) == len(cells)                  # no cell in two files


PB_LENGTHS = [1000, 2000, 4000, 8000, 12000, 16000, 24000, 32000]
LC_LENGTHS = [50, 100, 200, 500, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 10000]
R100_RANKS = [1, 2, 4, 6, 8, 10, 12, 14, 16, 24, 32, 48, 64, 128, 256, 512]
# SFT / OT PhoneBook batch by length (lr 1e-2, 200 epochs, GA 1)
PB_BATCH = {QWEN: dict(zip(PB_LENGTHS, [4, 4, 4, 8, 8, 8, 8, 16])), LLAMA: dict(zip(PB_LENGTHS, [10] * 6 + [20] * 2))}
PB_STEPS = {QWEN: [5000, 10000, 20000, 20000, 30000, 40000, 60000, 40000],        # "Resulting optimizer steps"
            LLAMA: [5000, 10000, 20000, 40000, 60000, 80000, 60000, 80000]}
# MemFT-SW PhoneBook: (lr, batch, GA, total optimizer steps), §2.2 and its step table
SW = {QWEN: dict(zip(PB_LENGTHS, [(1e-2, 10, 1, 2600), (1e-2, 10, 1, 5200), (1e-2, 10, 1, 11600),
                                  (7e-3, 20, 2, 5800), (5e-3, 40, 2, 5700), (5e-3, 40, 2, 8800),
                                  (5e-3, 40, 2, 13200), (5e-3, 40, 2, 20000)])),
      LLAMA: dict(zip(PB_LENGTHS, [(1e-2, 25, 1, 2600), (1e-2, 25, 1, 6400), (7e-3, 50, 1, 6400),
                                   (5e-3, 50, 2, 8800), (5e-3, 50, 2, 15000), (5e-3, 50, 2, 20000),
                                   (3e-3, 50, 4, 15000), (3e-3, 50, 4, 22400)]))}
SW_FIRST_STAGE_EPOCHS = {QWEN: [20, 20, 30, 30, 60, 80, 80, 100], LLAMA: [20, 40, 40, 80, 100, 100, 100, 120]}


@pytest.mark.parametrize("model, layer, per", [(QWEN, 24, 10), (LLAMA, 18, 4)])
def test_paper_phonebook_hyper_parameters_by_length(model, layer, per):
    cells = [c for c in paper_cells(model) if c.benchmark.name == "phonebook"]
    assert {c.rank for c in cells} == {1, 2, 4, 8, 16, 32, 64} and {c.length for c in cells} == set(PB_LENGTHS)
    for c in cells:
        assert (c.adapter.kind, c.adapter.layer, c.dtype, c.seed) == ("probe", layer, "bfloat16", 42)
        n = c.length // per                                              # entries: Qwen 10, Llama 4 tokens a number
        i = PB_LENGTHS.index(c.length)
        if c.objective.name in ("sft", "memft-ot"):
            assert (c.train.lr, c.train.epochs, c.train.batch_size) == (0.01, 200, PB_BATCH[model][c.length])
            assert c.train.budget_steps(n) == PB_STEPS[model][i]
        else:
            lr, batch, ga, steps = SW[model][c.length]
            assert (c.train.lr, c.train.batch_size, c.train.max_steps) == (lr, batch * ga, steps)
            # stage 1: E_1 epochs of 20% of the entries in batches of `batch`, GA micro-batches a step
            first = SW_FIRST_STAGE_EPOCHS[model][i] * (n // 5 // batch) // ga
            assert c.objective.curriculum_boundaries[0] * steps == pytest.approx(first)
            assert c.objective.curriculum_ratios == (0.2, 0.4, 0.6, 0.8, 1.0)
            assert c.objective.curriculum_boundaries[-1] == 1.0


@pytest.mark.parametrize("model, layer, sft_r100_lengths", [(QWEN, 24, LC_LENGTHS), (LLAMA, 18, LC_LENGTHS[:11])])
def test_paper_long_context_grid(model, layer, sft_r100_lengths):
    cells = [c for c in paper_cells(model) if c.benchmark.name == "long-context"]
    for c in cells:
        assert (c.train.lr, c.train.batch_size, c.train.max_steps, c.train.until) == (0.01, 1, 2000, "budget")
        assert (c.adapter.layer, c.dtype, c.seed, c.benchmark.source) == (layer, "bfloat16", 42, "paper")
    by = {}
    for c in cells:
        by.setdefault((c.objective.name, c.benchmark.ratio), set()).add((c.rank, c.length))
    assert by["sft", "r100"] == {(r, n) for r in R100_RANKS for n in sft_r100_lengths}
    for ratio in ("r0", "r20", "r40", "r60", "r80"):
        assert by["sft", ratio] == {(r, n) for r in R100_RANKS[:9] for n in LC_LENGTHS}
    for objective in ("memft-ot", "memft-sw"):
        assert by[objective, "r100"] == {(r, n) for r in R100_RANKS for n in LC_LENGTHS[:11]}
