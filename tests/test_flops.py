"""Cost before any model loads (memlaw.flops): shapes against real models and published sizes, FLOPs against torch's counter."""

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from memlaw.flops import SHAPES, adapter_params, assumed, cell_cost, grid_cost
from memlaw.models import build_tiny
from memlaw.sweep.grid import sweep_from_dict

PUBLISHED_PARAMS = {                  # model cards / safetensors totals, norms included (Shape.params leaves them out)
    "smollm2-135m": 134_515_008,
    "gemma3-270m": 268_098_176,
    "Qwen/Qwen3-8B": 8_190_735_360,
    "meta-llama/Llama-3.1-8B-Instruct": 8_030_261_248,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_shapes_give_the_published_parameter_counts(name):
    assert SHAPES[name].params == pytest.approx(PUBLISHED_PARAMS[name], rel=3e-4)   # Gemma-3: 55,936 norm weights


def test_tiny_shape_is_the_tiny_model():
    model, _ = build_tiny()
    s = SHAPES["tiny"]
    assert s.params == sum(p.numel() for n, p in model.named_parameters() if "norm" not in n)
    assert s.layer_params == sum(m.weight.numel() for m in model.model.layers[0].modules()
                                 if isinstance(m, torch.nn.Linear))


def test_forward_flops_match_torchs_counter():
    model, _ = build_tiny()
    model.config._attn_implementation = "eager"           # attention as bmm, which the counter sees
    s, T = SHAPES["tiny"], 37
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(torch.randint(0, 255, (1, T)))
    counts = {str(k): v for k, v in fc.get_flop_counts()["Global"].items()}
    assert counts["aten.mm"] == s.layers * 2 * s.layer_params * T + 2 * s.hidden * s.vocab * T
    # the counter runs full attention; memlaw counts the causal half
    causal = s.layers * (s.layer_forward(T) - 2 * s.layer_params * T)
    assert counts["aten.bmm"] == pytest.approx(2 * causal)


def _cell(**over):
    base = {"name": "t", "model": "Qwen/Qwen3-8B", "ranks": [4], "lengths": [1000],
            "benchmark": {"name": "long-context", "ratio": "r100"}, "train": {"batch_size": 1, "max_steps": 2000}}
    return sweep_from_dict({**base, **over}).cells()[0]


def test_a_long_context_probe_cell_counted_by_hand():
    cell, s = _cell(), SHAPES["Qwen/Qwen3-8B"]
    cost = cell_cost(cell, s, assumed())
    prompt, answer = 22 + 14, 1000 + 2                     # chat template + the question; ℓ + <|im_end|>\n
    T = prompt + answer
    layer = 2 * 192_937_984 * T + 2 * T * T * 32 * 128     # Qwen3-8B: a layer's linears, causal attention
    head = 2 * 4096 * 151_936 * answer
    forward_above = 12 * layer + head                      # the probe at layer 24 of 36
    step = 2 * forward_above
    expected = (2000 * step + (2000 // 10 + 1) * forward_above + (36 * layer + head) + 24 * layer
                + (36 * layer + head) * prompt / T)
    assert cost.steps == 2000 and cost.n_records == 1 and cost.n_params == 2 * 4096 * 4
    assert cost.flops == pytest.approx(expected, rel=1e-12)
    assert cost.decode_bytes == answer * 2 * s.params
    assert cost.seconds == pytest.approx(expected / (0.4 * 989e12) + answer * 2 * s.params / (0.4 * 3.35e12))


def test_phonebook_records_follow_the_tokenizers_digit_grouping():
    qwen = cell_cost(_cell(benchmark={"name": "phonebook"}, train={"batch_size": 8, "epochs": 200}),
                     SHAPES["Qwen/Qwen3-8B"], assumed())
    llama = cell_cost(_cell(model="meta-llama/Llama-3.1-8B-Instruct", benchmark={"name": "phonebook"},
                            train={"batch_size": 10, "epochs": 200}),
                      SHAPES["meta-llama/Llama-3.1-8B-Instruct"], assumed())
    assert qwen.n_records == 100 and qwen.steps == 200 * 13                      # ceil(100 / 8) = 13 batches an epoch
    assert llama.n_records == 250 and llama.steps == 200 * 25                   # the paper's 5,000 steps


def test_lora_parameters_and_every_layer():
    s = SHAPES["smollm2-135m"]
    lora = _cell(model="smollm2-135m", adapter={"kind": "lora", "lora_targets": ["q_proj", "v_proj"]})
    assert adapter_params(lora, s) == 30 * 4 * ((576 + 576) + (576 + 192))
    probe = _cell(model="smollm2-135m")
    assert cell_cost(lora, s, assumed()).flops > cell_cost(probe, s, assumed()).flops   # all 30 layers against 13


def test_unknown_models_and_records_files_say_what_cannot_be_estimated(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"key": "a", "value": "1"}\n')
    cells = sweep_from_dict({"name": "t", "model": "org/some-model", "ranks": [1], "lengths": [10],
                             "train": {"max_steps": 5}}).cells()
    g = grid_cost(cells)
    assert g.flops is None and "not in memlaw's table of shapes" in g.line(1)
    rec = _cell(model="tiny", benchmark={"name": "records", "path": str(path)})
    c = cell_cost(rec, SHAPES["tiny"], assumed())
    assert c.flops is None and "need the tokenizer" in c.unknown and c.n_params == 2 * 64 * 4


def test_grid_cost_sums_the_cells_to_run():
    cells = sweep_from_dict({"name": "t", "model": "tiny", "ranks": [1, 2], "lengths": [20, 40],
                             "train": {"max_steps": 5}}).cells()
    g = grid_cost(cells, {cells[0].key, cells[3].key})
    assert g.flops == pytest.approx(g.cells[0].flops + g.cells[3].flops)
    assert "40% of an H100" in g.line(2) and "not a measurement" in g.line(2)
    assert math.isfinite(g.seconds)
