"""Crash safety of `memlaw update` in place: real processes killed with SIGKILL at each moment of the save,
at random moments of a run of updates, and a real `python -m memlaw.cli update` killed while it saves.

After every kill the memory directory holds the previous complete memory or the updated one, never a mix:
it reads, its sha256s match, it loads, and its tensors are byte for byte those of one complete state.
The killing machinery (forkserver child, kill points) is test_crash's.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memlaw.adapters import check_integrity, load_adapter, read_meta
from memlaw.cli import app
from memlaw.records import Record, load_records, write_records
from test_crash import POINTS, assert_strays_are_not_adapters, child, kill_while_saving

runner = CliRunner()
TINY = ["--model", "tiny", "--rank", "8", "--layer", "1", "--template", "plain", "--lr", "0.03", "--batch-size", "8",
        "--dtype", "float32", "--max-steps", "400"]


def update_args(directory: Path, changes: Path) -> list[str]:
    return ["update", str(directory), str(changes), "--json"]


@pytest.fixture(scope="module")
def forkserver():
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["memlaw.memory", "memlaw.cli", "memlaw.update", "test_crash"])
    return ctx


@pytest.fixture(scope="module")
def states(tmp_path_factory, tiny_records):
    """A certified memory (state 0) and the states after updates 1, 2, 3, 4, each changing key a's value
    (the change files alternate); their tensor bytes identify them."""
    d = tmp_path_factory.mktemp("states")
    write_records(d / "mem.jsonl", tiny_records)
    res = runner.invoke(app, ["write", str(d / "mem.jsonl"), *TINY, "--out", str(d / "s0")])
    assert res.exit_code == 0, res.output
    key = tiny_records[0].key
    for k, value in enumerate(("111111", "222222")):
        write_records(d / f"change{k}.jsonl", [Record(key, value)])
    tensors = {0: (d / "s0" / "adapter.safetensors").read_bytes()}
    for i in range(1, 5):
        shutil.copytree(d / f"s{i - 1}", d / f"s{i}")
        res = runner.invoke(app, update_args(d / f"s{i}", d / f"change{(i - 1) % 2}.jsonl"))
        assert res.exit_code == 0, res.output
        tensors[i] = (d / f"s{i}" / "adapter.safetensors").read_bytes()
    assert len(set(tensors.values())) == 5
    return d, tensors


def memory_state(directory: Path, base, tensors: dict[int, bytes]) -> int | str:
    """'absent', or which complete state the memory in `directory` is (exactly one)."""
    if not directory.exists():
        return "absent"
    meta = read_meta(directory)
    assert check_integrity(directory, meta) == [], f"torn memory in {directory}"
    load_adapter(directory, base)
    load_records(directory / "records.jsonl")
    data = (directory / "adapter.safetensors").read_bytes()
    same = [i for i, ref in tensors.items() if ref == data]
    assert len(same) == 1, "tensors are not those of any complete state"
    assert len(meta.get("history", [])) == same[0]
    return same[0]


@pytest.mark.parametrize("point", list(POINTS))
def test_kill_at_each_moment_of_the_save(forkserver, states, tiny_base, tmp_path, point):
    d, tensors = states
    mem = tmp_path / "ad"
    shutil.copytree(d / "s0", mem)
    shutil.copyfile(d / "change0.jsonl", tmp_path / "mem.jsonl")   # the name test_crash's stray check expects
    p = forkserver.Process(target=child, args=([update_args(mem, tmp_path / "mem.jsonl")], point, str(mem),
                                               str(tmp_path / "u.log")))
    p.start()
    p.join(120)
    assert p.exitcode == -signal.SIGKILL, (tmp_path / "u.log").read_text()[-2000:]
    expected = {"seed0": 0, "seed1": 1, "absent": "absent"}[POINTS[point]]
    assert memory_state(mem, tiny_base, tensors) == expected
    assert assert_strays_are_not_adapters(tmp_path, mem)
    if expected != 1:              # rerun the killed update: it completes, with the bytes of the one never killed
        if expected == "absent":   # the fallback's window: the previous memory waits in the .old directory
            old = next(tmp_path.glob(".ad.*.old/ad"))
            shutil.move(old, mem)
        res = runner.invoke(app, update_args(mem, tmp_path / "mem.jsonl"))
        assert res.exit_code == 0, res.output
        assert memory_state(mem, tiny_base, tensors) == 1
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ad.")]


def test_kill_at_random_moments(forkserver, states, tiny_base, tmp_path):
    """A run of in-place updates (changes alternating), killed at a random moment, twice."""
    d, tensors = states
    mem = tmp_path / "ad"
    shutil.copytree(d / "s0", mem)
    rng = random.Random(int(os.environ.get("MEMLAW_CRASH_SEED", "7")))
    seen = 0
    for i in range(2):
        runs = [update_args(mem, d / f"change{k % 2}.jsonl") for k in range(seen, 4)]
        p = forkserver.Process(target=child, args=(runs, None, str(mem), str(tmp_path / f"u{i}.log")))
        p.start()
        time.sleep(rng.uniform(0.3, 2.5))
        os.kill(p.pid, signal.SIGKILL)
        p.join(60)
        state = memory_state(mem, tiny_base, tensors)
        assert state != "absent" and state >= seen
        seen = state


def test_kill_a_real_cli_process_during_the_save(states, tiny_base, tmp_path):
    """`python -m memlaw.cli update`, killed -9 as soon as its temp directory appears (it is saving)."""
    d, tensors = states
    mem = tmp_path / "ad"
    shutil.copytree(d / "s0", mem)
    assert kill_while_saving(update_args(mem, d / "change0.jsonl"), mem) == -signal.SIGKILL, \
        "the update finished before it could be killed"
    assert memory_state(mem, tiny_base, tensors) in (0, 1)
