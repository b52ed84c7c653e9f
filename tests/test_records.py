import hashlib
import json
import logging
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memlaw.errors import MemlawError, RecordError
from memlaw.records import (
    Record,
    check_records,
    load_records,
    parse_records,
    records_sha256,
    redact,
    write_records,
)

DATA = Path("/work/shared/data")
PHONEBOOK = DATA / "phonebook" / "phonebook_32000.jsonl"
LONG_CONTEXT = DATA / "long_context"

# --- malformed input: (id, file name, bytes, line the error points at, secret, words in the cause) ---
# The secret is a value of the file (or its text) that must never appear in the message.
GOOD = b'{"key": "alice", "value": "S3CRET-A"}\n'
MALFORMED = [
    ("broken json", "m.jsonl", GOOD + b'{"key": "b" "value": "S3CRET"}\n', 2, "S3CRET", "not valid JSON (Expecting ',' delimiter at column 13)"),
    ("unterminated string", "m.jsonl", b'{"key": "a", "value": "S3CRET', 1, "S3CRET", "(Unterminated string starting at column 23)"),
    ("raw newline in string", "m.jsonl", b'{"key": "a", "value": "S3CRET\n"}\n', 1, "S3CRET", "(Invalid control character at column 30)"),
    ("json array line", "m.jsonl", GOOD + b'["bob", "S3CRET"]\n', 2, "S3CRET", "got an array"),
    ("json string line", "m.jsonl", b'"S3CRET"\n', 1, "S3CRET", "got a string"),
    ("whole file a json array", "m.jsonl", b'[\n  {"key": "a", "value": "S3CRET"}\n]\n', 1, "S3CRET", "not valid JSON"),
    ("pretty-printed object", "m.jsonl", b'{\n  "key": "a",\n  "value": "S3CRET"\n}\n', 1, "S3CRET", "not valid JSON"),
    ("missing value field", "m.jsonl", GOOD + b'{"key": "bob"}\n', 2, "S3CRET-A", "missing field 'value'"),
    ("typo in value field", "m.jsonl", b'{"key": "a", "vaule": "S3CRET"}\n', 1, "S3CRET", "is 'vaule' a typo of 'value'"),
    ("extra field", "m.jsonl", GOOD + b'{"key": "b", "value": "S3CRET", "note": "x"}\n', 2, "S3CRET", "unknown field 'note'"),
    ("no known fields", "m.jsonl", b'{"name": "a", "phone": "S3CRET"}\n', 1, "S3CRET", "no 'key' and 'value' fields"),
    ("field twice", "m.jsonl", b'{"key": "a", "value": "S3CRET", "value": "OTHER"}\n', 1, "OTHER", "appears more than once"),
    ("value a number", "m.jsonl", GOOD + GOOD.replace(b"alice", b"bob").replace(b'"S3CRET-A"', b"5551234"), 2, "5551234", "must be a JSON string, got a number"),
    ("value null", "m.jsonl", b'{"key": "a", "value": null}\n', 1, "S3CRET", "got null"),
    ("key a number", "m.jsonl", b'{"key": 12, "value": "S3CRET"}\n', 1, "S3CRET", "field 'key' must be a JSON string"),
    ("paper target a number", "m.jsonl", b'{"id": 1, "query": "Jo Bo:", "target": 9100672710, "target_len": 4}\n', 1, "9100672710", "leading zeros"),
    ("paper form missing target", "m.jsonl", b'{"id": 1, "query": "Jo Bo:", "tagret": "S3CRET"}\n', 1, "S3CRET", "missing field 'target'"),
    ("long-context form missing matching", "m.jsonl", b'{"question": "q", "not_matching": "S3CRET"}\n', 1, "S3CRET", "missing field 'matching'"),
    ("empty key", "m.jsonl", GOOD + b'{"key": "", "value": "S3CRET"}\n', 2, "S3CRET", "key is empty"),
    ("empty value", "m.jsonl", GOOD + b'{"key": "bob", "value": ""}\n', 2, "S3CRET-A", "value is empty"),
    ("whitespace-only value", "m.jsonl", b'{"key": "a", "value": " \\t "}\n', 1, "S3CRET", "only whitespace"),
    ("duplicate key, other value", "m.jsonl", GOOD + b'{"key": "bob", "value": "B"}\n' + GOOD.replace(b"S3CRET-A", b"S3CRET-Z"), 3, "S3CRET", "key 'alice' already has a different value at {path}:1"),
    ("NUL escaped in value", "m.jsonl", b'{"key": "a", "value": "S3C\\u0000RET"}\n', 1, "S3C", "NUL"),
    ("raw NUL byte", "m.jsonl", GOOD + b'{"key": "b", "value": "S3C\x00RET"}\n', 2, "S3C", "not valid JSON (Invalid control character"),
    ("lone surrogate", "m.jsonl", b'{"key": "a", "value": "S3CRET\\ud800"}\n', 1, "S3CRET", "lone surrogate"),
    ("invalid utf-8", "m.jsonl", GOOD + b'{"key": "b", "value": "S3CRET\xff\xfe"}\n', 2, "S3CRET", "not valid UTF-8 (at byte 30"),
    ("empty file", "m.jsonl", b"", 1, "S3CRET", "no records"),
    ("only blank lines", "m.jsonl", b"\n  \n\r\n", 1, "S3CRET", "no records"),
    ("csv missing value column", "m.csv", b"key,phone\nalice,S3CRET\n", 1, "S3CRET", "has a 'key' column but no 'value' column"),
    ("csv header typo", "m.csv", b"key,vaule\nalice,S3CRET\n", 1, "S3CRET", "is 'vaule' a typo of 'value'"),
    ("csv without header", "m.csv", b"S3CRET,alice\nbob,S3CRET2\n", 1, "S3CRET", "none of its 2 cells does. If the file has no header row, add the line key,value"),
    ("csv extra column", "m.csv", b"key,value,note\nalice,S3CRET,x\n", 1, "S3CRET", "unknown column 'note'"),
    ("csv repeated column", "m.csv", b"key,value,Value\nalice,S3CRET,x\n", 1, "S3CRET", "column 'value' appears more than once"),
    ("csv too many cells", "m.csv", b"key,value\nalice,S3CRET\nbob,S3,CRET\n", 3, "S3CRET", "row has 3 cells but the header has 2"),
    ("csv too few cells", "m.csv", b"key,value\nalice,S3CRET\nbob\n", 3, "S3CRET", "row has 1 cells"),
    ("csv row after multi-line cell", "m.csv", b'key,value\nalice,"S3\nCRET"\nbob,\n', 4, "CRET", "value is empty"),
    ("csv bad quoting", "m.csv", b'key,value\nalice,"S3CRET"x\n', 2, "S3CRET", "not valid CSV"),
    ("csv duplicate key", "m.csv", b"key,value\nalice,S3CRET\nbob,B\nalice,S3CRET2\n", 4, "S3CRET", "already has a different value at {path}:2"),
    ("csv invalid utf-8", "m.csv", b"key,value\nalice,S3CRET\nbob,S3\xc3\x28CRET\n", 3, "S3", "not valid UTF-8"),
    ("csv header only", "m.csv", b"key,value\n", 1, "S3CRET", "no records"),
]


@pytest.mark.parametrize(("name", "content", "line", "secret", "cause"),
                         [pytest.param(f, c, n, s, w, id=i) for i, f, c, n, s, w in MALFORMED])
def test_malformed_input_names_file_and_line_never_the_value(tmp_path, name, content, line, secret, cause):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(RecordError) as info:
        load_records(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:{line}: "), msg
    assert cause.format(path=path) in msg
    assert "\n" not in msg and "\r" not in msg
    assert secret not in msg


def test_record_error_is_a_memlaw_error_and_a_value_error():
    assert issubclass(RecordError, MemlawError) and issubclass(RecordError, ValueError)


@pytest.mark.parametrize("make", [lambda d: d / "absent.jsonl", lambda d: d], ids=["missing file", "directory"])
def test_unreadable_paths(tmp_path, make):
    path = make(tmp_path)
    with pytest.raises(RecordError, match=r"^.+:1: (no such file|is a directory)"):
        load_records(path)


# --- what loads -----------------------------------------------------------------------------


def load_text(tmp_path, name, text):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return load_records(path)


def test_jsonl_key_value_form(tmp_path):
    text = '{"key": "a", "value": "1"}\n\n   \n{"value": "2", "key": "b"}'  # blank lines, no final newline
    records = load_text(tmp_path, "r.jsonl", text)
    assert records == [Record("a", "1"), Record("b", "2")]
    assert [r.where for r in records] == [f"{tmp_path / 'r.jsonl'}:1", f"{tmp_path / 'r.jsonl'}:4"]


def test_paper_forms_ignore_their_extra_fields(tmp_path):
    text = ('{"id": 7, "query": "Jerry Becerra:", "target": "0100672710", "target_len": 4}\n'
            '{"question": "Please output", "matching": "doc", "not_matching": "", "noise_ratio": 0.2}\n'
            '{"question": "q2", "matching": "t2", "query": "q2", "target": "t2", "id": 1}\n')
    assert load_text(tmp_path, "r.json", text) == [
        Record("Jerry Becerra:", "0100672710"), Record("Please output", "doc"), Record("q2", "t2")]


def test_values_are_kept_verbatim(tmp_path):
    values = ["007", " padded ", "two\nlines\r\n", "tab\there", "emoji 📞 ☎️ 家", "quote \" and \\ backslash",
              "line\u2028separator and \x85 NEL", "trailing space "]
    lines = [json.dumps({"key": f"k{i}", "value": v}, ensure_ascii=i % 2 == 0) for i, v in enumerate(values)]
    records = load_text(tmp_path, "r.jsonl", "\r\n".join(lines) + "\r\n")  # CRLF line ends too
    assert [r.value for r in records] == values


def test_csv_forms(tmp_path):
    text = '\ufeffKey, Value \r\nalice,"0012, ext. 3"\r\nbob,"two\r\nlines"\r\n\r\n"ca""rol",📞\r\n'
    records = load_text(tmp_path, "r.CSV", text)
    assert records == [Record("alice", "0012, ext. 3"), Record("bob", "two\r\nlines"), Record('ca"rol', "📞")]
    assert [r.where.rsplit(":", 1)[1] for r in records] == ["2", "3", "6"]
    paper = load_text(tmp_path, "p.csv", "id,query,target,target_len\n1,Jo Bo:,0100672710,4\n")
    assert paper == [Record("Jo Bo:", "0100672710")]


def test_bom_is_dropped_from_jsonl(tmp_path):
    assert load_text(tmp_path, "r.jsonl", '\ufeff{"key": "a", "value": "1"}\n') == [Record("a", "1")]


def test_repeated_record_is_kept_once_and_logged_without_value(tmp_path, caplog):
    text = ('{"key": "a", "value": "S3CRET"}\n{"key": "b", "value": "2"}\n'
            '{"key": "a", "value": "S3CRET"}\n')
    with caplog.at_level(logging.WARNING, logger="memlaw.records"):
        records = load_text(tmp_path, "r.jsonl", text)
    assert records == [Record("a", "S3CRET"), Record("b", "2")]
    assert records[0].where.endswith(":1")
    assert "'a'" in caplog.text and ":3" in caplog.text and "S3CRET" not in caplog.text


def test_paper_phonebook_loads_fast():
    start = time.process_time()              # CPU seconds: wall time on a loaded machine says nothing
    records = load_records(PHONEBOOK)
    seconds = time.process_time() - start
    assert len(records) == 32_000 == len({r.key for r in records}) == len({r.value for r in records})
    assert records[0] == Record("Jerry Becerra:", "9100672710")
    assert all(len(r.value) == 10 and r.value.isdigit() for r in records)
    assert seconds < 2.0  # about 0.2 CPU-s here


@pytest.mark.parametrize("name", ["random", "sample_0_tok29709_noise_0", "sample_0_tok29709_noise_60"])
def test_paper_long_context_loads_as_one_record(name):
    (record,) = load_records(LONG_CONTEXT / f"{name}.jsonl")
    assert record.key.startswith("Please output the content") and len(record.value) > 80_000


def test_paper_long_context_r80_holds_a_nul_and_is_refused():
    # a random Qwen3 token of the r80 file decodes to U+0000: NUL is refused here by rule
    with pytest.raises(RecordError, match=r"noise_80\.jsonl:1: value contains a NUL"):
        load_records(LONG_CONTEXT / "sample_0_tok29709_noise_80.jsonl")


def test_parse_records_takes_text_lines():
    lines = ['{"key": "a", "value": "1"}\n', "\n", '{"query": "b", "target": "2", "id": 3}\n']
    records = parse_records(lines, "mem")
    assert records == [Record("a", "1"), Record("b", "2")] and records[1].where == "mem:3"
    assert parse_records([], "mem") == []


# --- rules on records built in code -----------------------------------------------------------


@pytest.mark.parametrize(("records", "cause"), [
    ([Record("a", "1"), Record("b", "")], "<records>:2: value is empty"),
    ([Record("a", "1"), Record("a", "S3CRET")], "<records>:2: key 'a' already has a different value at <records>:1"),
    ([Record("a", "1", where="f.jsonl:9"), Record("a", "S3CRET")], "already has a different value at f.jsonl:9"),
    ([Record("\n", "S3CRET")], "<records>:1: key is only whitespace"),
    ([Record("a", 5)], "<records>:1: value must be a string, got int"),
], ids=["empty value", "two values", "two values, where kept", "whitespace key", "not a string"])
def test_check_records(records, cause):
    with pytest.raises(RecordError) as info:
        check_records(records)
    assert cause in str(info.value) and "S3CRET" not in str(info.value)


def test_check_records_accepts_a_repeat_with_the_same_value():
    check_records([Record("a", "1"), Record("a", "1")])


def test_record_repr_hides_value_and_where_is_not_compared():
    record = Record("a", "S3CRET", where="f:1")
    assert "S3CRET" not in repr(record) and "<6 chars>" in repr(record)
    assert record == Record("a", "S3CRET", where="g:2") and hash(record) == hash(Record("a", "S3CRET"))


def test_redact():
    assert redact("0123456789") == "<10 chars>" and redact("x") == "<1 char>" and redact("📞") == "<1 char>"


# --- writing and hashing ----------------------------------------------------------------------


def test_records_sha256_is_pinned_and_order_sensitive():
    a, b = Record("a", "1"), Record("b", "2")
    assert records_sha256([a]) == hashlib.sha256(b'{"key": "a", "value": "1"}\n').hexdigest()
    assert records_sha256([a, b]) == "ba7ca994f505e7a2ebd4df10e4eeb83b14076e3b4873c32be92c80004704b9d4"
    assert records_sha256([a, b]) != records_sha256([b, a])
    assert records_sha256([Record("a", "1", where="x:1")]) == records_sha256([a])


def test_write_then_load_round_trip_and_file_hash(tmp_path):
    records = [Record("Jo Bo:", "0012"), Record("家", "a\nb\u2028c \"q\" \\")]
    path = tmp_path / "sub" / "mem.jsonl"
    write_records(path, records)
    assert load_records(path) == records
    assert hashlib.sha256(path.read_bytes()).hexdigest() == records_sha256(records)


@pytest.mark.parametrize(("name", "records", "cause"), [
    ("m.jsonl", [Record("a", "1"), Record("a", "2")], "different value"),
    ("m.jsonl", [Record("a", "")], "value is empty"),
    ("m.jsonl", [], "no records to write"),
    ("m.csv", [Record("a", "1")], "writes JSON Lines"),
], ids=["duplicate key", "empty value", "no records", "csv path"])
def test_write_refuses_bad_records_and_writes_nothing(tmp_path, name, records, cause):
    path = tmp_path / name
    with pytest.raises(RecordError, match=cause):
        write_records(path, records)
    assert list(tmp_path.iterdir()) == []


# --- properties --------------------------------------------------------------------------------

TRICKY = st.sampled_from(['"', "\\", "\n", "\r", "\t", "\u2028", "\x85", "\ufeff", " ", "0", "📞", "{", ","])
CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")  # any text but NUL
TEXT = st.text(st.one_of(CHARS, TRICKY), min_size=1, max_size=20).filter(lambda s: not s.isspace())
MEMORY = st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=8, unique_by=lambda kv: kv[0]).map(
    lambda kvs: [Record(k, v) for k, v in kvs])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("records")


@settings(max_examples=40, deadline=None)
@given(records=MEMORY)
def test_any_text_round_trips_exactly(scratch, records):
    path = scratch / "mem.jsonl"
    write_records(path, records)
    loaded = load_records(path)
    assert [(r.key, r.value) for r in loaded] == [(r.key, r.value) for r in records]
    assert records_sha256(loaded) == records_sha256(records)


@settings(max_examples=60, deadline=None)
@given(records=MEMORY, data=st.data())
def test_sha256_changes_when_any_value_changes(records, data):
    i = data.draw(st.integers(0, len(records) - 1))
    new = data.draw(TEXT.filter(lambda v: v != records[i].value))
    changed = records[:i] + [Record(records[i].key, new)] + records[i + 1:]
    assert records_sha256(changed) != records_sha256(records)
