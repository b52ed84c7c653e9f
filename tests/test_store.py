"""The results store without a model: schema, insert-or-ignore, filters, readers during writes, export."""

import csv
import sqlite3

import numpy as np
import pytest

from memlaw.errors import StoreError
from memlaw.exports import export_cells
from memlaw.law import read_law_csv
from memlaw.store import SCHEMA_VERSION, open_store, parse_where
from memlaw.sweep import sweep_from_dict
from memlaw.sweep.cell import CellResult

GRID_DICT = {"name": "g", "model": "tiny", "ranks": [1, 2, 4], "lengths": [10, 20], "train": {"max_steps": 5}}
GRID = sweep_from_dict(GRID_DICT)


def result(cell, status="done", delta_loss=1.0, em_rate=0.5, probs=()):
    metrics = {"length": cell.length, "delta_loss": delta_loss, "L_base": 3.0, "L_final": 3.0 - delta_loss,
               "em_rate": em_rate, "certified_rate": em_rate, "tf_acc": 0.9, "free_acc": 0.8, "steps": 5,
               "wall_s": 1.5, "time_to_certified": None, "n_params": 64 * cell.rank, "history": [{"loss": float("nan")}],
               "extra": np.float32(0.25)}
    return CellResult(cell.key, cell, status, metrics if status == "done" else {}, {"memlaw": "0.1.0"}, list(probs),
                      None if status == "done" else "boom")


@pytest.fixture
def store(tmp_path):
    with open_store(tmp_path / "runs.db") as s:
        yield s


def test_schema_wal_and_version(store, tmp_path):
    con = store.conn
    assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    tables = {n for (n,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"cells", "token_probs", "schema_version"} <= tables
    assert con.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    cols = {r[1] for r in con.execute("PRAGMA table_info(cells)")}
    assert {"key", "sweep", "config", "status", "metrics", "model", "kind", "rank", "length", "objective", "seed",
            "delta_loss", "L_base", "L_final", "em_rate", "certified_rate", "tf_acc", "free_acc", "steps", "wall_s",
            "time_to_certified", "n_params", "versions", "created"} <= cols
    with open_store(tmp_path / "runs.db") as again:                # reopening keeps one version row
        assert again.conn.execute("SELECT COUNT(*) FROM schema_version").fetchone() == (1,)


def test_newer_schema_and_non_sqlite_files_are_refused(tmp_path):
    with open_store(tmp_path / "new.db") as s:
        s.conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer than this memlaw"):
        open_store(tmp_path / "new.db")
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(StoreError, match="not a memlaw store"):
        open_store(tmp_path / "junk.db")
    with pytest.raises(StoreError, match="no such store"):
        open_store(tmp_path / "missing.db", create=False)


def test_a_new_store_is_made_when_its_first_cell_is_stored(tmp_path):
    path = tmp_path / "new" / "runs.db"
    with open_store(path) as store:
        assert store.finished_keys() == set() and store.load_cells(status=None) == [] and store.count() == {}
        assert not (tmp_path / "new").exists()                  # reading a new store makes nothing
        assert store.add_cell(result(GRID.cells()[0]), sweep="a")
        assert store.conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    with open_store(path, create=False) as again:
        assert [r["key"] for r in again.load_cells()] == [GRID.cells()[0].key]
    open_store(tmp_path / "closed").close()                     # opened and closed without a cell: no file
    assert not (tmp_path / "closed").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="cannot make a store there"):
        open_store(tmp_path / "file" / "runs.db")                # below a file: refused at once, not after a cell


def test_add_cell_never_duplicates_and_never_replaces_done(store):
    cell = GRID.cells()[0]
    assert store.add_cell(result(cell, delta_loss=1.0), sweep="a")
    assert not store.add_cell(result(cell, delta_loss=2.0), sweep="b")
    (row,) = store.load_cells()
    assert (row["sweep"], row["delta_loss"], row["status"]) == ("a", 1.0, "done")
    assert row["metrics"]["history"] == [{"loss": None}] and row["metrics"]["extra"] == 0.25   # NaN -> null
    assert row["config"]["adapter"]["rank"] == cell.rank and row["versions"] == {"memlaw": "0.1.0"}


def test_a_failed_cell_is_replaced_when_it_runs_again(store):
    cell = GRID.cells()[1]
    assert store.add_cell(result(cell, "failed"), sweep="a")
    assert store.finished_keys() == set() and store.load_cells() == []
    assert store.load_cells(status="failed")[0]["error"] == "boom"
    assert store.add_cell(result(cell), sweep="a")
    assert store.finished_keys() == {cell.key} and store.count() == {"done": 1}


def test_token_probs_round_trip_in_the_cells_transaction(store):
    cell = GRID.cells()[0]
    p = np.array([0.1, 0.5, 0.99], dtype=np.float16)
    store.add_cell(result(cell, probs=[(10, 0, p.tobytes()), (10, 1, p[:2].tobytes()), (20, 0, p.tobytes())]), sweep="a")
    got = store.token_probs(cell.key)
    assert [(s, r) for s, r, _ in got] == [(10, 0), (10, 1), (20, 0)]
    np.testing.assert_array_equal(got[1][2], p[:2].astype(np.float32))


def test_filters(store):
    for cell in GRID.cells():
        store.add_cell(result(cell, delta_loss=cell.rank / cell.length), sweep="a")
    assert len(store.load_cells("model=tiny,kind=probe")) == 6
    assert {(r["rank"], r["length"]) for r in store.load_cells("rank>=2, length=20")} == {(2, 20), (4, 20)}
    assert len(store.load_cells({"rank": 4})) == 2 and store.load_cells("model!=tiny") == []
    with pytest.raises(StoreError, match="did you mean 'rank'"):
        store.load_cells("rnak=2")
    with pytest.raises(StoreError, match="number column"):
        parse_where("rank=big")
    with pytest.raises(StoreError, match="COLUMN OP VALUE"):
        parse_where("rank")
    key = GRID.cells()[0].key
    assert store.find_key(key[:10]) == key
    with pytest.raises(StoreError, match="no cell with key"):
        store.find_key("ffffffff" if not key.startswith("ffffffff") else "00000000")


def test_readers_query_while_a_writer_holds_a_transaction(store, tmp_path):
    cells = GRID.cells()
    store.add_cell(result(cells[0]), sweep="a")
    writer = sqlite3.connect(tmp_path / "runs.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE cells SET delta_loss = 99")                # uncommitted
    with open_store(tmp_path / "runs.db", create=False) as reader:    # a second connection, mid-transaction
        assert [r["delta_loss"] for r in reader.load_cells()] == [1.0]
        writer.execute("COMMIT")
        assert [r["delta_loss"] for r in reader.load_cells()] == [99.0]
    writer.close()
    store.add_cell(result(cells[1]), sweep="a")                       # the first connection still writes
    assert len(store.load_cells()) == 2


def test_export_csv_feeds_fit_csv_and_parquet_has_the_same_rows(store, tmp_path):
    for cell in GRID.cells():
        store.add_cell(result(cell, delta_loss=cell.rank / cell.length, em_rate=1.0), sweep="a")
    store.add_cell(result(sweep_from_dict({**GRID_DICT, "ranks": [16]}).cells()[0], "failed"), sweep="a")
    n = export_cells(store, tmp_path / "runs.csv")
    assert n == 6
    rows = list(csv.DictReader(open(tmp_path / "runs.csv")))
    assert {r["status"] for r in rows} == {"done"} and rows[0]["em"] == "1.0"
    law_rows = read_law_csv(tmp_path / "runs.csv")
    assert sorted((r["rank"], r["length"]) for r in law_rows) == sorted((c.rank, c.length) for c in GRID.cells())
    pq = pytest.importorskip("pyarrow.parquet")
    assert export_cells(store, tmp_path / "runs.parquet", "parquet", where="rank=1") == 2
    table = pq.read_table(tmp_path / "runs.parquet")
    assert table.num_rows == 2 and table.column("rank").to_pylist() == [1, 1]
    with pytest.raises(StoreError, match="csv or parquet"):
        export_cells(store, tmp_path / "x.json", "json")

