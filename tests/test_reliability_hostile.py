"""Hostile input, second round: text that is markup or terminal escapes, files that are not memlaw's,
unbounded input, configs that would train garbage, foreign or broken stores, spreadsheet formulas.

The refusals go through test_reliability's check (exit 2, one line on stderr naming place and cause,
nothing on stdout, nothing written); the rest checks that data is shown literally and that nothing
memlaw did not write is touched.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from memlaw.records import Record, write_records
from test_reliability import TINY, assert_refused, cli, cli_process, snapshot

ESC = "\x1b"
HOSTILE_KEYS = [  # each renders as markup or drives a terminal if shown raw
    "[/]k", "user[admin]", "user[guest]", "[link=https://evil.example]click[/link]", ":smile: [bold]b[/bold]",
    f"{ESC}]0;PWNED{ESC}\\title", f"{ESC}[2J{ESC}[Hclear", "bidi\u202egnp.exe", "zero\u200bwidth", "bell\x07\x9bC1",
]
SHOWN = {  # how each key must appear: literally, with non-printable characters escaped
    "[/]k": "[/]k", "user[admin]": "user[admin]", "user[guest]": "user[guest]",
    "[link=https://evil.example]click[/link]": "[link=https://evil.example]click[/link]",
    ":smile: [bold]b[/bold]": ":smile: [bold]b[/bold]",
    f"{ESC}]0;PWNED{ESC}\\title": "\\x1b]0;PWNED\\x1b\\title", f"{ESC}[2J{ESC}[Hclear": "\\x1b[2J\\x1b[Hclear",
    "bidi\u202egnp.exe": "bidi\\u202egnp.exe", "zero\u200bwidth": "zero\\u200bwidth", "bell\x07\x9bC1": "bell\\x07\\x9bC1",
}


def raw_controls(text: str) -> list[str]:
    """Non-printable characters other than the newline in `text` (none may reach a terminal)."""
    return sorted({c for c in text if not c.isprintable() and c not in "\n"})


@pytest.fixture(scope="module")
def hostile_adapter(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    records = [Record(k, f"S3CRET{i}") for i, k in enumerate(HOSTILE_KEYS)]
    write_records(d / "mem.jsonl", records)
    code, _, stderr = cli("write", d / "mem.jsonl", *TINY, "--until", "budget", "--max-steps", "3",
                          "--out", d / "ad[red]x")
    assert code == 1 and "not certified" in stderr, stderr      # 3 steps: saved, not certified
    return d / "ad[red]x"


@pytest.mark.parametrize("redact", [False, True], ids=["values shown", "redacted"])
def test_keys_are_shown_literally_by_verify_per_record(hostile_adapter, redact):
    code, stdout, stderr = cli("verify", hostile_adapter, "--per-record", *(["--redact"] if redact else []))
    assert code == 1 and "not recalled exactly" in stderr, stderr   # ran; 3 steps hold nothing
    assert raw_controls(stdout + stderr) == []
    for key in HOSTILE_KEYS:
        assert SHOWN[key] in stdout, SHOWN[key]
    assert "ad[red]x" in stdout                        # the --out name in the table title, not a style
    assert ("chars>" in stdout) is redact                # outputs as their sizes only


def test_values_are_recalled_one_line_each_with_escapes_visible(hostile_adapter):
    from memlaw.cli._common import visible

    code, stdout, stderr = cli("recall", hostile_adapter, *HOSTILE_KEYS, "--max-new-tokens", "12")
    assert code == 1 and "is not certified" in stderr, stderr      # ran; the recalls are not certified
    assert len(stdout.splitlines()) == len(HOSTILE_KEYS) and raw_controls(stdout + stderr) == []
    assert visible(f"a\nb{ESC}[2J\u202e\ud800") == "a\\nb\\x1b[2J\\u202e\\ud800"
    assert visible("x" * 10, limit=4) == "xxxx... (6 more characters)"
    assert visible("plain é 📞 [b]k[/b]") == "plain é 📞 [b]k[/b]"


def test_sweep_and_model_names_are_shown_literally(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text('name: "[link=https://evil.example]n[/link]\\e[2J"\nmodel: tiny\nranks: [1]\nlengths: [4]\n'
                    "train: {max_steps: 1}\n")
    code, stdout, stderr = cli("sweep", grid, "--store", tmp_path / "runs.db", "--dry-run")
    assert code == 0, stderr
    assert "[link=https://evil.example]n[/link]\\x1b[2J" in stdout and raw_controls(stdout) == []


def test_error_lines_show_control_characters_escaped(tmp_path):
    out = tmp_path / f"a{ESC}]0;PWNED\x07[/]"
    line = assert_refused(cli("verify", out), place="a\\x1b]0;PWNED\\x07[/]", cause="does not exist")
    assert raw_controls(line) == []


# --- the command line: arguments that are not UTF-8 ------------------------------------------------


def test_argument_that_is_not_utf8_is_refused_by_a_real_process(tmp_path):
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "memlaw.cli", "recall", "ad", b"key\xff\x1b[2J"],
                         capture_output=True, cwd=tmp_path, timeout=120)
    stderr = res.stderr.decode()
    assert res.returncode == 2 and res.stdout == b"" and len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith("memlaw: error: argument 3 (key\\udcff\\x1b[2J) is not valid UTF-8")
    assert list(tmp_path.iterdir()) == []


# --- unbounded input: records that never end, are not files, or are too long ------------------------


@pytest.mark.parametrize("make,cause", [
    (lambda d: Path("/dev/zero"), "is not a regular file (a device, FIFO or socket)"),
    (lambda d: (d / "zero.jsonl").symlink_to("/dev/zero") or d / "zero.jsonl", "is not a regular file"),
    (lambda d: os.mkfifo(d / "fifo.jsonl") or d / "fifo.jsonl", "is not a regular file"),
    (lambda d: (d / "long.jsonl").write_bytes(b'{"key": "k", "value": "' + b"9" * (4 << 20) + b'"}\n') and d / "long.jsonl",
     "line is longer than 4,194,304 bytes"),
    (lambda d: (d / "long.csv").write_bytes(b'key,value\nk,"' + b"9\n" * ((2 << 20) + 1) + b'"\n') and d / "long.csv",
     "not valid CSV (field larger than field limit (4194304))"),
], ids=["/dev/zero", "symlink to /dev/zero", "FIFO", "line of 4 MB", "CSV cell of 4 MB"])
def test_records_that_are_not_bounded_files_are_refused(tmp_path, make, cause):
    path = make(tmp_path)
    before = snapshot(tmp_path)
    got = cli("write", path, *TINY, "--max-steps", "5", "--out", tmp_path / "ad")
    assert_refused(got, place=f"{path}:", cause=cause)
    assert snapshot(tmp_path) == before


def test_dev_zero_is_refused_at_once_by_a_real_process(tmp_path):
    import time

    t0 = time.perf_counter()
    assert_refused(cli_process("write", "/dev/zero", "--model", "tiny", "--out", "ad", cwd=tmp_path),
                   place="/dev/zero:1: ", cause="is not a regular file")
    assert time.perf_counter() - t0 < 60 and list(tmp_path.iterdir()) == []


def test_records_file_larger_than_the_limit_is_refused_before_reading(tmp_path, monkeypatch):
    import memlaw.records as records

    monkeypatch.setattr(records, "MAX_RECORDS_BYTES", 100)
    path = tmp_path / "big.jsonl"
    write_records(path, [Record(f"key {i}", "S3CRET") for i in range(10)])
    assert_refused(cli("write", path, *TINY, "--out", tmp_path / "ad"), place=f"{path}:1: ",
                   cause="more than the 100 memlaw reads as a .jsonl or .csv file of records")


def test_value_longer_than_the_context_is_refused_from_a_prefix(tiny_base):
    from memlaw.config import PromptConfig
    from memlaw.encode import encode
    from memlaw.errors import RecordError

    calls = []
    tok = tiny_base.tokenizer
    spy = lambda text, **kw: calls.append(len(text)) or tok(text, **kw)  # noqa: E731
    spy.__dict__.update(chat_template=None, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        all_special_ids=tok.all_special_ids, decode=tok.decode)
    with pytest.raises(RecordError, match=r"k.jsonl:1: record of key 'k' has a value of more than 512 tokens"):
        encode([Record("k", "9" * 1_000_000, where="k.jsonl:1")], spy, PromptConfig(template="plain"), max_length=512)
    assert max(calls) == 8 * 512          # the million characters were never tokenized whole


def test_cli_builds_no_rich_text_from_data_outside_the_literal_console():
    """A rich `Text` passes the consoles as it is, so only `_common` may build one (from `visible`)."""
    import re

    import memlaw.cli

    cli_dir = Path(memlaw.cli.__file__).parent
    hits = [f"{p.name}:{n}" for p in sorted(cli_dir.glob("*.py")) if p.name != "_common.py"
            for n, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"(?<!\w)Text\(", line)]
    assert hits == []
