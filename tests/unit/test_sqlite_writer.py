"""The group-commit writer the broker store and the adapter spool share, on a real sqlite file."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from radflow.sdk.sqlite_writer import GroupCommitWriter, WriterClosed


class Traced:
    """A writer on ``t(id INTEGER PRIMARY KEY, v TEXT)`` that records every statement it runs."""

    def __init__(self, path: Path) -> None:
        self.statements: list[str] = []

        def setup(conn: sqlite3.Connection) -> None:
            conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
            conn.set_trace_callback(self.statements.append)

        self.writer = GroupCommitWriter(path, setup=setup, name="test-writer")

    def commits(self) -> int:
        return self.statements.count("COMMIT")

    def hold(self) -> tuple[threading.Event, threading.Event]:
        """Occupy the writer thread with a lone operation until the returned release is set."""
        started, release = threading.Event(), threading.Event()

        def block(_c: sqlite3.Connection) -> None:
            started.set()
            assert release.wait(10), "test never released the writer"

        self.writer.submit(block)
        assert started.wait(10)
        return started, release


@pytest.fixture
def traced(tmp_path: Path) -> Iterator[Traced]:
    t = Traced(tmp_path / "db.sqlite3")
    yield t
    t.writer.close()


def insert(value: str):
    return lambda c: c.execute("INSERT INTO t(v) VALUES (?)", (value,)).lastrowid


def rows(path: Path) -> list[str]:
    """What another connection sees in the file: only committed rows."""
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT v FROM t ORDER BY id")]


def test_operations_queued_during_a_commit_share_the_next_one_in_fifo_order(traced: Traced):
    _, release = traced.hold()
    before = traced.commits()
    futures = [traced.writer.submit(insert(f"v{i}")) for i in range(20)]
    release.set()
    ids = [f.result(timeout=10) for f in futures]
    assert ids == sorted(ids) and len(set(ids)) == 20  # applied in submission order
    assert traced.commits() == before + 2  # the held operation's commit, then one for all 20
    assert rows(traced.writer.path) == [f"v{i}" for i in range(20)]


def test_concurrent_threads_each_get_their_own_result_after_commit(traced: Traced):
    results: dict[int, list[int]] = {}

    def caller(n: int) -> None:
        results[n] = [traced.writer.run(insert(f"{n}-{i}")) for i in range(25)]

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert sorted(results) == list(range(8))
    with sqlite3.connect(traced.writer.path) as conn:
        stored = dict(conn.execute("SELECT id, v FROM t").fetchall())
    for n, ids in results.items():
        assert [stored[i] for i in ids] == [f"{n}-{i}" for i in range(25)]


def test_coroutines_and_threads_share_batches(traced: Traced):
    async def scenario() -> list[int]:
        _, release = traced.hold()
        before = traced.commits()
        tasks = [asyncio.create_task(traced.writer.run_async(insert(f"a{i}"))) for i in range(10)]
        await asyncio.sleep(0)  # every task has queued its operation
        from_thread = traced.writer.submit(insert("t0"))
        release.set()
        ids = await asyncio.gather(*tasks)
        assert from_thread.result(timeout=10) > max(ids)
        assert traced.commits() == before + 2
        return ids

    assert len(set(asyncio.run(scenario()))) == 10
    assert rows(traced.writer.path) == [f"a{i}" for i in range(10)] + ["t0"]


def test_a_caller_that_stops_waiting_does_not_stop_the_writer(traced: Traced):
    async def scenario() -> None:
        _, release = traced.hold()
        task = asyncio.create_task(traced.writer.run_async(insert("queued")))
        same_batch = asyncio.create_task(traced.writer.run_async(insert("same batch")))
        await asyncio.sleep(0)
        task.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await asyncio.wait_for(same_batch, 10) == 2
        assert await traced.writer.run_async(insert("next")) == 3

    asyncio.run(scenario())
    # the cancelled caller's operation is applied all the same
    assert rows(traced.writer.path) == ["queued", "same batch", "next"]


def test_a_failing_operation_fails_only_its_caller_and_leaves_no_rows(traced: Traced):
    def half_then_fail(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO t(v) VALUES ('partial')")
        c.execute("INSERT INTO t(id, v) VALUES (1, 'duplicate')")

    _, release = traced.hold()
    first = traced.writer.submit(insert("first"))
    bad = traced.writer.submit(half_then_fail)
    last = traced.writer.submit(insert("last"))
    release.set()
    assert first.result(timeout=10) == 1
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE constraint failed: t.id"):
        bad.result(timeout=10)
    assert last.result(timeout=10) == 2
    assert rows(traced.writer.path) == ["first", "last"]


def test_a_python_error_in_an_operation_reaches_its_caller_unchanged(traced: Traced):
    def broken(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO t(v) VALUES ('rolled back')")
        raise ValueError("not storable: field x")

    with pytest.raises(ValueError, match="not storable: field x"):
        traced.writer.run(broken)
    assert traced.writer.run(insert("next")) == 1
    assert rows(traced.writer.path) == ["next"]


def test_a_failed_commit_fails_every_caller_of_its_batch_and_the_writer_goes_on(tmp_path: Path):
    def setup(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA foreign_keys=ON")
        conn.executescript(
            "CREATE TABLE p (id INTEGER PRIMARY KEY);"
            "CREATE TABLE c (id INTEGER PRIMARY KEY,"
            " p INTEGER REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED);"
        )

    writer = GroupCommitWriter(tmp_path / "fk.sqlite3", setup=setup)
    try:
        started, release = threading.Event(), threading.Event()
        writer.submit(lambda _c: (started.set(), release.wait(10)))
        assert started.wait(10)
        good = writer.submit(lambda c: c.execute("INSERT INTO p(id) VALUES (1)").lastrowid)
        orphan = writer.submit(lambda c: c.execute("INSERT INTO c(p) VALUES (99)").lastrowid)
        release.set()
        for future in (good, orphan):  # the deferred check fails the COMMIT itself
            with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY constraint failed"):
                future.result(timeout=10)
        assert writer.run(lambda c: c.execute("SELECT COUNT(*) FROM p").fetchone()[0]) == 0
        assert writer.run(lambda c: c.execute("INSERT INTO p(id) VALUES (2)").lastrowid) == 2
    finally:
        writer.close()


def test_durable_operations_commit_with_synchronous_full_others_with_normal(traced: Traced):
    def level(c: sqlite3.Connection) -> int:
        return int(c.execute("PRAGMA synchronous").fetchone()[0])

    assert traced.writer.run(level) == 2  # FULL
    assert traced.writer.run(level, durable=False) == 1  # NORMAL
    assert traced.writer.run(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0]) == "wal"
    _, release = traced.hold()
    lazy = traced.writer.submit(level, durable=False)
    durable = traced.writer.submit(level)
    release.set()
    # one durable operation makes its whole batch durable
    assert (lazy.result(timeout=10), durable.result(timeout=10)) == (2, 2)


KILLED_AFTER_ACK = """
import os, signal, sys
from pathlib import Path
from radflow.sdk.sqlite_writer import GroupCommitWriter
w = GroupCommitWriter(Path(sys.argv[1]), setup=lambda c: c.execute(
    "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)"))
futures = [w.submit(lambda c, i=i: c.execute("INSERT INTO t(v) VALUES (?)", (f"v{i}",)))
           for i in range(50)]
for f in futures:
    f.result()
print("acked", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_what_was_answered_survives_kill_9(tmp_path: Path):
    db = tmp_path / "crash.sqlite3"
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_ACK, str(db)], capture_output=True, text=True
    )
    assert proc.returncode == -9 and proc.stdout == "acked\n", proc.stderr
    assert rows(db) == [f"v{i}" for i in range(50)]


def test_flush_waits_for_everything_submitted_before(traced: Traced):
    _, release = traced.hold()
    futures = [traced.writer.submit(insert(f"v{i}")) for i in range(5)]
    threading.Timer(0.05, release.set).start()
    traced.writer.flush()
    assert all(f.done() for f in futures)
    assert rows(traced.writer.path) == [f"v{i}" for i in range(5)]


def test_close_commits_what_is_queued_then_refuses_more(tmp_path: Path):
    t = Traced(tmp_path / "db.sqlite3")
    _, release = t.hold()
    futures = [t.writer.submit(insert(f"v{i}")) for i in range(5)]
    threading.Timer(0.05, release.set).start()
    t.writer.close()
    assert [f.result(timeout=0) for f in futures] == [1, 2, 3, 4, 5]
    with pytest.raises(WriterClosed, match="db.sqlite3: the writer is closed"):
        t.writer.submit(insert("late"))
    t.writer.close()  # idempotent
    assert rows(tmp_path / "db.sqlite3") == [f"v{i}" for i in range(5)]


def test_a_failing_setup_is_raised_by_the_constructor(tmp_path: Path):
    def newer(conn: sqlite3.Connection) -> None:
        raise RuntimeError("schema version 9 is newer than this radflow")

    with pytest.raises(RuntimeError, match="schema version 9 is newer"):
        GroupCommitWriter(tmp_path / "db.sqlite3", setup=newer)
