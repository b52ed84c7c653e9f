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


# --- configs that train garbage: a run that goes non-finite stops and saves nothing --------------------


def test_write_whose_loss_goes_non_finite_stops_and_saves_nothing(tmp_path, monkeypatch):
    import re

    import memlaw.train

    real = memlaw.train.weighted_loss
    steps = []                         # from the 4th loss on (the cost measure's or the write's), NaN
    monkeypatch.setattr(memlaw.train, "weighted_loss",
                        lambda nll, w: real(nll, w) * (float("nan") if steps.append(1) or len(steps) > 3 else 1.0))
    records = tmp_path / "mem.jsonl"
    write_records(records, [Record(f"key {c}", f"S3CRET{i}") for i, c in enumerate("abcd")])
    before = snapshot(tmp_path)
    code, stdout, stderr = cli("write", records, *TINY, "--until", "budget", "--max-steps", "20",
                               "--out", tmp_path / "ad")
    *progress, last = stderr.splitlines()      # progress lines (stderr is not a terminal), then the one error line
    assert code == 2 and stdout == "" and "Traceback" not in stderr, stderr
    assert re.match(r"memlaw: error: training diverged: the loss is nan at step \d+ \(lr 0.03\)", last)
    assert "nothing was saved: lower the learning rate" in last and all(p.startswith(("cost: ", "write: ")) for p in progress)
    assert snapshot(tmp_path) == before


def test_weights_that_go_non_finite_on_the_last_step_are_refused(tiny_base, plain):
    import torch

    from memlaw.adapters import make_adapter
    from memlaw.config import AdapterConfig, ObjectiveConfig, TrainConfig
    from memlaw.encode import encode
    from memlaw.errors import DivergedError
    from memlaw.train import write

    enc = encode([Record("key a", "123456")], tiny_base.tokenizer, plain)
    ad = make_adapter(AdapterConfig(rank=2, layer=1), tiny_base)
    ad.attach(tiny_base)

    def poison(info):                  # after the last step's loss was read: only the weights are NaN
        if info.step == info.total:
            next(iter(ad.parameters())).data[0, 0] = float("nan")
    try:
        with pytest.raises(DivergedError, match="adapter weights are not finite after step 3"):
            write(tiny_base, ad, enc, ObjectiveConfig(), TrainConfig(max_steps=3), on_step=poison)
    finally:
        ad.detach()
    assert torch.isnan(next(iter(ad.parameters()))).any()


@pytest.mark.parametrize("stack", [1, 2], ids=["alone", "stacked"])
def test_sweep_cell_that_diverges_is_stored_as_failed_and_the_next_cell_runs(tmp_path, monkeypatch, caplog, stack):
    import torch

    import memlaw.sweep.cell

    real = memlaw.sweep.cell.make_adapter

    def poisoned(cfg, base, **kw):     # the rank-2 cell's probe starts with NaN weights: its first loss is NaN
        ad = real(cfg, base, **kw)
        if cfg.rank == 2:
            with torch.no_grad():
                ad.A.fill_(float("nan"))
        return ad

    monkeypatch.setattr(memlaw.sweep.cell, "make_adapter", poisoned)
    grid = tmp_path / "g.yaml"
    grid.write_text(f"name: diverge\nmodel: tiny\ndtype: float32\nranks: [2, 8]\nlengths: [20]\nstack: {stack}\n"
                    "adapter: {kind: probe, layer: 1}\ntrain: {lr: 0.03, batch_size: 8, max_steps: 20, until: budget}\n"
                    "prompt: {template: plain}\n")
    code, stdout, stderr = cli("sweep", grid, "--store", tmp_path / "runs.db", "--quiet", "--json")
    assert code == 0 and "Traceback" not in stderr, stderr
    summary = json.loads(stdout)
    assert (summary["ran"], summary["failed"]) == (2, 1)
    with sqlite3.connect(tmp_path / "runs.db") as conn:
        rows = conn.execute("SELECT rank, status, error, steps, delta_loss, metrics FROM cells ORDER BY rank").fetchall()
    (r2, status2, error2, steps2, _, _), (r8, status8, error8, steps8, dl8, metrics8) = rows
    assert (r2, status2, steps2) == (2, "failed", None)
    assert error2.startswith("training diverged: the loss is nan at step 1 (lr 0.03); nothing was saved")
    assert (r8, status8, error8, steps8) == (8, "done", None, 20) and dl8 > 0
    assert "stacked" not in json.loads(metrics8)     # stacked: the group fell back to one cell at a time
    assert ("a stacked group of 2 cells stopped (training diverged" in caplog.text) is (stack == 2)


def test_adapter_metadata_is_strict_json(tmp_path):
    from memlaw.fileio import json_ready

    assert json_ready({"a": float("nan"), "b": (1.0, float("-inf")), 3: {"c": float("inf")}}) == \
        {"a": None, "b": [1.0, None], "3": {"c": None}}
    records = tmp_path / "mem.jsonl"
    write_records(records, [Record("key a", "S3CRET")])
    code, _, stderr = cli("write", records, *TINY, "--until", "budget", "--max-steps", "2", "--out", tmp_path / "ad")
    assert code in (0, 1), stderr                  # 1: saved, not every record certified
    json.loads((tmp_path / "ad" / "memlaw.json").read_text(),
               parse_constant=lambda c: pytest.fail(f"memlaw.json holds {c}"))


# --- files that are not memlaw's: --out recognises a memory by its validated memlaw.json --------------


@pytest.fixture(scope="module")
def memory(tmp_path_factory):
    d = tmp_path_factory.mktemp("memory")
    write_records(d / "mem.jsonl", [Record(f"key {c}", f"S3CRET{i}") for i, c in enumerate("abc")])
    code, _, stderr = cli("write", d / "mem.jsonl", *TINY, "--until", "budget", "--max-steps", "2", "--out", d / "ad")
    assert code in (0, 1), stderr                  # 1: saved, not every record certified
    return d / "ad"


def _copy(memory: Path, tmp_path: Path) -> Path:
    shutil.copytree(memory, tmp_path / "ad")
    return tmp_path / "ad"


@pytest.mark.parametrize("force", [False, True], ids=["plain", "--force"])
@pytest.mark.parametrize("meta", ['{"kind": "probe"}', "{}", "not json", ""], ids=["fake", "empty object",
                                                                                      "not JSON", "empty file"])
def test_directory_with_a_memlaw_json_that_does_not_validate_is_never_replaced(tmp_path, memory, meta, force):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "memlaw.json").write_text(meta)
    (out / "thesis.tex").write_text("precious")
    before = snapshot(tmp_path)
    got = cli("write", memory / "records.jsonl", *TINY, "--max-steps", "2", "--out", out, *(["--force"] if force else []))
    assert_refused(got, place=str(out), cause="exists and is not a memlaw adapter (memlaw.json does not validate")
    assert snapshot(tmp_path) == before


def test_existing_memory_is_not_overwritten_without_force(tmp_path, memory):
    ad = _copy(memory, tmp_path)
    before = snapshot(tmp_path)
    got = cli("write", ad / "records.jsonl", *TINY, "--max-steps", "2", "--out", ad)
    line = assert_refused(got, place=str(ad), cause="already holds a memory (3 records)")
    assert f"`memlaw update {ad} CHANGES` changes it in place, --force replaces it" in line
    assert snapshot(tmp_path) == before
    code, _, stderr = cli("write", ad / "records.jsonl", *TINY, "--until", "budget", "--max-steps", "3",
                          "--seed", "1", "--out", ad, "--force")
    assert code in (0, 1), stderr                  # 1: saved, not every record certified
    meta = json.loads((ad / "memlaw.json").read_text())
    assert meta["training"]["train"]["seed"] == 1 and sorted(os.listdir(ad)) == meta["files"]


def test_memory_with_files_memlaw_did_not_write_is_replaced_only_with_force(tmp_path, memory):
    ad = _copy(memory, tmp_path)
    (ad / "notes.txt").write_text("precious")
    (ad / "plots").mkdir()
    before = snapshot(tmp_path)
    got = cli("write", ad / "records.jsonl", *TINY, "--max-steps", "2", "--out", ad)
    assert_refused(got, place=str(ad), cause="holds files memlaw did not write ('notes.txt', 'plots')")
    assert snapshot(tmp_path) == before
    code, _, stderr = cli("write", ad / "records.jsonl", *TINY, "--until", "budget", "--max-steps", "2",
                          "--out", ad, "--force")
    assert code in (0, 1), stderr                  # 1: saved, not every record certified
    assert not (ad / "notes.txt").exists() and not (ad / "plots").exists()


def test_python_api_refuses_an_existing_memory_too(tmp_path, memory, tiny_base):
    from memlaw.errors import AdapterError
    from memlaw.memory import write_memory

    ad = _copy(memory, tmp_path)
    with pytest.raises(AdapterError, match="already holds a memory"):
        write_memory([Record("key a", "1")], model=tiny_base, out=ad)


def test_memories_written_before_the_file_list_count_their_known_files(memory):
    from memlaw.adapters.directory import written_files

    meta = json.loads((memory / "memlaw.json").read_text())
    assert written_files(meta) == set(os.listdir(memory)) == set(meta["files"])
    del meta["files"]
    assert written_files(meta) == {"memlaw.json", "records.jsonl", "README.md", "adapter.safetensors"}
    assert written_files({"kind": "lora", "tensors_sha256": {"adapter_model.safetensors": ""}}) == \
        {"memlaw.json", "records.jsonl", "README.md", "adapter_model.safetensors", "adapter_config.json"}


@pytest.fixture
def store_file(tmp_path):
    """A store with one finished cell, written through the sweep."""
    grid = tmp_path / "g.yaml"
    grid.write_text("name: '=HYPERLINK(\"https://evil.example\")'\nmodel: tiny\ndtype: float32\nranks: [2]\n"
                    "lengths: [20]\nadapter: {kind: probe, layer: 1}\n"
                    "train: {lr: 0.03, batch_size: 8, max_steps: 2, until: budget}\nprompt: {template: plain}\n")
    code, _, stderr = cli("sweep", grid, "--store", tmp_path / "runs.db", "--quiet")
    assert code == 0, stderr
    return tmp_path / "runs.db"


@pytest.mark.parametrize("make,what", [
    (lambda d: (d / "dir").mkdir() or d / "dir", "is a directory"),
    (lambda d: ((d / "t.csv").write_text("mine"), (d / "link.csv").symlink_to(d / "t.csv"), d / "link.csv")[-1],
     "is a symbolic link"),
    (lambda d: Path("/dev/null"), "is a device, FIFO or socket"),
    (lambda d: os.mkfifo(d / "fifo.csv") or d / "fifo.csv", "is a device, FIFO or socket"),
], ids=["directory", "symlink", "/dev/null", "FIFO"])
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_never_replaces_what_is_not_a_regular_file(tmp_path, store_file, make, what, fmt):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    out = make(tmp_path)
    cli("runs", "list", "--store", store_file)   # a first read leaves SQLite's -wal/-shm beside a WAL store
    before = snapshot(tmp_path)
    got = cli("runs", "export", "--format", fmt, "--out", out, "--store", store_file)
    assert_refused(got, place=str(out), cause=what)
    assert snapshot(tmp_path) == before and (out.is_char_device() or out.exists())


# --- other people's databases, broken rows, garbled pages ---------------------------------------------


def _foreign(d: Path) -> Path:
    path = d / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (name TEXT, password TEXT)")
        conn.execute("INSERT INTO users VALUES ('alice', 'S3CRET')")
    return path


STORE_MAKERS = {
    "another application's database": _foreign,
    "an empty file": lambda d: (d / "empty.db").write_bytes(b"") or d / "empty.db",
    "a text file": lambda d: (d / "notes.db").write_text("S3CRET notes\n") and d / "notes.db",
}
READ_COMMANDS = {
    "runs list": lambda s, d: ["runs", "list", "--store", s],
    "runs show": lambda s, d: ["runs", "show", "abc", "--store", s],
    "runs export": lambda s, d: ["runs", "export", "--out", d / "out.csv", "--store", s],
    "fit": lambda s, d: ["fit", "--store", s],
    "report": lambda s, d: ["report", "--store", s, "--out", d / "report"],
    "plan": lambda s, d: ["plan", Path(__file__).parent / "corpus" / "records" / "empty_key.jsonl", "--model", "tiny",
                          "--store", s],
}


@pytest.mark.parametrize("command", list(READ_COMMANDS))
@pytest.mark.parametrize("kind", list(STORE_MAKERS))
def test_read_commands_refuse_a_file_that_is_not_a_memlaw_store_and_write_nothing(tmp_path, kind, command):
    path = STORE_MAKERS[kind](tmp_path)
    before = snapshot(tmp_path)
    got = cli(*READ_COMMANDS[command](path, tmp_path))
    assert_refused(got, place=str(path), cause="not a memlaw store")
    assert snapshot(tmp_path) == before        # no schema, no WAL mode, no -wal/-shm files, no output


def test_sweep_refuses_another_applications_database(tmp_path):
    path = _foreign(tmp_path)
    grid = tmp_path / "g.yaml"
    grid.write_text("name: s\nmodel: tiny\nranks: [2]\nlengths: [20]\ntrain: {max_steps: 1}\n")
    before = snapshot(tmp_path)
    assert_refused(cli("sweep", grid, "--store", path), place=str(path), cause="other tables (users)")
    assert snapshot(tmp_path) == before


def _bad_rows(store: Path) -> dict[str, str]:
    """Copies of the store's one good row with a defect each; returns key -> the cause to report."""
    defects = {"b" * 64: ("metrics", "{not json", "column metrics is not valid JSON"),
               "c" * 64: ("delta_loss", "S3CRET", "column delta_loss holds str, not REAL"),
               "d" * 64: ("config", "[1, 2]", "column config is not a JSON object"),
               "e" * 64: ("rank", "four", "column rank holds str, not INTEGER")}
    with sqlite3.connect(store) as conn:
        names = [r[1] for r in conn.execute("PRAGMA table_info(cells)")]
        good = conn.execute("SELECT * FROM cells").fetchone()
        for key, (column, value, _) in defects.items():
            row = dict(zip(names, good), key=key, **{column: value})
            conn.execute(f"INSERT INTO cells ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                         [row[n] for n in names])
        conn.execute("INSERT INTO token_probs VALUES (?, 1, 0, ?)", ("b" * 64, b"\x00\x01\x02"))
    return {key: cause for key, (_, _, cause) in defects.items()}


def test_bad_rows_are_reported_by_key_and_skipped(store_file, tmp_path):
    bad = _bad_rows(store_file)
    code, stdout, stderr = cli_process("runs", "list", "--store", store_file, "--json")   # the real log handler
    assert code == 0, stderr
    assert len(json.loads(stdout)) == 1                                       # the good row only
    for key, cause in bad.items():
        assert f"cell '{key}' cannot be read ({cause}); skipped" in stderr
    assert "Traceback" not in stderr and "S3CRET" not in stderr
    code, stdout, stderr = cli_process("runs", "export", "--out", tmp_path / "x.csv", "--store", store_file)
    assert code == 0 and "exported 1 cells" in stdout and stderr.count("cannot be read") == len(bad)
    assert_refused(cli("runs", "show", "c" * 12, "--store", store_file), place=str(store_file),
                   cause=f"cell '{'c' * 64}' cannot be read (column delta_loss holds str, not REAL)")


@pytest.mark.parametrize("command", ["runs list", "runs export", "fit", "report", "sweep"])
@pytest.mark.parametrize("pages", ["schema", "cells"], ids=["schema pages", "the page of the cell row"])
def test_garbled_page_is_one_line_not_a_traceback(store_file, tmp_path, command, pages):
    data = bytearray(store_file.read_bytes())
    page = 4096
    row = data.index(b"HYPERLINK") // page      # the cells row (the sweep name is stored nowhere else)
    for n in ((1, 2) if pages == "schema" else (row,)):
        assert n != 0
        data[n * page: (n + 1) * page] = bytes((i * 37 + 11) % 256 for i in range(page))
    store_file.write_bytes(bytes(data))
    for side in ("-wal", "-shm"):
        Path(f"{store_file}{side}").unlink(missing_ok=True)
    grid = tmp_path / "g.yaml"
    args = (["sweep", grid, "--store", store_file, "--quiet"] if command == "sweep"
            else READ_COMMANDS[command](store_file, tmp_path))
    assert_refused(cli(*args), place=str(store_file), cause="database disk image is malformed")


# --- spreadsheet formulas: text cells of a CSV export never start a formula ----------------------------


def test_csv_export_neutralises_formula_cells(store_file, tmp_path):
    import csv

    from memlaw.fileio import csv_cell

    assert [csv_cell(v) for v in ("=1+1", "+1", "-cmd", "@SUM(A1)", "\tx", "\rx", "plain", "", -0.5, 3, None)] == \
        ["'=1+1", "'+1", "'-cmd", "'@SUM(A1)", "'\tx", "'\rx", "plain", "", -0.5, 3, None]
    with sqlite3.connect(store_file) as conn:     # a text column that starts like a negative number, too
        conn.execute("UPDATE cells SET model = '-2+3'")
    code, _, stderr = cli("runs", "export", "--out", tmp_path / "runs.csv", "--store", store_file)
    assert code == 0, stderr
    (row,) = csv.DictReader((tmp_path / "runs.csv").open(newline=""))
    assert row["sweep"] == "'=HYPERLINK(\"https://evil.example\")" and row["model"] == "'-2+3"
    assert all(not v.startswith(("=", "+", "-", "@", "\t", "\r")) or _is_number(v) for v in row.values())
    assert float(row["delta_loss"]) == pytest.approx(float(row["delta_loss"])) and int(row["rank"]) == 2
    json.loads(row["config"])                   # JSON columns start with '{' and are written as they are


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_read_commands_leave_a_memlaw_store_byte_for_byte(store_file, tmp_path):
    import hashlib

    digest = hashlib.sha256(store_file.read_bytes()).hexdigest()
    for command in ("runs list", "runs export", "fit", "report"):
        code, _, stderr = cli(*READ_COMMANDS[command](store_file, tmp_path))
        assert code in (0, 2) and "Traceback" not in stderr, stderr
    assert hashlib.sha256(store_file.read_bytes()).hexdigest() == digest


# --- keys that render to the same prompt ---------------------------------------------------------------


@pytest.mark.parametrize("change,keys", [
    ("nfc", ["caf\u00e9", "cafe\u0301"]),            # NFC and NFD of one word
    ("trim", ["alice", "alice  "]),                  # a chat template that trims the turn
], ids=["Unicode normalization", "trailing whitespace"])
def test_keys_that_render_to_the_same_prompt_are_refused_with_both_lines(tiny_base, tmp_path, change, keys):
    import copy

    from tokenizers import normalizers

    from memlaw.config import PromptConfig
    from memlaw.encode import encode
    from memlaw.errors import RecordError
    from memlaw.records import load_records

    tok = copy.deepcopy(tiny_base.tokenizer)
    if change == "nfc":
        tok.backend_tokenizer.normalizer = normalizers.NFC()
    else:
        tok.chat_template = tok.chat_template.replace("message['content']", "(message['content'] | trim)")
    path = tmp_path / "mem.jsonl"
    write_records(path, [Record("other", "S3CRET0"), Record(keys[0], "S3CRET1"), Record(keys[1], "S3CRET2")])
    records = load_records(path)
    with pytest.raises(RecordError) as e:
        encode(records, tok, PromptConfig(template="chat"))
    message = str(e.value)
    assert message.startswith(f"{path}:3: key {keys[1]!r} renders to the same prompt tokens as key {keys[0]!r} at {path}:2")
    assert "S3CRET" not in message
    encode(records, tiny_base.tokenizer, PromptConfig(template="chat"))   # the byte-level tokenizer keeps them apart


# --- runs that will obviously not fit: the cost is said first, what cannot work is refused -------------


@pytest.mark.parametrize("cfg", [dict(kind="probe", rank=8, layer=1), dict(kind="lora", rank=4),
                                 dict(kind="lora", rank=2, lora_targets=("q_proj", "down_proj"), lora_layers=(0, 3))],
                         ids=["probe", "lora all-linear", "lora two targets in two layers"])
def test_parameter_count_matches_the_attached_adapter(tiny_base, cfg):
    from memlaw.adapters import make_adapter
    from memlaw.config import AdapterConfig
    from memlaw.cost import n_params

    cfg = AdapterConfig(**cfg)
    predicted = n_params(cfg, tiny_base)
    ad = make_adapter(cfg, tiny_base)
    ad.attach(tiny_base)
    try:
        assert predicted == ad.n_params() == sum(p.numel() for p in ad.parameters()) > 0
        assert n_params(cfg, tiny_base) == predicted       # a LoRA already attached is not counted twice
    finally:
        ad.detach()


@pytest.mark.parametrize("args,cause", [
    (["--rank", "65"], "rank 65 is more than the hidden size 64: a rank-65 map in 64 dimensions has rank at most 64"),
    (["--adapter", "lora", "--rank", "33"], "rank 33 is more than layers.0.self_attn.k_proj (64 -> 32)"),
], ids=["probe rank above the hidden size", "lora rank above a target's width"])
def test_adapter_that_cannot_work_is_refused_before_training(tmp_path, args, cause):
    records = tmp_path / "mem.jsonl"
    write_records(records, [Record("key a", "S3CRET")])
    before = snapshot(tmp_path)
    assert_refused(cli("write", records, *TINY, "--max-steps", "5", *args, "--out", tmp_path / "ad"),
                   place="adapter", cause=cause)
    assert snapshot(tmp_path) == before


def test_sweep_with_a_rank_that_cannot_work_is_refused_and_stores_no_cell(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("name: big\nmodel: tiny\ndtype: float32\nranks: [2, 100]\nlengths: [20]\n"
                    "adapter: {kind: probe, layer: 1}\ntrain: {lr: 0.03, batch_size: 8, max_steps: 2, until: budget}\n")
    assert_refused(cli("sweep", grid, "--store", tmp_path / "runs.db"), place="adapter",
                   cause="rank 100 is more than the hidden size 64")
    assert not (tmp_path / "runs.db").exists()                 # no cell, so no store file either


def test_training_state_larger_than_memory_is_refused(tiny_base):
    from memlaw.config import AdapterConfig
    from memlaw.cost import check_feasible, device_memory
    from memlaw.errors import ConfigError

    with pytest.raises(ConfigError, match=r"1,024 parameters; training them takes 16.0 KiB .* more than the 1000 bytes"):
        check_feasible(AdapterConfig(rank=8), tiny_base, memory_bytes=1000)
    assert device_memory(tiny_base.device) > 1 << 20
    check_feasible(AdapterConfig(rank=8), tiny_base)       # the real machine holds it


def test_write_says_what_it_will_cost_and_the_size_is_the_files(tmp_path):
    records = tmp_path / "mem.jsonl"
    write_records(records, [Record(f"key {c}", f"S3CRET{i}") for i, c in enumerate("abcd")])
    code, stdout, stderr = cli("write", records, *TINY, "--until", "budget", "--max-steps", "40", "--out",
                               tmp_path / "ad", "--json")
    assert code in (0, 1), stderr                  # 1: saved, not every record certified
    cost = json.loads(stdout)["cost"]
    assert cost["n_params"] == 2 * 64 * 8 and cost["adapter_bytes"] == 4 * cost["n_params"]
    assert cost["steps"] == 40 and cost["step_s"] > 0 and cost["seconds"] > 40 * cost["step_s"]
    on_disk = (tmp_path / "ad" / "adapter.safetensors").stat().st_size
    assert cost["adapter_bytes"] <= on_disk <= cost["adapter_bytes"] + 200        # + the safetensors header
    line = stderr.splitlines()[0]                 # said before the write starts
    assert line.startswith("cost: 1,024 trainable parameters (4.0 KiB on disk, float32), at most 40 optimizer "
                           "steps over 4 records; ") and line.endswith(" s just now)")


def test_the_measure_changes_nothing_the_write_computes(tmp_path, tiny_base):
    from memlaw.config import AdapterConfig, PromptConfig, TrainConfig
    from memlaw.memory import write_memory

    records = tmp_path / "mem.jsonl"
    write_records(records, [Record(f"key {c}", f"S3CRET{i}") for i, c in enumerate("abcd")])
    code, _, stderr = cli("write", records, *TINY, "--until", "budget", "--max-steps", "30", "--out", tmp_path / "cli")
    assert code in (0, 1), stderr                  # 1: saved, not every record certified
    write_memory(records, model=tiny_base, out=tmp_path / "api", adapter=AdapterConfig(rank=8, layer=1),
                 train=TrainConfig(lr=0.03, batch_size=8, max_steps=30, until="budget"),
                 prompt=PromptConfig(template="plain"))
    assert (tmp_path / "cli" / "adapter.safetensors").read_bytes() == (tmp_path / "api" / "adapter.safetensors").read_bytes()


def test_time_formula_and_wording():
    from memlaw.config import TrainConfig
    from memlaw.cost import Cost, _duration, write_seconds

    train = TrainConfig(max_steps=100, batch_size=8, check_every=10)
    assert write_seconds(train, 16, 0.5) == pytest.approx(100 * 0.5 + 11 * 2 * 0.5 / 3)
    assert [_duration(s) for s in (0.2, 42, 600, 7200, 5 * 86400, 1e9 * 0.5)] == \
        ["under a second", "42 s", "10 min", "2.0 h", "5 days", "15.9 years"]
    line = Cost(n_params=3 << 30, steps=10**9, n_records=200_000, step_s=0.5, seconds=5e8).line()
    assert line == ("cost: 3,221,225,472 trainable parameters (12.0 GiB on disk, float32), at most 1,000,000,000 "
                    "optimizer steps over 200,000 records; about 15.9 years at most (one step took 0.5 s just now)")


def test_strict_yaml_keeps_what_yaml_allows(tmp_path):
    from memlaw.fileio import load_yaml

    path = tmp_path / "g.yaml"
    path.write_text("base: &b {lr: 0.01, batch_size: 8}\ntrain: {<<: *b, lr: 0.03}\nranks: [1, 2]\nnames: [a, a]\n")
    assert load_yaml(path) == {"base": {"lr": 0.01, "batch_size": 8}, "train": {"lr": 0.03, "batch_size": 8},
                               "ranks": [1, 2], "names": ["a", "a"]}    # merge keys override; lists may repeat
    path.write_text("")
    assert load_yaml(path) is None


def test_a_lora_memory_holds_only_files_memlaw_wrote(tmp_path):
    records = tmp_path / "mem.jsonl"
    write_records(records, [Record("key a", "S3CRET")])
    args = ["write", records, *TINY, "--adapter", "lora", "--rank", "2", "--until", "budget", "--max-steps", "2",
            "--out", tmp_path / "ad"]
    assert cli(*args)[0] in (0, 1)
    meta = json.loads((tmp_path / "ad" / "memlaw.json").read_text())
    assert sorted(os.listdir(tmp_path / "ad")) == meta["files"]
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(meta["files"])
    assert_refused(cli(*args), place=str(tmp_path / "ad"), cause="already holds a memory (1 record)")


def test_demo_replaces_its_own_earlier_memory_but_not_other_files(tmp_path, memory, monkeypatch):
    import memlaw.memory

    calls = []

    def stub(*_a, **k):                             # the write starts: record it, then stop as Ctrl-C would
        calls.append(k)
        raise KeyboardInterrupt

    monkeypatch.setattr(memlaw.memory, "write_memory", stub)
    ad = _copy(memory, tmp_path)
    assert cli("demo", "--model", "tiny", "--out", ad, "--n", "2")[0] == 130   # an earlier memory: accepted
    assert calls and calls[0]["out"] == ad
    (ad / "notes.txt").write_text("precious")
    before = snapshot(tmp_path)
    assert_refused(cli("demo", "--model", "tiny", "--out", ad, "--n", "2"), place=str(ad),
                   cause="holds files memlaw did not write ('notes.txt')")
    assert snapshot(tmp_path) == before
