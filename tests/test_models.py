import json
import subprocess
import sys
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer

from memlaw import models
from memlaw.errors import ModelError
from memlaw.models import (EMBEDDED, FINGERPRINT_FILE, build_tiny, cache_root, ensure_cached, load_base, load_gguf,
                           model_fingerprint, resolve_dtype)

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


@pytest.fixture(scope="module")
def tiny():
    return load_base("tiny", dtype="fp32")


# ---- tiny model and tokenizer ----

def test_tiny_is_deterministic_for_seed_and_leaves_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, _ = build_tiny(0)
    assert torch.equal(torch.rand(3), expected)            # build_tiny forks the RNG
    b, _ = build_tiny(0)
    c, _ = build_tiny(1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_tiny_base_model_facts(tiny):
    assert (tiny.family, tiny.n_layers, tiny.hidden_size, tiny.context_length) == ("llama", 4, 64, 512)
    assert tiny.dtype == torch.float32 and tiny.device == torch.device("cpu")
    assert not tiny.model.training
    assert not any(p.requires_grad for p in tiny.model.parameters())
    assert all(p.dtype == torch.float32 for p in tiny.model.parameters())
    assert tiny.layers is tiny.model.model.layers
    tok, gen = tiny.tokenizer, tiny.model.generation_config
    assert tiny.model.config.vocab_size == len(tok) == 259
    assert (gen.bos_token_id, gen.eos_token_id, gen.pad_token_id) == (tok.bos_token_id, tok.eos_token_id,
                                                                      tok.pad_token_id)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|pad|>")


def test_tiny_bf16_load():
    base = load_base("tiny", dtype="bf16")
    assert base.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in base.model.parameters())


@pytest.mark.parametrize("text", ["", "0123456789", "  two  spaces ", "line\n\nbreaks\r\n\ttab", "emoji 🎉👩‍👩‍👧 ok",
                                  "ünïcödé 中文 עברית", "<|im_end|> looks special"])
def test_tiny_tokenizer_round_trips(tiny, text):
    ids = tiny.tokenizer.encode(text, add_special_tokens=False)
    assert tiny.tokenizer.decode(ids) == text


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_tiny_tokenizer_round_trips_any_unicode(text):
    tok = models.build_tiny_tokenizer()
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    if "<|" not in text:                                    # plain text: one token per UTF-8 byte
        assert ids == list(text.encode("utf-8"))


def test_tiny_chat_template_has_one_bos_at_start(tiny):
    tok = tiny.tokenizer
    messages = [SYSTEM, {"role": "user", "content": "key 42"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\nkey 42<|im_end|>\n<|im_start|>assistant\n")
    ids = tok(text, add_special_tokens=True).input_ids      # the tokenizer adds no BOS of its own
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    assert ids.count(tok.bos_token_id) == len(messages) + 1  # one per turn, the first one is the BOS
    assert tok.decode(ids) == text


# ---- fingerprint, dtype, names, cache ----

def test_fingerprint_ignores_dtype_and_tells_weights_apart():
    a, _ = build_tiny(0)
    fp = model_fingerprint(a)
    assert len(fp) == 64 and fp == model_fingerprint(build_tiny(0)[0])
    assert model_fingerprint(a.to(torch.bfloat16)) == fp
    assert model_fingerprint(build_tiny(1)[0]) != fp
    assert load_base("tiny", dtype="bf16").fingerprint == load_base("tiny", dtype="fp32").fingerprint == fp


@pytest.mark.parametrize("spec, expected", [("bf16", torch.bfloat16), ("bfloat16", torch.bfloat16),
                                            ("BF16", torch.bfloat16), ("fp32", torch.float32),
                                            ("float32", torch.float32), ("torch.float32", torch.float32),
                                            (torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32)])
def test_resolve_dtype_names(spec, expected):
    assert resolve_dtype(spec) == expected


@pytest.mark.parametrize("fast", [True, False])
def test_resolve_dtype_auto_follows_cpu_flags(monkeypatch, fast):
    monkeypatch.setattr(models, "_cpu_has_fast_bf16", lambda: fast)
    assert resolve_dtype("auto", "cpu") == (torch.bfloat16 if fast else torch.float32)


@pytest.mark.parametrize("bad", ["fp16", "int8", torch.float16])
def test_resolve_dtype_rejects(bad):
    with pytest.raises(ModelError, match="float32|fp32"):
        resolve_dtype(bad)


def test_unknown_model_name_raises_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as info:
        load_base("smollm2-13m")
    msg = str(info.value)
    assert "\n" not in msg
    assert "'smollm2-13m'" in msg and all(name in msg for name in EMBEDDED)
    assert "did you mean 'smollm2-135m'" in msg


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("MEMLAW_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("MEMLAW_CACHE")
    assert cache_root().name == "memlaw"


def test_cache_builds_once_atomically_and_loads_plainly(monkeypatch, tmp_path):
    calls = []

    def fake_gguf(name, workdir):                           # the tiny model stands in for the GGUF
        calls.append(name)
        return build_tiny(0)

    monkeypatch.setattr(models, "load_gguf", fake_gguf)
    target = tmp_path / "models" / "smollm2-135m"
    target.mkdir(parents=True)                              # a torn cache: no fingerprint file
    (target / "config.json").write_text("{}")
    assert ensure_cached("smollm2-135m", tmp_path) == target
    assert ensure_cached("smollm2-135m", tmp_path) == target
    assert calls == ["smollm2-135m"]
    record = json.loads((target / FINGERPRINT_FILE).read_text())
    assert record["fingerprint"] == model_fingerprint(build_tiny(0)[0])
    assert AutoTokenizer.from_pretrained(target).chat_template == models.CHATML_TEMPLATE
    plain = AutoModelForCausalLM.from_pretrained(target)
    assert model_fingerprint(plain) == record["fingerprint"]
    base = load_base("smollm2-135m", dtype="fp32", cache_dir=tmp_path)
    assert base.fingerprint == record["fingerprint"] and base.name == "smollm2-135m"
    assert sorted(p.name for p in target.parent.iterdir()) == [".smollm2-135m.lock", "smollm2-135m"]


def test_failed_build_leaves_no_cache(monkeypatch, tmp_path):
    def broken_gguf(name, workdir):
        raise ModelError("GGUF file is missing")

    monkeypatch.setattr(models, "load_gguf", broken_gguf)
    with pytest.raises(ModelError, match="missing"):
        ensure_cached("gemma3-270m", tmp_path)
    assert [p.name for p in (tmp_path / "models").iterdir()] == [".gemma3-270m.lock"]


# ---- the embedded SmolLM2 (slow) ----

@pytest.fixture(scope="module")
def smollm2_dir():
    return ensure_cached("smollm2-135m")


@pytest.mark.slow
def test_smollm2_loads_from_cache_with_stable_fingerprint(smollm2_dir):
    start = time.perf_counter()
    a = load_base("smollm2-135m", dtype="fp32")
    assert time.perf_counter() - start < 30
    b = load_base("smollm2-135m", dtype="bf16")
    assert a.fingerprint == b.fingerprint == model_fingerprint(a.model) == model_fingerprint(b.model)
    assert a.fingerprint == json.loads((smollm2_dir / FINGERPRINT_FILE).read_text())["fingerprint"]
    assert (a.family, a.n_layers, a.hidden_size, a.context_length) == ("llama", 30, 576, 8192)
    assert a.model.lm_head.weight.data_ptr() == a.model.model.embed_tokens.weight.data_ptr()   # still tied
    assert a.tokenizer.chat_template and a.tokenizer.pad_token is not None


@pytest.mark.slow
def test_smollm2_cache_loads_without_memlaw(smollm2_dir):
    script = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"d = {str(smollm2_dir)!r}\n"
        "tok = AutoTokenizer.from_pretrained(d)\n"
        "model = AutoModelForCausalLM.from_pretrained(d)\n"
        "assert tok.chat_template and '<|im_start|>' in tok.chat_template\n"
        "assert 'memlaw' not in sys.modules\n"
        "ids = tok.apply_chat_template([{'role': 'user', 'content': 'hi'}], add_generation_prompt=True,"
        " return_tensors='pt', return_dict=True)\n"
        "print(model.config.model_type, model(**ids).logits.shape[-1])\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["llama", "49152"]


@pytest.mark.slow
def test_smollm2_cached_logits_match_gguf(smollm2_dir, tmp_path):
    gguf_model, tok = load_gguf("smollm2-135m", tmp_path)
    cached = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    ids = tok("The capital of France is Paris. 12345 🎉", return_tensors="pt").input_ids
    with torch.no_grad():
        want, got = gguf_model(ids).logits, cached(ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
