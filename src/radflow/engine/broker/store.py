"""The broker's durable queue: one sqlite file (WAL, ``synchronous=FULL``).

Why sqlite: the ingress may only answer 202 once an event and all its per-Trigger deliveries
survive ``kill -9`` and power loss, and a reply must be stored in the same transaction that
marks the delivery that produced it done. sqlite gives both with one file and no server.

All statements run on one dedicated thread (sqlite connections are not shared across
threads), so the event loop never blocks on ``fsync``. Operations queued while a commit is
in flight are committed together (group commit): each still runs in its own savepoint, so one
failing operation does not take the others with it, and each caller is answered only after
the ``COMMIT`` that made its rows durable returned.

Tables: ``events`` (the accepted event as structured JSON plus pass-through headers) and
``deliveries`` (one row per event x Trigger: phase ``subscriber`` or ``dls``, attempts made in
that phase, wall-clock ``due`` time of the next attempt, and the error that sent it to the
dead-letter sink). A finished delivery row is deleted; an event goes with its last delivery.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from radflow.sdk.errors import Unavailable

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    broker TEXT NOT NULL,
    body BLOB NOT NULL,
    headers TEXT NOT NULL,
    accepted_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    event_id INTEGER NOT NULL REFERENCES events(id),
    trigger TEXT NOT NULL,
    phase TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    due REAL NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_event ON deliveries(event_id);
"""

_BATCH = 512


@dataclass
class StoredEvent:
    id: int
    broker: str
    body: bytes
    headers: dict[str, str]


@dataclass
class StoredDelivery:
    id: int
    event_id: int
    trigger: str
    phase: str
    attempt: int
    due: float
    error: dict[str, Any] | None


# ------------------------------------------------------------------ operations (writer thread)


def insert_event(
    conn: sqlite3.Connection,
    broker: str,
    body: bytes,
    headers: dict[str, str],
    triggers: Sequence[str],
    now: float,
) -> tuple[int, list[int]]:
    """Store one accepted event and a due-now subscriber delivery per matching Trigger."""
    cur = conn.execute(
        "INSERT INTO events(broker, body, headers, accepted_at) VALUES (?, ?, ?, ?)",
        (broker, body, json.dumps(headers), now),
    )
    event_id = int(cur.lastrowid or 0)
    ids = []
    for trigger in triggers:
        cur = conn.execute(
            "INSERT INTO deliveries(event_id, trigger, phase, attempt, due) VALUES (?, ?, 'subscriber', 0, ?)",
            (event_id, trigger, now),
        )
        ids.append(int(cur.lastrowid or 0))
    return event_id, ids


def finish(conn: sqlite3.Connection, delivery_id: int, event_id: int) -> bool:
    """Delete a finished delivery; delete its event too when it was the last. True if it existed."""
    gone = conn.execute("DELETE FROM deliveries WHERE id = ?", (delivery_id,)).rowcount
    conn.execute(
        "DELETE FROM events WHERE id = ? AND NOT EXISTS (SELECT 1 FROM deliveries WHERE event_id = ?)",
        (event_id, event_id),
    )
    return bool(gone)


def reschedule(conn: sqlite3.Connection, delivery_id: int, attempt: int, due: float) -> None:
    conn.execute(
        "UPDATE deliveries SET attempt = ?, due = ? WHERE id = ?", (attempt, due, delivery_id)
    )


def to_dead_letter(
    conn: sqlite3.Connection, delivery_id: int, error: dict[str, Any], due: float
) -> None:
    conn.execute(
        "UPDATE deliveries SET phase = 'dls', attempt = 0, due = ?, error = ? WHERE id = ?",
        (due, json.dumps(error), delivery_id),
    )


# ------------------------------------------------------------------ the store


class Store:
    """Async front of the sqlite file: :meth:`run` returns once the operation is committed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="broker-sqlite"
        )
        self._conn: sqlite3.Connection | None = None
        self._queue: asyncio.Queue[tuple[Op, asyncio.Future[Any], bool] | None] = asyncio.Queue()
        self._synchronous = "FULL"
        self._writer: asyncio.Task[None] | None = None

    async def open(self) -> tuple[dict[int, StoredEvent], list[StoredDelivery]]:
        """Open (creating) the file and return every event with pending deliveries."""
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self._executor, self._open_sync)
        self._writer = asyncio.create_task(self._write_loop(), name="broker-store-writer")
        return result

    def _open_sync(self) -> tuple[dict[int, StoredEvent], list[StoredDelivery]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise Unavailable(
                f"broker store {self.path}: schema version {version} is newer than this radflow"
            )
        conn.executescript(_SCHEMA)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._conn = conn
        events = {
            row[0]: StoredEvent(row[0], row[1], bytes(row[2]), json.loads(row[3]))
            for row in conn.execute(
                "SELECT id, broker, body, headers FROM events WHERE id IN (SELECT event_id FROM deliveries)"
            )
        }
        deliveries = [
            StoredDelivery(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]) if r[6] else None)
            for r in conn.execute(
                "SELECT id, event_id, trigger, phase, attempt, due, error FROM deliveries ORDER BY id"
            )
        ]
        return events, deliveries

    async def run(self, op: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        """Run ``op`` in a transaction; return after its COMMIT. Raises Unavailable on sqlite errors.

        ``durable=True`` (the ingress' commits) returns only after the WAL is fsync'ed
        (``synchronous=FULL``). ``durable=False`` is for delivery bookkeeping (done, retry
        scheduled, dead-letter phase, reply stored with its delivery done): it skips the fsync
        (``synchronous=NORMAL``). WAL commits are never reordered, so a power cut can only lose
        the newest such commits, which puts those deliveries back to their previous state:
        they are attempted again (a duplicate, never a loss). A process crash loses nothing.
        """
        if self._writer is None or self._writer.done():
            raise Unavailable("broker store is closed")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._queue.put((op, fut, durable))
        return await fut

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < _BATCH:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            try:
                durable = any(d for _, _, d in batch)
                results = await loop.run_in_executor(
                    self._executor, self._apply, [op for op, _, _ in batch], durable
                )
            except sqlite3.Error as exc:
                error = Unavailable(f"broker store {self.path}: commit failed: {exc}")
                results = [(False, error)] * len(batch)
            for (_, fut, _), (ok, value) in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)

    def _apply(self, ops: list[Op], durable: bool) -> list[tuple[bool, Any]]:
        conn = self._conn
        assert conn is not None
        wanted = "FULL" if durable else "NORMAL"
        if wanted != self._synchronous:
            conn.execute(f"PRAGMA synchronous={wanted}")
            self._synchronous = wanted
        results: list[tuple[bool, Any]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for op in ops:
                conn.execute("SAVEPOINT op")
                try:
                    value = op(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    if isinstance(exc, sqlite3.Error):
                        exc = Unavailable(f"broker store {self.path}: {exc}")
                    results.append((False, exc))
                else:
                    conn.execute("RELEASE op")
                    results.append((True, value))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results

    async def close(self) -> None:
        """Commit what is queued, then close the file."""
        if self._writer is not None:
            await self._queue.put(None)
            await self._writer
            self._writer = None
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close_sync)
        self._executor.shutdown(wait=True)

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def count(self) -> tuple[int, int]:
        """(events, deliveries) currently stored; for tests and diagnostics."""
        return await self.run(
            lambda c: (
                c.execute("SELECT COUNT(*) FROM events").fetchone()[0],
                c.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0],
            )
        )
