"""Change sets: delete files, the diff against a memory, and every refusal (one line, where, never a value)."""

import pytest

from memlaw.changes import Delete, deletes_of, diff, load_deletes
from memlaw.errors import RecordError
from memlaw.records import Record, load_records

CURRENT = [Record("Ann Lee:", "4155550101"), Record("Bo Ng:", "6505550199"), Record("Cy Ray:", "7075550123")]
VALUES = [r.value for r in CURRENT] + ["9999999999"]


def test_delete_file_plain_text_keeps_keys_verbatim(tmp_path):
    f = tmp_path / "gone.txt"
    f.write_bytes(b"Ann Lee:\r\n\n  \nBo Ng: \n")            # CRLF, blank lines, a key with a trailing space
    assert [(d.key, d.where) for d in load_deletes(f)] == [("Ann Lee:", f"{f}:1"), ("Bo Ng: ", f"{f}:4")]


def test_delete_file_json_lines(tmp_path):
    f = tmp_path / "gone.jsonl"
    f.write_text('{"key": "Ann Lee:"}\n\n{"key": "Bo Ng:", "value": "ignored"}\n')
    assert [d.key for d in load_deletes(f)] == ["Ann Lee:", "Bo Ng:"]


@pytest.mark.parametrize("name,content,cause", [
    ("gone.jsonl", '{"key": "a"}\n{"key": 3}\n', ":2: expected"),
    ("gone.jsonl", '{"key": "a"}\n{"key": "b"\n', ":2: not valid JSON"),
    ("gone.jsonl", '{"name": "a"}\n', ":1: expected"),
    ("gone.jsonl", '{"key": " "}\n', ":1: empty key"),
    ("gone.txt", "\n\n", ":1: no keys"),
    ("missing.txt", None, ":1: no such file"),
])
def test_delete_file_errors_name_the_line(tmp_path, name, content, cause):
    f = tmp_path / name
    if content is not None:
        f.write_text(content)
    with pytest.raises(RecordError, match=cause) as e:
        load_deletes(f)
    assert str(e.value).startswith(str(f)) and "\n" not in str(e.value)


def test_diff_adds_changes_and_deletes_in_order():
    changes = [Record("Dee Fox:", "9999999999"), Record("Bo Ng:", "6505550100")]
    d = diff(CURRENT, changes, deletes_of(["Cy Ray:", "Cy Ray:"]))     # a repeated delete counts once
    assert [r.key for r in d.final] == ["Ann Lee:", "Bo Ng:", "Dee Fox:"]
    assert d.final[1].value == "6505550100"
    assert d.counts() == {"added": 1, "changed": 1, "deleted": 1, "n_records_before": 3, "n_records": 3}
    assert d.gone == [CURRENT[1], CURRENT[2]]                           # old values: changed first, then deleted
    assert [a.key for a in d.added] == ["Dee Fox:"] and d.changed == [(CURRENT[1], changes[1])]


def _refused(changes=(), deletes=()):
    with pytest.raises(RecordError) as e:
        diff(CURRENT, list(changes), list(deletes))
    msg = str(e.value)
    assert "\n" not in msg and not any(v in msg for v in VALUES)
    return msg


def test_refusals(tmp_path):
    f = tmp_path / "changes.jsonl"
    f.write_text('{"key": "Dee Fox:", "value": "9999999999"}\n{"key": "Ann Lee:", "value": "4155550101"}\n')
    assert _refused(load_records(f)).startswith(f"{f}:2: key 'Ann Lee:' already has this value")
    assert _refused(deletes=deletes_of(["Zed:"])).startswith("--delete: key 'Zed:' is not in the memory")
    assert _refused(deletes=[Delete("Ann Lee: ", "gone.txt:3")]).startswith("gone.txt:3: key 'Ann Lee: ' is not")
    both = [Record("Bo Ng:", "1", "changes.jsonl:7")]
    assert _refused(both, [Delete("Bo Ng:", "gone.txt:2")]) == ("changes.jsonl:7: key 'Bo Ng:' is both changed here "
                                                               "and deleted (gone.txt:2); change it or delete it, "
                                                               "not both")
    assert "nothing to update" in _refused()
    assert "delete every record" in _refused(deletes=deletes_of([r.key for r in CURRENT]))
