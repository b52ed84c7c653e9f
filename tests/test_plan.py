"""Planning from law rows, without a model: group checks, frontier vs law, extrapolation flags."""

import pytest

from memlaw.errors import ConfigError
from memlaw.law import law
from memlaw.fitting import law_rows
from memlaw.plan import plan


def rows(ranks=(1, 2, 4, 8), lengths=(20, 40, 60, 80), full=lambda r, length: length <= 10 * r):
    return [{"rank": r, "length": length, "delta_loss": float(law(r, length, 3.0, 0.5, 0.2, 0.1)),
             "em": 1.0 if full(r, length) else 0.3, "L_final": 0.1 if full(r, length) else 1.0}
            for r in ranks for length in lengths]


def test_law_rows_refuse_mixed_experiments_and_empty_input():
    from memlaw.sweep import sweep_from_dict

    grid = sweep_from_dict({"name": "g", "model": "m", "ranks": [1], "lengths": [10], "train": {"max_steps": 5},
                            "objectives": [{"name": "sft"}, {"name": "memft-ot"}]})
    sft, ot = (c.to_dict() for c in grid.cells())
    base = {"status": "done", "model": "m", "kind": "probe", "objective": "sft", "benchmark": "phonebook",
            "rank": 1, "length": 10, "delta_loss": 1.0, "em_rate": 1.0, "L_final": 0.1, "config": sft}
    assert law_rows([base]) == [{"rank": 1, "length": 10, "delta_loss": 1.0, "em": 1.0, "certified": None,
                                 "L_final": 0.1}]
    with pytest.raises(ConfigError, match="mix 2 experiments .they differ in objective.name.*--where"):
        law_rows([base, {**base, "objective": "memft-ot", "config": ot}])
    with pytest.raises(ConfigError, match="no finished cells"):
        law_rows([{**base, "delta_loss": None}])


def test_a_measured_rank_is_the_answer_and_the_frontier_and_law_qualify_it():
    p = plan(50, rows(), L_base=2.0)
    assert p.rank_source == "measured" and p.rank == 8 and p.measured_rank == 8    # rank 8 held ℓ = 60, 80
    assert p.frontier_rank == pytest.approx(5.0) and p.extrapolating == [] and p.extrapolation == {}
    assert p.predicted_delta_loss == pytest.approx(float(law(8, 50, 3.0, 0.5, 0.2, 0.1)), rel=1e-4)
    assert p.needed_delta_loss == pytest.approx(1.9) and p.margin == pytest.approx(p.predicted_delta_loss - 1.9)
    assert p.capacity == pytest.approx(80.0, rel=1e-6) and p.capacity_margin == pytest.approx(80 / 50 - 1, rel=1e-6)
    assert p.law_rank == pytest.approx(((1.9 - 0.1) / (3.0 * 50**-0.2)) ** 2, rel=1e-3)
    assert p.law_form == "paper" and p.law_formula == "ΔL = C·r^α·ℓ^(−β) + b"


def test_without_a_measured_rank_the_frontier_answers_and_flags_how_far():
    p = plan(95, rows(), L_base=2.0)                  # no cell held ℓ >= 95; frontier ℓ_max = 10·r
    assert p.rank_source == "frontier" and p.rank == 10 and p.measured_rank is None
    assert p.extrapolation == {"length": pytest.approx(95 / 80), "rank": pytest.approx(10 / 8)}
    assert p.extrapolating == ["ℓ = 95 is 1.2× the largest measured length (80)",
                               "rank 10 is 1.2× the largest measured rank (8)"]


def test_cells_that_recalled_but_did_not_certify_are_not_evidence():
    uncertified = [{**x, "certified": 0.5} for x in rows()]
    assert plan(50, uncertified, L_base=2.0).rank_source == "frontier"


def test_without_a_frontier_the_law_answers():
    p = plan(50, rows(full=lambda r, length: False), L_base=2.0)
    assert p.rank_source == "law" and p.frontier is None and any("no frontier" in n for n in p.notes)
    assert p.rank == int(-(-p.law_rank // 1))


def test_extrapolation_is_flagged_for_length_and_rank():
    p = plan(400, rows(), L_base=2.0)
    assert p.rank == 40
    assert any("ℓ = 400 is 5× the largest measured length" in e for e in p.extrapolating)
    assert any("rank 40 is 5× the largest measured rank" in e for e in p.extrapolating)
    assert p.measured_rank is None


def test_plan_is_strict_json_and_quiet_on_a_degenerate_grid():
    """A flat grid: the law does not depend on rank (rank_for = inf) and nothing recalled: no NaN/inf leaks."""
    import json
    import warnings

    flat = [{**x, "delta_loss": 1.0, "em": 0.0} for x in rows()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")                # no numpy overflow or fit warning escapes plan()
        p = plan(50, flat, L_base=2.0)
    text = json.dumps(p.to_dict(), allow_nan=False)   # raises on NaN or Infinity
    assert p.rank is None and json.loads(text)["frontier_rank"] is None


def test_unknown_law_form_is_refused():
    with pytest.raises(ConfigError, match="law form must be one of paper"):
        plan(50, rows(), law="bounded-typo")


LORA_SETTINGS = {"model": "smollm2-135m", "dtype": "auto", "adapter.kind": "lora", "adapter.lora_alpha": None,
                 "adapter.lora_targets": "all-linear", "adapter.lora_layers": None, "adapter.dropout": None,
                 "objective.name": "sft", "train.lr": 0.002, "train.batch_size": 16, "train.max_steps": 300,
                 "train.epochs": None, "train.clip": 1.0, "train.until": "budget", "prompt.template": "chat"}


def test_a_lora_plan_prints_the_write_command_and_peft_and_axolotl_configs():
    import json

    import yaml

    p = plan(50, rows(), L_base=2.0)
    p.settings = LORA_SETTINGS
    assert p.config("memlaw", "mem.jsonl", "out") == (
        "memlaw write mem.jsonl --out out --model smollm2-135m --dtype auto --adapter lora --rank 8 --objective sft "
        "--max-steps 300 --lr 0.002 --batch-size 16 --template chat --until certified")
    peft = json.loads(p.config("peft"))
    assert peft["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert peft["lora_config"] == {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear",
                                   "layers_to_transform": None, "bias": "none", "task_type": "CAUSAL_LM"}
    assert peft["training_arguments"] == {
        "learning_rate": 0.002, "lr_scheduler_type": "linear", "warmup_steps": 0, "weight_decay": 0.0,
        "max_grad_norm": 1.0, "optim": "adamw_torch", "per_device_train_batch_size": 16,
        "gradient_accumulation_steps": 1, "max_steps": 300}
    ax = yaml.safe_load(p.config("axolotl", "mem.jsonl"))
    assert (ax["base_model"], ax["adapter"], ax["lora_r"], ax["lora_alpha"], ax["lora_target_linear"]) == \
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "lora", 8, 16, True)
    assert (ax["learning_rate"], ax["max_steps"], ax["micro_batch_size"], ax["lr_scheduler"], ax["warmup_steps"]) == \
        (0.002, 300, 16, "linear", 0)
    assert ax["datasets"][0]["path"] == "mem.jsonl" and ax["train_on_inputs"] is False


def test_peft_and_axolotl_configs_are_for_lora_plans_only():
    p = plan(50, rows(), L_base=2.0)
    p.settings = {**LORA_SETTINGS, "adapter.kind": "probe"}
    for fmt in ("peft", "axolotl"):
        with pytest.raises(ConfigError, match="writes a LoRA config"):
            p.config(fmt)
    with pytest.raises(ConfigError, match="format must be one of memlaw, peft, axolotl"):
        p.config("json")


GUIDE_CELLS = [  # the 4 cells of docs/guide.md's SmolLM2 sweep (results/guide/run.txt), ΔL and L_final rounded
    {"rank": 1, "length": 20, "delta_loss": 3.6408, "em": 1.0, "certified": 0.5, "L_final": 0.0795, "L_base": 3.7203},
    {"rank": 4, "length": 20, "delta_loss": 3.7192, "em": 1.0, "certified": 1.0, "L_final": 0.0010, "L_base": 3.7203},
    {"rank": 1, "length": 40, "delta_loss": 3.3002, "em": 0.25, "certified": 0.0, "L_final": 0.4980, "L_base": 3.7981},
    {"rank": 4, "length": 40, "delta_loss": 3.7752, "em": 1.0, "certified": 1.0, "L_final": 0.0229, "L_base": 3.7981}]


def test_a_form_that_did_not_converge_is_not_chosen_and_the_plan_says_why(capsys):
    from memlaw.cli.plan import _print_plan

    p = plan(160, GUIDE_CELLS, n_records=16, L_base=3.808)     # the paper's form with a free b diverges here
    scores, converged = p.law_choice["held_out_mape"], p.law_choice["converged"]
    assert converged == {"paper": False, "bounded": True} and scores["paper"] < scores["bounded"]
    assert p.law_form == "bounded"                              # the lower score, but from a fit that diverged
    assert len(p.notes) == len(set(p.notes)) and not any("did not converge" in n for n in p.notes)  # bounded did
    assert any(n.startswith("memory-law fit") and "did not converge" in n for n in p.law_choice["notes"])
    p.settings = {}
    _print_plan(p, "smollm2-135m", "probe", None, "memlaw")
    chosen = next(line for line in capsys.readouterr().out.splitlines() if "chosen for" in line)
    assert f"paper {scores['paper']:.2f}% (did not converge)" in chosen
    assert chosen.endswith(f"bounded {scores['bounded']:.2f}%")             # no mark on the converged form
    fixed = plan(160, GUIDE_CELLS, n_records=16, L_base=3.808, fix_b=True)   # b = 0: it converges and is chosen
    assert fixed.law_choice["converged"] == {"paper": True, "bounded": True} and fixed.law_form == "paper"


def test_notes_are_about_the_law_used_and_the_compared_fits_are_labelled(capsys):
    """The held-out fits (2 cells each on this 2×2 grid) and the form not used warn of themselves: those
    warnings sit in law_choice["notes"] under their own heading, not among the notes on the law used."""
    from memlaw.cli.plan import _print_plan

    held_out = "only n=2 points"                                  # a held-out fit trains on one rank or length
    for p in (plan(160, GUIDE_CELLS, n_records=16, L_base=3.808),
              plan(160, GUIDE_CELLS, n_records=16, L_base=3.808, fix_b=True)):
        assert not any(held_out in n for n in p.notes), p.notes
        assert sum(held_out in n for n in p.law_choice["notes"]) == 4          # 2 forms × by rank, by length
        assert not set(p.notes) & set(p.law_choice["notes"])
        used = "bounded-law fit" if p.law_form == "bounded" else "memory-law fit"
        assert all(n.startswith((used, "frontier")) for n in p.notes), p.notes
        p.settings = {}
        _print_plan(p, "smollm2-135m", "probe", None, "memlaw")
        lines = capsys.readouterr().out.splitlines()
        heading = next(i for i, line in enumerate(lines) if line.startswith("  warnings of the fits compared"))
        labelled = lines[heading + 1:heading + 1 + len(p.law_choice["notes"])]
        assert [line.strip() for line in labelled] == p.law_choice["notes"]
        assert not any(held_out in line for line in lines if line.startswith("note:"))
    given = plan(160, GUIDE_CELLS, n_records=16, L_base=3.808, law="paper")      # no choice, no compared fits
    assert given.law_choice == {} and not any(held_out in n for n in given.notes)
    assert any("did not converge" in n for n in given.notes)                      # now it is the law used
