import pytest

from memlaw.config import PromptConfig
from memlaw.encode import collate, encode, prompt_ids, resolve_prompt, terminator_ids
from memlaw.errors import ConfigError, RecordError
from memlaw.records import Record


def test_chat_prompt_has_one_bos_and_generation_prompt(tiny_base):
    tok = tiny_base.tokenizer
    p = resolve_prompt(PromptConfig(), tok)
    assert p.template == "chat"
    ids = prompt_ids("Jerry Becerra:", tok, p)
    assert ids.count(tok.bos_token_id) == 3  # system, user, assistant turns each open with <|im_start|>
    assert ids[0] == tok.bos_token_id
    text = tok.decode(ids)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "Jerry Becerra:<|im_end|>\n<|im_start|>assistant\n")


def test_terminator_is_end_of_turn_for_chat_and_eos_for_plain(tiny_base):
    tok = tiny_base.tokenizer
    chat = terminator_ids(tok, resolve_prompt(PromptConfig(), tok))
    assert tok.decode(chat) == "<|im_end|>\n"
    assert terminator_ids(tok, PromptConfig(template="plain")) == [tok.eos_token_id]


def test_plain_prompt_is_the_formatted_key(tiny_base):
    tok = tiny_base.tokenizer
    ids = prompt_ids("abc", tok, PromptConfig(template="plain", format="Q: {key} A:"))
    assert tok.decode(ids) == "Q: abc A:"


def test_encode_lengths_and_answer(tiny_base, tiny_records):
    enc = encode(tiny_records, tiny_base.tokenizer, PromptConfig())
    assert enc.length == sum(len(r.value.encode()) for r in tiny_records)  # byte-level: one token a byte
    assert enc.terminator_tokens == 2 * len(tiny_records)
    assert enc.answer_ids(0) == enc.value_ids[0] + enc.terminator


def test_collate_positions_predict_targets(tiny_base, tiny_records):
    enc = encode(tiny_records, tiny_base.tokenizer, PromptConfig())
    batch = collate(enc, [3, 0, 5], pad_id=tiny_base.tokenizer.pad_token_id)
    for b, i in enumerate([3, 0, 5]):
        ans = enc.answer_ids(i)
        assert batch.mask[b].sum() == len(ans)
        for t in range(len(ans)):
            # the token after the predicting position is the target (teacher forcing)
            assert batch.input_ids[b, batch.positions[b, t] + 1] == batch.targets[b, t] == ans[t]


class _LossyTokenizer:
    """Wraps a tokenizer so that decode drops a character: values cannot round-trip."""

    def __init__(self, tok):
        self.tok = tok

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def __call__(self, *a, **k):
        return self.tok(*a, **k)

    def decode(self, ids, **k):
        return self.tok.decode(ids, **k)[:-1]


def test_round_trip_failure_names_place_not_value(tiny_base):
    recs = [Record("k", "s3cret-value", where="mem.jsonl:7")]
    with pytest.raises(RecordError) as e:
        encode(recs, _LossyTokenizer(tiny_base.tokenizer), PromptConfig(template="plain"))
    assert str(e.value).startswith("mem.jsonl:7: ")
    assert "s3cret" not in str(e.value)


def test_special_token_in_value_rejected(tiny_base):
    recs = [Record("k", "a<|im_end|>b", where="f.jsonl:2")]
    with pytest.raises(RecordError, match=r"f\.jsonl:2: .*special token"):
        encode(recs, tiny_base.tokenizer, PromptConfig())


def test_too_long_record_rejected(tiny_base):
    recs = [Record("k", "x" * 600, where="f.jsonl:1")]
    with pytest.raises(RecordError, match=r"f\.jsonl:1: .*more than the model's context of 512"):
        encode(recs, tiny_base.tokenizer, PromptConfig(), max_length=tiny_base.context_length)


def test_chat_without_template_is_a_config_error(tiny_base):
    class NoTemplate(_LossyTokenizer):
        chat_template = None

        def decode(self, ids, **k):
            return self.tok.decode(ids, **k)

    with pytest.raises(ConfigError):
        resolve_prompt(PromptConfig(template="chat"), NoTemplate(tiny_base.tokenizer))
    assert resolve_prompt(PromptConfig(), NoTemplate(tiny_base.tokenizer)).template == "plain"
