import json
import math
import subprocess
import sys

import pytest
import torch

from memlaw.adapters import load_adapter, make_adapter, read_meta, save_adapter
from memlaw.config import AdapterConfig, PromptConfig, TrainConfig
from memlaw.encode import encode
from memlaw.errors import AdapterError
from memlaw.forward import TeacherForcer
from memlaw.models import BaseModel, build_tiny, model_fingerprint
from memlaw.forward import answer_probs


def _logits(base, enc):
    return TeacherForcer(base, enc, plain=True).logits(list(range(len(enc))))[0]


@pytest.mark.parametrize("kind", ["probe", "lora"])
def test_fresh_adapter_leaves_base_unchanged_and_detach_restores(tiny_base, tiny_records, kind):
    enc = encode(tiny_records, tiny_base.tokenizer, PromptConfig())
    before = _logits(tiny_base, enc)
    ad = make_adapter(AdapterConfig(kind=kind, rank=4), tiny_base)
    ad.attach(tiny_base)
    ad.eval()
    torch.testing.assert_close(_logits(tiny_base, enc), before, atol=0, rtol=0)  # B = 0
    ad.detach()
    assert not any("lora" in n for n, _ in tiny_base.model.named_modules())
    torch.testing.assert_close(_logits(tiny_base, enc), before, atol=0, rtol=0)


def test_probe_shapes_init_and_parameter_count(tiny_base):
    r = 8
    ad = make_adapter(AdapterConfig(kind="probe", rank=r), tiny_base, seed=3)
    d = tiny_base.hidden_size
    assert ad.A.shape == (d, r) and ad.B.shape == (r, d)
    assert ad.n_params() == 2 * d * r
    assert ad.A.abs().max() <= 1 / math.sqrt(r) and ad.A.abs().max() > 0.8 / math.sqrt(r)
    assert torch.count_nonzero(ad.B) == 0
    assert ad.A.dtype == torch.float32
    same = make_adapter(AdapterConfig(kind="probe", rank=r), tiny_base, seed=3)
    assert torch.equal(ad.A, same.A)


def test_probe_default_layer_is_paper_relative_depth(tiny_base):
    ad = make_adapter(AdapterConfig(kind="probe", rank=2), tiny_base)
    assert ad.layer == round(4 * 18 / 32)


def test_probe_layer_out_of_range(tiny_base):
    with pytest.raises(AdapterError, match="layer 9 does not exist"):
        make_adapter(AdapterConfig(kind="probe", rank=2, layer=9), tiny_base)


def _trained(kind, base, tiny_records):
    enc = encode(tiny_records, base.tokenizer, PromptConfig())
    ad = make_adapter(AdapterConfig(kind=kind, rank=4, layer=1), base, seed=0)
    ad.attach(base)
    with torch.no_grad():
        for p in ad.parameters():
            p.normal_(0, 0.3)
    ad.eval()
    return enc, ad


@pytest.mark.parametrize("kind", ["probe", "lora"])
def test_save_load_round_trip_gives_same_p_t(tiny_base, tiny_records, tmp_path, kind):
    enc, ad = _trained(kind, tiny_base, tiny_records)
    before = answer_probs(TeacherForcer(tiny_base, enc, start_layer=ad.first_layer))
    save_adapter(tmp_path / "a", ad, tiny_base, prompt=enc.prompt, terminator=enc.terminator, records=tiny_records)
    ad.detach()
    meta = read_meta(tmp_path / "a")
    for key in ("kind", "rank", "base_model", "prompt", "terminator_ids", "dtype", "n_records", "records_sha256",
                "tensors_sha256"):
        assert key in meta
    assert meta["base_model"] == {"name": "tiny", "fingerprint": tiny_base.fingerprint, "family": "llama"}
    assert meta["prompt"]["template"] == "chat" and meta["n_records"] == len(tiny_records)
    assert (tmp_path / "a" / "records.jsonl").is_file()
    loaded, _ = load_adapter(tmp_path / "a", tiny_base)
    loaded.attach(tiny_base)
    loaded.eval()
    after = answer_probs(TeacherForcer(tiny_base, enc, start_layer=loaded.first_layer))
    loaded.detach()
    for i in before:
        torch.testing.assert_close(after[i].p, before[i].p, atol=0, rtol=0)


def test_probe_file_holds_A_and_B(tiny_base, tiny_records, tmp_path):
    from safetensors.torch import load_file

    enc, ad = _trained("probe", tiny_base, tiny_records)
    save_adapter(tmp_path / "a", ad, tiny_base, prompt=enc.prompt, terminator=enc.terminator, records=tiny_records,
                 save_records=False)
    ad.detach()
    t = load_file(str(tmp_path / "a" / "adapter.safetensors"))
    assert t["A"].shape == (64, 4) and t["B"].shape == (4, 64) and t["A"].dtype == torch.float32
    assert not (tmp_path / "a" / "records.jsonl").exists()
    assert read_meta(tmp_path / "a")["layer"] == 1


def test_refuses_other_base_and_tampering(tiny_base, tiny_records, tmp_path):
    enc, ad = _trained("probe", tiny_base, tiny_records)
    save_adapter(tmp_path / "a", ad, tiny_base, prompt=enc.prompt, terminator=enc.terminator, records=tiny_records)
    ad.detach()
    m, tok = build_tiny(seed=1)
    other = BaseModel(name="tiny", model=m, tokenizer=tok, fingerprint=model_fingerprint(m), dtype=torch.float32,
                      device=torch.device("cpu"), family="llama")
    with pytest.raises(AdapterError, match="refusing to load"):
        load_adapter(tmp_path / "a", other)
    f = tmp_path / "a" / "adapter.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    with pytest.raises(AdapterError, match="tampered"):
        load_adapter(tmp_path / "a", tiny_base)
    (tmp_path / "a" / "memlaw.json").write_text("{not json")
    with pytest.raises(AdapterError, match="not valid JSON"):
        load_adapter(tmp_path / "a", tiny_base)


def test_lora_dir_is_plain_peft(tiny_base, tiny_records, tmp_path):
    enc, ad = _trained("lora", tiny_base, tiny_records)
    save_adapter(tmp_path / "a", ad, tiny_base, prompt=enc.prompt, terminator=enc.terminator, records=tiny_records)
    want = _logits(tiny_base, enc)[0].tolist()
    ad.detach()
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["peft_type"] == "LORA"
    ids = encode(tiny_records, tiny_base.tokenizer, PromptConfig())
    seq = ids.prompt_ids[0] + ids.answer_ids(0)
    code = f"""
import sys, json, torch
from peft import PeftModel
from memlaw.models import build_tiny
m, _ = build_tiny(0)
m = PeftModel.from_pretrained(m, {str(tmp_path / 'a')!r}).eval()
with torch.no_grad():
    out = m(torch.tensor([{seq}])).logits[0]
print(json.dumps(out.tolist()))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    got = torch.tensor(json.loads(res.stdout.strip().splitlines()[-1]))
    P = len(ids.prompt_ids[0])
    pos = torch.arange(P - 1, P - 1 + len(ids.answer_ids(0)))
    torch.testing.assert_close(got[pos], torch.tensor(want), atol=1e-5, rtol=1e-5)


def test_adapter_kinds_come_from_the_config_literal():
    from memlaw.adapters import KINDS
    from memlaw.config import AdapterConfig, choices

    assert tuple(KINDS) == choices(AdapterConfig, "kind")


def _card_free_of(text: str, records) -> None:
    for r in records:
        assert r.value not in text and r.key not in text


@pytest.mark.parametrize("kind", ["probe", "lora"])
def test_model_card_says_what_the_adapter_holds_and_never_a_key_or_value(tiny_base, tiny_records, tmp_path, kind):
    from memlaw.memory import write_memory
    from memlaw.records import Record

    tiny_records = [Record(f"KEYNAME{c}", f"VALUE{c}{c}") for c in "abcdefgh"]     # findable in any text
    res = write_memory(tiny_records, model=tiny_base, out=tmp_path / "a", adapter=AdapterConfig(kind=kind, rank=4),
                       train=TrainConfig(until="budget", max_steps=3))
    card = (tmp_path / "a" / "README.md").read_text()
    s = res.verification.summary()
    assert f"# memlaw memory: 8 records in a {'PEFT LoRA' if kind == 'lora' else 'probe'} of rank 4 on tiny" in card
    assert f"- Certified: {s['certified']}/8 records. A record is certified when" in card and f"returned {s['em']}/8 values exactly" in card
    assert f"{s['length']} value tokens" in card and s["length"] == 8 * 7 and f"{s['n_params']:,} trainable parameters" in card
    assert f"library_name: {'peft' if kind == 'lora' else 'memlaw'}" in card
    _card_free_of(card, tiny_records)


def test_lora_names_the_hub_id_of_an_embedded_base_not_the_cache(tiny_base, tiny_records, tmp_path):
    """A base loaded as `smollm2-135m` (here the tiny weights under that name): the config and card name its hub id."""
    import dataclasses

    from memlaw.memory import write_memory

    as_embedded = dataclasses.replace(tiny_base, name="smollm2-135m")
    write_memory(tiny_records, model=as_embedded, out=tmp_path / "a", adapter=AdapterConfig(kind="lora", rank=2),
                 train=TrainConfig(until="budget", max_steps=1))
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    card = (tmp_path / "a" / "README.md").read_text()
    assert 'base_model: "HuggingFaceTB/SmolLM2-135M-Instruct"' in card and "certificate is not re-checked" in card


def test_a_copied_lora_dir_loads_with_plain_peft_onto_the_users_base_directory(tiny_records, tmp_path):
    """Base from the user's own directory: adapter_config.json names that directory; the copied adapter
    directory loads in a process that does not import memlaw and gives memlaw's logits."""
    import shutil

    from memlaw.memory import Memory, write_memory

    model, tok = build_tiny(seed=0)
    model.save_pretrained(tmp_path / "my-model")
    tok.save_pretrained(tmp_path / "my-model")
    write_memory(tiny_records, model=str(tmp_path / "my-model"), out=tmp_path / "a", dtype="float32",
                 adapter=AdapterConfig(kind="lora", rank=4), train=TrainConfig(until="budget", max_steps=20, lr=3e-2))
    copy = shutil.copytree(tmp_path / "a", tmp_path / "elsewhere" / "adapter")
    shutil.rmtree(tmp_path / "a")
    cfg = json.loads((copy / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str((tmp_path / "my-model").absolute())
    with Memory.open(copy) as mem:
        enc = encode(tiny_records, mem.base.tokenizer, mem.prompt)
        want = _logits(mem.base, enc)[0]
    seq = enc.prompt_ids[0] + enc.answer_ids(0)
    code = f"""
import json, sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
cfg = json.load(open({str(copy / 'adapter_config.json')!r}))
base = AutoModelForCausalLM.from_pretrained(cfg["base_model_name_or_path"], dtype=torch.float32)
m = PeftModel.from_pretrained(base, {str(copy)!r}).eval()
assert "memlaw" not in sys.modules
with torch.no_grad():
    print(json.dumps(m(torch.tensor([{seq}])).logits[0].tolist()))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    got = torch.tensor(json.loads(res.stdout.strip().splitlines()[-1]))
    P = len(enc.prompt_ids[0])
    pos = torch.arange(P - 1, P - 1 + len(enc.answer_ids(0)))
    torch.testing.assert_close(got[pos], want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(want, _base_logits(tmp_path / "my-model", enc)[0], atol=1e-3)   # the adapter acts


def _base_logits(directory, enc):
    from memlaw.models import load_base

    return _logits(load_base(str(directory), dtype="float32"), enc)
