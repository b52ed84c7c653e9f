"""Crash safety of `memlaw write`: real processes killed with SIGKILL (kill -9) at chosen and random moments.

After every kill the --out directory must hold the previous complete adapter or the new complete
one (or none, where there was none), never a torn one: it reads, its sha256s match, it loads, and
its tensors are byte for byte those of one complete write. Temp directories may stay behind but
are never taken for an adapter, and rerunning the command finishes the job and removes them.

The writers are forked from a forkserver that has imported torch once (a fresh interpreter costs
seconds), so each kill costs about one tiny write; one more is a plain `python -m memlaw.cli`.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memlaw.adapters import check_integrity, load_adapter, read_meta
from memlaw.cli import app
from memlaw.errors import AdapterError
from memlaw.atomic import exchange, is_temp_dir
from memlaw.records import write_records

TINY = ["--model", "tiny", "--rank", "8", "--layer", "1", "--template", "plain", "--lr", "0.03", "--batch-size", "8",
        "--dtype", "float32", "--until", "budget", "--max-steps", "20", "--json"]
runner = CliRunner()


def write_args(records: Path, out: Path, seed: int) -> list[str]:
    return ["write", str(records), *TINY, "--seed", str(seed), "--out", str(out), "--force"]   # over the previous one


# --- the child: a `memlaw write` that may kill itself at one point of the save -----------------------


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(point: str, out: Path) -> None:
    """Make this process SIGKILL itself at `point` of saving the adapter (monkeypatching: it dies anyway)."""
    import memlaw.adapters.directory as adapters
    import memlaw.adapters.probe as probe
    import memlaw.atomic as atomic

    if point in ("tensors torn", "after tensors"):
        real_save = probe.save_file

        def save_file(tensors, path):
            real_save(tensors, path)
            if point == "tensors torn":  # half the file on disk, as a kill in the middle of the write leaves it
                os.truncate(path, os.path.getsize(path) // 2)
            _die()
        probe.save_file = save_file
    elif point == "after records":
        real_write = adapters.write_records
        adapters.write_records = lambda *a, **k: (real_write(*a, **k), _die())
    elif point == "after memlaw.json":
        atomic._fsync_tree = lambda root: _die()
    elif point == "before swap":
        atomic.exchange = lambda a, b: _die()
    elif point == "after swap":
        real_exchange = atomic.exchange
        atomic.exchange = lambda a, b: (real_exchange(a, b), _die())
    elif point == "between renames":  # a file system that cannot swap: the fallback's window
        real_replace = os.replace
        atomic.exchange = lambda a, b: False

        def replace(src, dst):
            real_replace(src, dst)
            if Path(src) == out:
                _die()
        atomic.os.replace = replace
    else:
        raise ValueError(point)


def child(runs: list[list[str]], point: str | None, out: str, log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    if point is not None:
        _arm(point, Path(out))
    from memlaw.cli import app as cli_app

    for args in runs:
        code = cli_app(args=args, prog_name="memlaw", standalone_mode=False)
        if code not in (None, 0, 1):                  # 1: written, not certified (a 20-step budget)
            os._exit(3)
    os._exit(0)


@pytest.fixture(scope="module")
def forkserver():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["memlaw.memory", "memlaw.cli", __name__])
    return ctx


# --- references and checks --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def refs(tmp_path_factory, tiny_records):
    """Records, and complete adapters written in this process with seeds 0, 1 and 2 (their tensor bytes)."""
    d = tmp_path_factory.mktemp("refs")
    write_records(d / "mem.jsonl", tiny_records)
    tensors = {}
    for seed in (0, 1, 2):
        res = runner.invoke(app, write_args(d / "mem.jsonl", d / f"seed{seed}", seed))
        assert res.exit_code == 1 and "not certified" in res.stderr, res.stderr   # 20 steps: saved, not certified
        tensors[f"seed{seed}"] = (d / f"seed{seed}" / "adapter.safetensors").read_bytes()
    assert len(set(tensors.values())) == 3
    return d, tensors


@pytest.fixture(scope="module")
def swaps(tmp_path_factory) -> bool:
    """Whether this file system swaps directories atomically (then --out is never missing)."""
    d = tmp_path_factory.mktemp("swap")
    (d / "a").mkdir()
    (d / "b").mkdir()
    (d / "a" / "x").write_text("a")
    if not exchange(d / "a", d / "b"):
        return False
    assert (d / "b" / "x").read_text() == "a" and not (d / "a" / "x").exists()
    return True


def adapter_state(out: Path, base, tensors: dict[str, bytes]) -> str:
    """'absent', or which reference write the complete adapter in `out` is (it must be exactly one)."""
    if not out.exists():
        return "absent"
    meta = read_meta(out)
    assert check_integrity(out, meta) == [], f"torn adapter in {out}"
    load_adapter(out, base)
    data = (out / "adapter.safetensors").read_bytes()
    same = [name for name, ref in tensors.items() if ref == data]
    assert len(same) == 1, "tensors are not those of any complete write"
    return same[0]


def assert_strays_are_not_adapters(parent: Path, out: Path) -> list[Path]:
    strays = [p for p in parent.iterdir() if p not in (out, parent / "mem.jsonl") and not p.name.endswith(".log")]
    for p in strays:
        assert is_temp_dir(p), p
        with pytest.raises(AdapterError, match="temporary directory"):
            read_meta(p if p.suffix == ".tmp" else p / out.name)
    return strays


def resume(records: Path, out: Path, seed: int) -> None:
    """Rerun the killed command: it completes and leaves no temp directory behind."""
    res = runner.invoke(app, write_args(records, out, seed))
    assert res.exit_code == 1 and "not certified" in res.stderr, res.stderr   # completed; 20 steps do not certify
    assert sorted(p.name for p in out.parent.iterdir() if not p.name.endswith(".log")) == sorted(["mem.jsonl", out.name])


# --- kills at each moment of the save -----------------------------------------------------------------

POINTS = {  # point: what --out holds after the kill (with a previous adapter there; None: none was there)
    "tensors torn": "seed0",
    "after tensors": "seed0",
    "after records": "seed0",
    "after memlaw.json": "seed0",
    "before swap": "seed0",
    "after swap": "seed1",
    "between renames": "absent",   # only where the file system cannot swap
}


@pytest.mark.parametrize("point", list(POINTS))
def test_kill_at_each_moment_of_the_save(forkserver, refs, tiny_base, tmp_path, point):
    d, tensors = refs
    records, out = tmp_path / "mem.jsonl", tmp_path / "ad"
    shutil.copyfile(d / "mem.jsonl", records)
    shutil.copytree(d / "seed0", out)                      # the previous complete adapter
    p = forkserver.Process(target=child, args=([write_args(records, out, 1)], point, str(out), str(tmp_path / "w.log")))
    p.start()
    p.join(120)
    assert p.exitcode == -signal.SIGKILL, (tmp_path / "w.log").read_text()[-2000:]
    assert adapter_state(out, tiny_base, tensors) == POINTS[point]
    strays = assert_strays_are_not_adapters(tmp_path, out)
    if point == "between renames":                          # the previous adapter waits beside it, and says so
        with pytest.raises(AdapterError, match=r"an interrupted write left the previous adapter in .*\.old/ad"):
            read_meta(out)
    assert strays                                           # the killed writer's temp directory (or the old one)
    resume(records, out, 1)
    assert adapter_state(out, tiny_base, tensors) == "seed1"  # and the same bytes as the write never killed


def test_kill_first_write_leaves_no_adapter(forkserver, refs, tiny_base, tmp_path):
    d, tensors = refs
    records, out = tmp_path / "mem.jsonl", tmp_path / "ad"
    shutil.copyfile(d / "mem.jsonl", records)
    p = forkserver.Process(target=child, args=([write_args(records, out, 1)], "after memlaw.json", str(out),
                                               str(tmp_path / "w.log")))
    p.start()
    p.join(120)
    assert p.exitcode == -signal.SIGKILL
    assert adapter_state(out, tiny_base, tensors) == "absent"
    assert len(assert_strays_are_not_adapters(tmp_path, out)) == 1
    resume(records, out, 1)


def test_kill_at_random_moments(forkserver, refs, tiny_base, tmp_path, swaps):
    """A writer looping over writes (seeds 1, 2, 1, ...) into one --out, killed at random moments, 4 times."""
    d, tensors = refs
    records, out = tmp_path / "mem.jsonl", tmp_path / "ad"
    shutil.copyfile(d / "mem.jsonl", records)
    shutil.copytree(d / "seed0", out)
    rng = random.Random(int(os.environ.get("MEMLAW_CRASH_SEED", "7")))
    for i in range(4):
        runs = [write_args(records, out, 1 + k % 2) for k in range(20)]
        p = forkserver.Process(target=child, args=(runs, None, str(out), str(tmp_path / f"w{i}.log")))
        p.start()
        time.sleep(rng.uniform(0.3, 2.5))
        assert p.is_alive(), "the writer finished before the kill"
        os.kill(p.pid, signal.SIGKILL)
        p.join(60)
        assert p.exitcode == -signal.SIGKILL
        state = adapter_state(out, tiny_base, tensors)
        assert state != "absent" or not swaps            # the previous adapter stays until the next is complete
        assert_strays_are_not_adapters(tmp_path, out)
    resume(records, out, 2)
    assert adapter_state(out, tiny_base, tensors) == "seed2"


def kill_while_saving(args: list[str], out: Path) -> int:
    """Run `python -m memlaw.cli ARGS` and kill -9 it as soon as its temp directory beside `out` appears
    (it is saving); returns its exit status."""
    proc = subprocess.Popen([sys.executable, "-m", "memlaw.cli", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    before, deadline = out.stat().st_ino, time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if any(p.name.startswith(f".{out.name}.{proc.pid}.") for p in out.parent.iterdir()):
                time.sleep(random.uniform(0, 0.01))
                break
            try:
                if out.stat().st_ino != before:   # saved between two looks: kill it now, while it exits
                    break
            except FileNotFoundError:             # the fallback's window between two renames
                break
            time.sleep(0.0005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(60)
    return proc.returncode


def test_kill_a_real_cli_process_during_the_save(refs, tiny_base, tmp_path, swaps):
    """`python -m memlaw.cli write`, killed -9 as soon as its temp directory appears (it is saving)."""
    d, tensors = refs
    records, out = tmp_path / "mem.jsonl", tmp_path / "ad"
    shutil.copyfile(d / "mem.jsonl", records)
    shutil.copytree(d / "seed0", out)
    assert kill_while_saving(write_args(records, out, 1), out) == -signal.SIGKILL, \
        "the write finished before it could be killed"
    assert adapter_state(out, tiny_base, tensors) in ({"seed0", "seed1"} if swaps else {"seed0", "seed1", "absent"})
    assert_strays_are_not_adapters(tmp_path, out)
    resume(records, out, 1)
    assert adapter_state(out, tiny_base, tensors) == "seed1"
