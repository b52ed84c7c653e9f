"""Safety: nothing is ever unpickled, and values (maybe secrets) stay out of logs, messages and tables."""

from __future__ import annotations

import json
import logging
import pickle
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import memlaw
from memlaw.cli import app
from memlaw.records import Record, write_records

SRC = Path(memlaw.__file__).parent
TINY = ["--model", "tiny", "--rank", "8", "--layer", "1", "--template", "plain", "--lr", "0.03", "--batch-size", "8",
        "--dtype", "float32"]
runner = CliRunner()

FORBIDDEN = {  # pattern: why
    r"^\s*(import|from)\s+(pickle|cPickle|_pickle|cloudpickle|dill|joblib|shelve|marshal)\b": "a pickle-like module",
    r"\b(pickle|cloudpickle|dill|joblib|marshal)\.(load|loads|Unpickler)\b": "unpickling",
    r"\btorch\.(load|jit\.load)\(": "torch.load unpickles (use safetensors)",
    r"weights_only\s*=\s*False": "torch.load with pickle",
    r"allow_pickle\s*=\s*True": "numpy load with pickle",
    r"\bread_pickle\(": "pandas pickle",
    r"\byaml\.(load|load_all|full_load|unsafe_load|unsafe_load_all)\(": "YAML that can build objects (use safe_load)",
    r"\byaml\.(Unsafe|Full)?Loader\b": "YAML that can build objects",
    r"trust_remote_code\s*=\s*True": "runs a model repository's code",
    r"(use_safetensors|safe_serialization)\s*=\s*False": "pickled weights",
    r"(?<![.\w])(?<!def )(eval|exec)\(\s*[^)\s]": "code from text",
}


def test_no_pickle_loading_in_the_source_tree():
    hits = []
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20
    for path in files:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for pattern, why in FORBIDDEN.items():
                if re.search(pattern, line):
                    hits.append(f"{path.relative_to(SRC)}:{n}: {why}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_tensors_are_read_and_written_with_safetensors_only():
    probe = (SRC / "adapters" / "probe.py").read_text()
    lora = (SRC / "adapters" / "lora.py").read_text()
    assert "from safetensors.torch import load_file, save_file" in probe
    assert "from safetensors.torch import load_file" in lora and "adapter_model.safetensors" in lora


def _forbid(*_a, **_k):
    raise AssertionError("something tried to unpickle")


class _NoUnpickler:
    def __init__(self, *_a, **_k):
        _forbid()


@pytest.fixture
def no_pickle(monkeypatch):
    import torch

    monkeypatch.setattr(pickle, "load", _forbid)
    monkeypatch.setattr(pickle, "loads", _forbid)
    monkeypatch.setattr(pickle, "Unpickler", _NoUnpickler)
    monkeypatch.setattr(torch, "load", _forbid)


@pytest.mark.parametrize("kind", ["probe", "lora"])
def test_write_verify_recall_never_unpickle(no_pickle, tmp_path, tiny_records, kind):
    write_records(tmp_path / "mem.jsonl", tiny_records)
    budget = ["--max-steps", "400"] if kind == "probe" else ["--until", "budget", "--max-steps", "3", "--rank", "2"]
    res = runner.invoke(app, ["write", str(tmp_path / "mem.jsonl"), *TINY, "--adapter", kind, *budget,
                              "--out", str(tmp_path / "ad")])
    assert res.exit_code == (0 if kind == "probe" else 1), res.output     # 3 LoRA steps do not certify
    files = {p.name for p in (tmp_path / "ad").iterdir()}
    assert {p.rsplit(".", 1)[-1] for p in files} <= {"json", "jsonl", "safetensors", "md"}, files
    for args in (["verify", str(tmp_path / "ad")], ["recall", str(tmp_path / "ad"), tiny_records[0].key]):
        res = runner.invoke(app, args)
        assert res.exit_code == (0 if kind == "probe" else 1), res.output   # ran; the LoRA holds nothing
    if kind == "probe":
        assert res.stdout.strip() == tiny_records[0].value


# --- values stay out of logs, messages and tables ---------------------------------------------------

SECRET = "sk9f3q"  # looks like a key: it must show only where the user asked for values


@pytest.fixture
def secret_records(tmp_path, tiny_records):
    records = [Record(r.key, SECRET if i == 5 else r.value) for i, r in enumerate(tiny_records)]
    write_records(tmp_path / "mem.jsonl", records)
    return tmp_path / "mem.jsonl", records[5].key


def test_values_appear_only_in_recall_output_and_records_file(secret_records, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    path, key = secret_records
    out = tmp_path / "ad"
    shown: dict[str, str] = {}

    def run(name, *args):
        res = runner.invoke(app, [str(a) for a in args])
        assert res.exit_code == 0, res.output
        shown[f"{name} stdout"], shown[f"{name} stderr"] = res.stdout, res.stderr
        return res.stdout

    write = ["write", path, *TINY, "--max-steps", "400", "--out", out]
    run("write", *write, "--verbose")
    run("write json", *write, "--json", "--force")
    run("verify", "verify", out)
    run("verify json", "verify", out, "--json")
    run("verify per-record redact", "verify", out, "--per-record", "--redact")
    run("verify per-record json redact", "verify", out, "--per-record", "--json", "--redact")
    recalled = run("recall", "recall", out, key)
    assert json.loads(shown["verify json stdout"])["summary"]["em"] == 8  # recall works: the secret was learned

    assert recalled.strip() == SECRET
    del shown["recall stdout"]
    assert caplog.records and caplog.text  # memlaw logged at DEBUG/INFO
    for where, text in {**shown, "log": caplog.text}.items():
        assert SECRET not in text, where
    for f in out.iterdir():
        if f.name != "records.jsonl":
            assert SECRET.encode() not in f.read_bytes(), f.name
    assert SECRET in (out / "records.jsonl").read_text()

    # asked for per-record rows without --redact: the outputs are shown, as --help says
    assert SECRET in run("verify per-record", "verify", out, "--per-record")
    assert SECRET in json.loads(run("verify per-record json", "verify", out, "--per-record", "--json")) \
        ["records"][5]["output"]
    help_text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", runner.invoke(app, ["verify", "--help"]).stdout).split())
    assert "value itself" in help_text and "only with this option" in help_text


def test_error_messages_never_show_values(tmp_path):
    cases = [  # a refused file and where the value would be
        b'{"key": "a", "value": "sk9f3q"}\n{"key": "a", "value": "sk9f3r"}\n',
        b'{"key": "a", "value": "sk9f3q<|im_end|>"}\n',
        b'{"key": "a", "value": "sk9f3q' + b"0" * 600 + b'"}\n',
        b'{"key": "a", "value": "sk9f3q\\u0000"}\n',
        b'{"key": "a", "value": "sk9f3q", "extra": 1}\n',
    ]
    for i, data in enumerate(cases):
        (tmp_path / f"{i}.jsonl").write_bytes(data)
        res = runner.invoke(app, ["write", str(tmp_path / f"{i}.jsonl"), *TINY, "--out", str(tmp_path / "ad")])
        assert res.exit_code == 2 and "sk9f3" not in res.stderr + res.stdout, res.stderr


def test_error_line_is_one_line_without_terminal_escapes():
    from memlaw.cli._common import one_line

    assert one_line("a\nb\r\nc\x1b[2J\x00") == "a b c\\x1b[2J\\x00"
    assert one_line("tab\tshown") == "tab\\tshown"  # a tab and spaces are different keys: shown differently
