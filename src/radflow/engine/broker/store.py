"""The broker's durable queue: one sqlite file (WAL, ``synchronous=FULL``).

Why sqlite: the ingress may only answer 202 once an event and all its per-Trigger deliveries
survive ``kill -9`` and power loss, and a reply must be stored in the same transaction that
marks the delivery that produced it done. sqlite gives both with one file and no server.

All statements run on the one writer thread of :mod:`radflow.sdk.sqlite_writer` (shared with
the adapter's spool), so the event loop never blocks on ``fsync``. Operations queued while a
commit is in flight are committed together (group commit): each still runs in its own
savepoint, so one failing operation does not take the others with it, and each caller is
answered only after the ``COMMIT`` that made its rows durable returned.

Tables: ``events`` (the accepted event as structured JSON plus pass-through headers) and
``deliveries`` (one row per event x Trigger: phase ``subscriber`` or ``dls``, attempts made in
that phase, wall-clock ``due`` time of the next attempt, and the error that sent it to the
dead-letter sink). A finished delivery row is deleted; an event goes with its last delivery.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from radflow.sdk.errors import Unavailable
from radflow.sdk.sqlite_writer import GroupCommitWriter, WriterClosed

T = TypeVar("T")

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
            "INSERT INTO deliveries(event_id, trigger, phase, attempt, due)"
            " VALUES (?, ?, 'subscriber', 0, ?)",
            (event_id, trigger, now),
        )
        ids.append(int(cur.lastrowid or 0))
    return event_id, ids


def finish(conn: sqlite3.Connection, delivery_id: int, event_id: int) -> bool:
    """Delete a finished delivery; delete its event too when it was the last. True if it existed."""
    gone = conn.execute("DELETE FROM deliveries WHERE id = ?", (delivery_id,)).rowcount
    conn.execute(
        "DELETE FROM events WHERE id = ?"
        " AND NOT EXISTS (SELECT 1 FROM deliveries WHERE event_id = ?)",
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
    """Async front of the sqlite file: :meth:`run` returns once the operation is committed.

    The group commit itself is :class:`radflow.sdk.sqlite_writer.GroupCommitWriter`, shared with
    the adapter's spool; this class owns the schema and maps sqlite errors to
    :class:`~radflow.sdk.errors.Unavailable` (the ingress answers 503, a delivery is retried).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: GroupCommitWriter | None = None

    async def open(self) -> tuple[dict[int, StoredEvent], list[StoredDelivery]]:
        """Open (creating) the file and return every event with pending deliveries."""
        self._writer = await asyncio.to_thread(
            GroupCommitWriter,
            self.path,
            setup=self._setup,
            max_batch=_BATCH,
            name="broker-sqlite",
        )
        return await self.run(_pending)

    def _setup(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA foreign_keys=ON")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise Unavailable(
                f"broker store {self.path}: schema version {version} is newer than this radflow"
            )
        conn.executescript(_SCHEMA)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    async def run(self, op: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        """Run ``op`` in a transaction; return after its COMMIT. Unavailable on sqlite errors.

        ``durable=True`` (the ingress' commits) returns only after the WAL is fsync'ed
        (``synchronous=FULL``). ``durable=False`` is for delivery bookkeeping (done, retry
        scheduled, dead-letter phase, reply stored with its delivery done): it skips the fsync
        (``synchronous=NORMAL``). WAL commits are never reordered, so a power cut can only lose
        the newest such commits, which puts those deliveries back to their previous state:
        they are attempted again (a duplicate, never a loss). A process crash loses nothing.
        """
        if self._writer is None:
            raise Unavailable("broker store is closed")
        try:
            return await self._writer.run_async(op, durable=durable)
        except WriterClosed:
            raise Unavailable("broker store is closed") from None
        except sqlite3.Error as exc:
            raise Unavailable(f"broker store {self.path}: {exc}") from exc

    async def close(self) -> None:
        """Commit what is queued, then close the file."""
        if self._writer is not None:
            await asyncio.to_thread(self._writer.close)
            self._writer = None

    async def count(self) -> tuple[int, int]:
        """(events, deliveries) currently stored; for tests and diagnostics."""
        return await self.run(
            lambda c: (
                c.execute("SELECT COUNT(*) FROM events").fetchone()[0],
                c.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0],
            )
        )


def _pending(conn: sqlite3.Connection) -> tuple[dict[int, StoredEvent], list[StoredDelivery]]:
    events = {
        row[0]: StoredEvent(row[0], row[1], bytes(row[2]), json.loads(row[3]))
        for row in conn.execute(
            "SELECT id, broker, body, headers FROM events"
            " WHERE id IN (SELECT event_id FROM deliveries)"
        )
    }
    deliveries = [
        StoredDelivery(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]) if r[6] else None)
        for r in conn.execute(
            "SELECT id, event_id, trigger, phase, attempt, due, error FROM deliveries ORDER BY id"
        )
    ]
    return events, deliveries
