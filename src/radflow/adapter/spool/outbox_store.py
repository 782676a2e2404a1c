"""The outbox table: job events waiting for the broker, and what became of them.

Why a table: events are inserted in the same transaction that emits their group (see
``groups.py``), so an event exists exactly when its group counts as emitted; the sender
(adapter/outbox.py) then delivers them at least once, with backoff kept here across restarts.
"""

from __future__ import annotations

import sqlite3
import time

from radflow.sdk.sqlite_writer import GroupCommitWriter

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY, event BLOB NOT NULL, state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL, created REAL NOT NULL,
    sent REAL, last_error TEXT
);
"""


def queue(c: sqlite3.Connection, events: list[tuple[str, bytes]], now: float) -> None:
    """Insert ``(event id, CloudEvent JSON)`` pairs as pending (inside the caller's transaction).

    An id already present is kept as it is: a re-emission after a crash repeats the same ids.
    """
    for event_id, body in events:
        c.execute(
            "INSERT OR IGNORE INTO outbox(id, event, state, next_at, created) VALUES (?,?,?,?,?)",
            (event_id, body, "pending", now, now),
        )


def count_pending(c: sqlite3.Connection) -> int:
    return int(c.execute("SELECT COUNT(*) FROM outbox WHERE state='pending'").fetchone()[0])


class OutboxStore:
    def __init__(self, db: GroupCommitWriter) -> None:
        self.db = db

    def due(self, now: float, limit: int = 64) -> list[tuple[str, bytes, int]]:
        return self.db.run(
            lambda c: [
                (r[0], bytes(r[1]), int(r[2]))
                for r in c.execute(
                    "SELECT id, event, attempts FROM outbox WHERE state='pending' AND next_at<=?"
                    " ORDER BY created LIMIT ?",
                    (now, limit),
                )
            ]
        )

    def next_due(self) -> float | None:
        row = self.db.run(
            lambda c: c.execute("SELECT MIN(next_at) FROM outbox WHERE state='pending'").fetchone()
        )
        return None if row is None or row[0] is None else float(row[0])

    def sent(self, event_id: str) -> None:
        now = time.time()
        self.db.run(
            lambda c: c.execute(
                "UPDATE outbox SET state='sent', sent=? WHERE id=?", (now, event_id)
            )
        )

    def retry(self, event_id: str, next_at: float, error: str) -> None:
        self.db.run(
            lambda c: c.execute(
                "UPDATE outbox SET attempts=attempts+1, next_at=?, last_error=? WHERE id=?",
                (next_at, error[:200], event_id),
            )
        )

    def counts(self) -> dict[str, int]:
        """Events by state (``pending``, ``sent``)."""
        return self.db.run(
            lambda c: dict(
                c.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall()
            )
        )
