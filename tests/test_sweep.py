"""Sweeps on the tiny model: grid expansion and keys, one cell, the local executor, crash safety, Ray."""

import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import pytest
import torch
import yaml

from memlaw.errors import ConfigError, MemlawError
from memlaw.records import Record
from memlaw.store import open_store
from memlaw.sweep import CellConfig, load_sweep, run_local, run_sweep, sweep_from_dict
from memlaw.sweep.local import MAX_AUTO_WORKERS, auto_workers, available_memory, thread_budget
from memlaw.benchmarks import prefix_by_length
from memlaw.sweep.cell import comparable, run_cell

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

TINY = {"name": "tiny-grid", "model": "tiny", "dtype": "float32", "ranks": [2, 8], "lengths": [20, 30],
        "adapter": {"layer": 1}, "prompt": {"template": "plain"},
        "train": {"lr": 0.03, "batch_size": 8, "max_steps": 12, "check_every": 6}}


def tiny_sweep(**over) -> "SweepConfig":  # noqa: F821
    return sweep_from_dict({**TINY, **over})


@pytest.fixture
def one_thread():
    """CPU numerics depend on the thread count; the Ray actors run 1 thread, so the local runs do too."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- grid


def test_grid_expands_lengths_then_ranks_then_seeds():
    cells = tiny_sweep(seeds=[1, 0]).cells()
    assert [(c.length, c.rank, c.seed) for c in cells] == [
        (20, 2, 0), (20, 2, 1), (20, 8, 0), (20, 8, 1), (30, 2, 0), (30, 2, 1), (30, 8, 0), (30, 8, 1)]
    assert len({c.key for c in cells}) == 8
    assert all(c.adapter.layer == 1 and c.train.lr == 0.03 for c in cells)


def test_key_is_sha256_of_canonical_json_and_survives_a_round_trip():
    import hashlib
    import json

    cell = tiny_sweep().cells()[0]
    assert cell.key == hashlib.sha256(cell.canonical_json().encode()).hexdigest()
    again = CellConfig.from_dict(json.loads(json.dumps(cell.to_dict())))      # as the store keeps it
    assert again == cell and again.key == cell.key
    assert CellConfig.from_dict(json.loads(cell.canonical_json())).key == cell.key


def test_only_the_curriculum_is_keyed_by_its_settings():
    grid = {"name": "pin", "model": "smollm2-135m", "ranks": [4], "lengths": [160],
            "objectives": [{"name": "sft"}, {"name": "memft-ot"}, {"name": "memft-sw"}, {"name": "memft-sw-curriculum"}],
            "train": {"lr": 0.01, "batch_size": 8, "max_steps": 300, "shared_min_rows": 1}}
    keys = {c.objective.name: c.key for c in sweep_from_dict(grid).cells()}
    # the keys these cells had at commit 6af42b6, before the LR schedule option, the curriculum's new
    # settings and shared_min_rows existed: stored rows keep them (the law grids resume across the
    # upgrade); at the default shared_min_rows (12) a batch of 8 no longer shares its prompt, so new keys
    now = {c.key for c in sweep_from_dict({**grid, "train": {**grid["train"], "shared_min_rows": 12}}).cells()}
    assert now == {c.key for c in sweep_from_dict({**grid, "train": {k: v for k, v in grid["train"].items()
                                                                     if k != "shared_min_rows"}}).cells()}
    assert now.isdisjoint(keys.values())
    assert keys["sft"] == "292c9ab2fb6605ff69705635631e66eeb1608b33d0eec2767a8a7e5beb108b06"
    assert keys["memft-ot"] == "59bebc42eb33a5b6f57cc21375c69d0de3ba68c2ac58cd456e8cac39fb18bb03"
    assert keys["memft-sw"] == "97beaedaa1d3b6c51fddd655d9afb7c85cdfb48be9c4f3f4fe29685548ade8ea"
    assert keys["memft-sw-curriculum"] != "9627ab5e6d84f155a3f8953560358a291b57d42b6fd84597b3f26a3802a6c647"
    progress = sweep_from_dict({**grid, "train": {**grid["train"], "schedule": "progress"}}).cells()
    assert {c.key for c in progress}.isdisjoint(keys.values())
    settings = [{"equal_budget": False}, {"curriculum_boundaries": [0.2, 0.4, 0.6, 0.8, 2.0]}]
    for name in keys:
        changed = {sweep_from_dict({**grid, "objectives": [{"name": name, **s}]}).cells()[0].key for s in settings}
        assert changed == ({keys[name]} if name != "memft-sw-curriculum" else changed - {keys[name]})
        assert len(changed) == (1 if name != "memft-sw-curriculum" else 2)


def test_key_ignores_the_sweep_name_and_int_vs_float_spelling():
    a = tiny_sweep().cells()
    b = tiny_sweep(name="other", train={**TINY["train"], "lr": 0.03, "clip": 1}).cells()
    assert [c.key for c in a] == [c.key for c in b]
    c = tiny_sweep(train={**TINY["train"], "max_steps": 13}).cells()
    assert not {x.key for x in a} & {x.key for x in c}


@pytest.mark.parametrize("change,message", [
    ({"rnaks": [1]}, "did you mean 'ranks'"),
    ({"train": {"lrr": 0.1, "max_steps": 3}}, "did you mean 'lr'"),
    ({"adapter": {"rank": 4}}, "adapter.rank is set by `ranks`"),
    ({"train": {"seed": 1, "max_steps": 3}}, "train.seed is set by `seeds`"),
    ({"ranks": []}, "ranks must be a non-empty list"),
    ({"lengths": [10, 10]}, "repeated"),
    ({"benchmark": {"name": "phonebok"}}, "did you mean 'phonebook'"),
    ({"benchmark": {"name": "phonebook", "ratio": 0.2}}, "ratio is not an option of benchmark 'phonebook'"),
    ({"train": {"lr": 0.1}}, "needs max_steps or epochs"),
    ({"dtype": "fp16"}, "dtype must be one of"),
])
def test_bad_sweeps_raise_config_error_naming_the_problem(change, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("`", ".")):
        tiny_sweep(**change)


@pytest.mark.parametrize("change,quoted", [
    ({"dtype": "fp16" * 500}, "got 'fp16fp16"),
    ({"ranks": [1.5, *range(2, 500)]}, "ranks must be integers, got [1.5, 2, 3, 4, 5, 6, ...]"),
    ({"objectives": [["sft"] * 500]}, "objectives[0] must be a mapping, got ['sft', 'sft',"),
    ({"adapter": "probe\n" * 500}, "adapter must be a mapping, got 'probe\\nprobe"),
    ({"token_probs": "x" * 500}, "token_probs must be true, false or an interval in steps >= 1, got 'xxx"),
])
def test_bad_sweep_values_are_quoted_on_one_bounded_line(change, quoted):
    """A bad value is quoted as every config message quotes one (validation.shown): repr, one line, bounded."""
    with pytest.raises(ConfigError) as e:
        tiny_sweep(**change)
    message = str(e.value)
    assert quoted in message and "\n" not in message and len(message) < 300, message


def test_repeated_grid_values_are_named():
    with pytest.raises(ConfigError, match=r"ranks has repeated values: \[2, 8\]$"):
        tiny_sweep(ranks=[*range(1, 40), 8, 2])


def test_yaml_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "g.yaml"
    bad.write_text("name: x\nmodel: tiny\nranks: [1, 2\n")
    with pytest.raises(ConfigError, match=r"g\.yaml:\d+: not valid YAML"):
        load_sweep(bad)
    with pytest.raises(ConfigError, match="no such file"):
        load_sweep(tmp_path / "missing.yaml")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("sweep-*.yaml")), ids=lambda p: p.name)
def test_shipped_sweep_configs_load(path):
    cfg = load_sweep(path)
    assert len(cfg.ranks) >= 2 and len(cfg.lengths) >= 2 and cfg.cells()


def test_smollm2_config_is_the_measured_grid():
    cfg = load_sweep(CONFIGS / "sweep-smollm2-phonebook.yaml")
    assert cfg.model == "smollm2-135m" and cfg.adapter.kind == "probe"
    assert len(cfg.ranks) >= 4 and len(cfg.lengths) >= 4
    assert load_sweep(CONFIGS / "sweep-gemma3-phonebook.yaml").prompt.template == "plain"


# ---------------------------------------------------------------- one cell


def test_prefix_by_length_takes_exactly_length_value_tokens(tiny_base):
    recs = [Record(f"k{i}", "123456") for i in range(5)]             # byte tokenizer: 6 tokens each
    assert len(prefix_by_length(recs, 18, tiny_base.tokenizer, source="t")) == 3
    with pytest.raises(ConfigError, match="nearest are 18 .3 records. and 24 .4 records."):
        prefix_by_length(recs, 20, tiny_base.tokenizer, source="t")
    with pytest.raises(ConfigError, match="only 30 value tokens"):
        prefix_by_length(recs, 31, tiny_base.tokenizer, source="t")


def test_run_cell_measures_and_is_deterministic(tiny_base):
    cell = tiny_sweep().cells()[1]                                     # rank 8, length 20: 2 entries
    a = run_cell(cell, tiny_base, token_probs=True)
    b = run_cell(cell, tiny_base)
    assert a.status == "done" and a.key == cell.key
    m = a.metrics
    assert m["length"] == 20 and m["n_records"] == 2 and m["steps"] == 12 and m["n_params"] == 2 * 64 * 8
    assert m["delta_loss"] == pytest.approx(m["L_base"] - m["L_final"]) and m["delta_loss"] > 0
    assert 0 <= m["em_rate"] <= 1 and 0 <= m["certified_rate"] <= 1 and [h["step"] for h in m["history"]] == [6, 12]
    assert comparable(a.metrics) == comparable(b.metrics)
    assert sorted({(s, r) for s, r, _ in a.token_probs}) == [(6, 0), (6, 1), (12, 0), (12, 1)]
    assert all(len(p) == 2 * 11 for _, _, p in a.token_probs)        # float16, 10 digits + EOS
    assert b.token_probs == []


def test_run_cell_refuses_another_model_and_reports_bad_cells_as_failed(tiny_base):
    other = sweep_from_dict({**TINY, "model": "smollm2-135m"}).cells()[0]
    with pytest.raises(ConfigError, match="resident base model is 'tiny'"):
        run_cell(other, tiny_base)
    bad = tiny_sweep(lengths=[25]).cells()[0]
    res = run_cell(bad, tiny_base)
    assert res.status == "failed" and ("PB20 or PB30" in res.error or "nearest are 20" in res.error)


# ---------------------------------------------------------------- local executor


def test_local_sweep_stores_every_cell_once_and_resumes(tiny_base, tmp_path):
    cfg = tiny_sweep()
    events = []
    with open_store(tmp_path / "runs.db") as store:
        s = run_local(cfg, store, base=tiny_base, on_cell=events.append)
        assert (s.grid, s.skipped, s.ran, s.failed) == (4, 0, 4, 0)
        assert [e.done for e in events] == [0, 1, 2, 3, 4] and events[0].eta_s is None
        assert events[-1].eta_s == pytest.approx(0.0) and all(e.eta_s > 0 for e in events[1:-1])
        assert store.finished_keys() == {c.key for c in cfg.cells()}
        again = run_local(tiny_sweep(ranks=[2, 8, 4]), store, base=tiny_base)
        assert (again.grid, again.skipped, again.ran) == (6, 4, 2)
        assert len(store.load_cells()) == 6


def test_local_sweep_checks_every_length_before_writing(tiny_base, tmp_path):
    with open_store(tmp_path / "runs.db") as store:
        with pytest.raises(ConfigError, match="PB25|25 value tokens"):
            run_local(tiny_sweep(lengths=[20, 25]), store, base=tiny_base)
        assert store.load_cells(status=None) == []


def test_local_sweep_refuses_a_base_of_another_dtype(tiny_base, tmp_path):
    with open_store(tmp_path / "runs.db") as store, pytest.raises(ConfigError, match="in bfloat16"):
        run_local(tiny_sweep(dtype="bfloat16"), store, base=tiny_base)


def test_workers_run_cells_side_by_side_with_the_numbers_of_one_process(tiny_base, tmp_path):
    """Two worker processes store the rows one process stores at their thread count, and resume alike."""
    cfg = tiny_sweep()
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, thread_budget() // 2))         # what each of 2 workers runs on
    try:
        with open_store(tmp_path / "one.db") as store:
            run_local(cfg, store, base=tiny_base)
            alone = {r["key"]: r for r in store.load_cells()}
    finally:
        torch.set_num_threads(before)
    events = []
    with open_store(tmp_path / "two.db") as store:
        s = run_local(tiny_sweep(ranks=[2]), store, base=tiny_base, workers=2)   # half the grid first
        assert (s.ran, s.failed) == (2, 0)
        s = run_local(cfg, store, base=tiny_base, workers=2, on_cell=events.append)
        assert (s.grid, s.skipped, s.ran, s.failed) == (4, 2, 2, 0) and [e.done for e in events] == [0, 1, 2]
        side = {r["key"]: r for r in store.load_cells()}
        assert store.conn.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM cells").fetchone() == (4, 4)
    assert side.keys() == alone.keys()
    for key in alone:
        assert comparable(side[key]["metrics"]) == comparable(alone[key]["metrics"])
        assert side[key]["delta_loss"] == alone[key]["delta_loss"] and side[key]["em_rate"] == alone[key]["em_rate"]
    assert multiprocessing.active_children() == []                   # every worker went home


def test_a_worker_that_dies_stops_the_sweep_and_keeps_the_finished_cells(tiny_base, tmp_path):
    cfg = tiny_sweep(ranks=[2, 4, 8], train={**TINY["train"], "max_steps": 40})

    def kill_the_workers(event):
        if event.done == 1:                                          # one cell stored, others running
            for proc in multiprocessing.active_children():
                os.kill(proc.pid, signal.SIGKILL)

    with open_store(tmp_path / "runs.db") as store:
        with pytest.raises(MemlawError, match=r"a sweep worker died at cell \w{12} \(exit code -9\); "
                                              "finished cells are stored"):
            run_local(cfg, store, base=tiny_base, workers=2, on_cell=kill_the_workers)
        assert multiprocessing.active_children() == []
        kept = len(store.finished_keys())      # the first cell, and the other worker's if it had already sent it
        assert kept in (1, 2)
        again = run_local(cfg, store, base=tiny_base, workers=2)
        assert (again.skipped, again.ran, again.failed) == (kept, 6 - kept, 0)
        assert store.conn.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM cells").fetchone() == (6, 6)


@pytest.mark.parametrize("first", ["continuations", "group"], ids=["between-cells", "inside-the-cell"])
def test_a_worker_measures_locality_on_the_continuations_it_is_sent(tiny_base, monkeypatch, first):
    """The sweep's process decodes locality's continuations and sends them once: a worker takes them
    whether they come before its cell or while it runs (then its locality waits for them)."""
    import memlaw.locality
    from memlaw.locality import decode_continuations
    from memlaw.sweep.local import _prompt_set, _worker

    cfg = tiny_sweep(ranks=[2], lengths=[20])
    cell = cfg.cells()[0]
    alone = run_cell(cell, tiny_base)                                # decodes its own, at this thread count
    key = _prompt_set(cfg, deque([[cell]]), tiny_base, torch.get_num_threads())
    given = decode_continuations(tiny_base, key)

    def no_decoding(*args, **kw):
        raise AssertionError("the worker decoded the continuations it was sent")

    monkeypatch.setattr(memlaw.locality, "greedy_padded", no_decoding)
    here, there = multiprocessing.Pipe()
    worker = threading.Thread(target=_worker, args=(there, "tiny", "float32", torch.get_num_threads(), key))
    worker.start()                                                   # in a thread, so the patch reaches it
    messages = [("continuations", given), ("group", ([cell], False, True))]
    for message in messages if first == "continuations" else messages[::-1]:
        here.send(message)
    kind, results = here.recv()
    here.send(None)
    worker.join(timeout=60)
    assert kind == "done" and not worker.is_alive()
    assert results[0].status == "done" and results[0].metrics["locality"]["positions"] > 0
    assert comparable(results[0].metrics) == comparable(alone.metrics)


def test_workers_take_the_sweeps_continuations_or_decode_their_own(tiny_base, tmp_path, monkeypatch):
    import memlaw.sweep.local as local
    from memlaw.locality import Continuations, neutral_prompts

    cfg = tiny_sweep(ranks=[2], lengths=[20, 30])

    def one_token_each(base, key):                                   # runs in this process only
        return Continuations(key, [[key[2]]] * len(key[0]))         # the terminator alone

    monkeypatch.setattr(local, "decode_continuations", one_token_each)
    with open_store(tmp_path / "given.db") as store:
        assert run_local(cfg, store, base=tiny_base, workers=2).failed == 0
        # what the workers measured on is what this process sent: one token after each neutral prompt
        assert [r["metrics"]["locality"]["positions"] for r in store.load_cells()] == [len(neutral_prompts())] * 2

    def broken(base, key):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(local, "decode_continuations", broken)
    with open_store(tmp_path / "own.db") as store:
        assert run_local(cfg, store, base=tiny_base, workers=2).failed == 0
        assert all(r["metrics"]["locality"]["positions"] > len(neutral_prompts()) for r in store.load_cells())
    assert multiprocessing.active_children() == []


def test_auto_workers_one_per_thread_within_memory_and_cells(tiny_base, monkeypatch):
    import memlaw.sweep.local as local

    assert auto_workers(tiny_base, 1) == 1                           # one cell: no second process
    assert auto_workers(tiny_base, 100) == min(thread_budget(), MAX_AUTO_WORKERS)
    monkeypatch.setattr(local, "thread_budget", lambda: 64)
    assert auto_workers(tiny_base, 100) == MAX_AUTO_WORKERS
    weights = sum(p.numel() * p.element_size() for p in tiny_base.model.parameters())
    monkeypatch.setattr(local, "available_memory", lambda: 2 * (3 * weights + 2**30) + 1)   # room for two
    assert auto_workers(tiny_base, 100) == 2
    monkeypatch.setattr(local, "available_memory", lambda: 0)
    assert auto_workers(tiny_base, 100) == 1


def test_a_workers_error_comes_back_as_memlaws_own_class_or_a_memlaw_error():
    from memlaw.sweep.local import _rebuilt

    e = _rebuilt("ConfigError", "cell is for model 'x'")
    assert type(e) is ConfigError and str(e) == "cell is for model 'x'"
    e = _rebuilt("KeyError", "'rank'")
    assert type(e) is MemlawError and str(e) == "a sweep worker failed: KeyError: 'rank'"
    assert type(_rebuilt("FitWarning", "w")) is MemlawError                     # not an error class of ours


def test_the_thread_budget_is_torchs_thread_count(one_thread):
    assert thread_budget() == 1                                      # OMP_NUM_THREADS=1 or set_num_threads(1)
    assert available_memory() is None or available_memory() > 0


# ---------------------------------------------------------------- crash safety


def _sweep_process(grid: Path, store: Path) -> subprocess.Popen:
    code = "from memlaw.cli import main; main()"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code, "sweep", str(grid), "--store", str(store), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def _done_rows(store: Path) -> int:
    if not store.exists():
        return 0
    con = sqlite3.connect(store, timeout=30)
    try:
        return con.execute("SELECT COUNT(*) FROM cells WHERE status = 'done'").fetchone()[0]
    except sqlite3.OperationalError:              # schema not created yet
        return 0
    finally:
        con.close()


def test_kill_9_at_any_moment_then_resume_loses_and_duplicates_nothing(tmp_path, tiny_base):
    """Kill a real sweep process with SIGKILL mid-cell, twice, then resume: every cell exactly once."""
    cfg = {**TINY, "ranks": [2, 4, 8], "train": {**TINY["train"], "max_steps": 40}}
    grid, store = tmp_path / "grid.yaml", tmp_path / "runs.db"
    grid.write_text(yaml.safe_dump(cfg))
    for kill_after_rows in (1, 3):                 # the first kill lands mid-cell 2, the second mid-cell 4
        proc = _sweep_process(grid, store)
        deadline = time.monotonic() + 600        # a loaded 2-core machine: the first row can take minutes
        while _done_rows(store) < kill_after_rows and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.15)                           # into the next cell's write
        assert proc.poll() is None, proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert _done_rows(store) >= kill_after_rows
    assert _done_rows(store) < 6
    sweep = sweep_from_dict(cfg)
    with open_store(store) as db:
        summary = run_local(sweep, db, base=tiny_base)
        assert summary.skipped + summary.ran == 6 and summary.skipped >= 3
        con = db.conn
        assert con.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM cells").fetchone() == (6, 6)
        assert db.finished_keys() == {c.key for c in sweep.cells()}
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)


# ---------------------------------------------------------------- Ray


def test_ray_executor_matches_the_local_executor(tiny_base, tmp_path, one_thread):
    ray = pytest.importorskip("ray")
    cfg = tiny_sweep()
    with open_store(tmp_path / "local.db") as store:
        run_local(cfg, store, base=tiny_base)
        local = {r["key"]: r for r in store.load_cells()}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        events = []
        with open_store(tmp_path / "ray.db") as store:
            s = run_sweep(cfg, store, executor="ray", num_cpus=1, on_cell=events.append)
            remote = {r["key"]: r for r in store.load_cells()}
            again = run_sweep(cfg, store, executor="ray")          # everything stored: no actor starts
    finally:
        ray.shutdown()
    assert (s.ran, s.failed, again.ran, again.skipped) == (4, 0, 0, 4) and events[-1].done == 4
    assert remote.keys() == local.keys()
    for key in local:
        assert comparable(remote[key]["metrics"]) == comparable(local[key]["metrics"])
        assert remote[key]["delta_loss"] == local[key]["delta_loss"] and remote[key]["em_rate"] == local[key]["em_rate"]
