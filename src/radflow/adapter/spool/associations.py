"""Associations in the spool index: opened at the first stored instance, then released or aborted.

Why a row per association: an instance only counts for its group once the association that
brought it was *released*; an *aborted* association's instances are discarded (they never
start a job). The row is committed before the association's first instance is acknowledged,
so an acknowledged file always names a known association (recovery depends on it).
Associations a crash or a dead receiver process left open were cut by us, not aborted by the
peer: recovery counts them as released.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass

from radflow.sdk.sqlite_writer import GroupCommitWriter

SCHEMA = """
CREATE TABLE IF NOT EXISTS associations (
    id TEXT PRIMARY KEY, called_ae TEXT NOT NULL, calling_ae TEXT NOT NULL,
    state TEXT NOT NULL, opened REAL NOT NULL, closed REAL
);
"""


@dataclass(frozen=True)
class AssociationRow:
    id: str
    called_ae: str
    calling_ae: str
    state: str


def delete_finished(c: sqlite3.Connection) -> None:
    """Drop closed associations that no instance row refers to any more (inside a transaction)."""
    c.execute(
        "DELETE FROM associations WHERE state!='open'"
        " AND NOT EXISTS(SELECT 1 FROM instances WHERE assoc_id=associations.id)"
    )


def release_open(c: sqlite3.Connection, now: float, only: Iterable[str] | None = None) -> int:
    """Count associations left open (all, or those in ``only``) as released; returns how many."""
    if only is None:
        return c.execute(
            "UPDATE associations SET state='released', closed=? WHERE state='open'", (now,)
        ).rowcount
    return c.executemany(
        "UPDATE associations SET state='released', closed=? WHERE id=? AND state='open'",
        [(now, a) for a in only],
    ).rowcount


def count_open(c: sqlite3.Connection) -> int:
    return int(c.execute("SELECT COUNT(*) FROM associations WHERE state='open'").fetchone()[0])


class Associations:
    def __init__(self, db: GroupCommitWriter) -> None:
        self.db = db

    def open(self, assoc_id: str, called_ae: str, calling_ae: str) -> None:
        now = time.time()
        self.db.run(
            lambda c: c.execute(
                "INSERT OR IGNORE INTO associations(id, called_ae, calling_ae, state, opened)"
                " VALUES (?,?,?,?,?)",
                (assoc_id, called_ae, calling_ae, "open", now),
            )
        )

    def close(self, assoc_id: str, *, released: bool) -> int:
        """Mark the association released, or aborted (its instances discarded); returns count."""
        now = time.time()

        def fn(c: sqlite3.Connection) -> int:
            cur = c.execute(
                "UPDATE associations SET state=?, closed=? WHERE id=? AND state='open'",
                ("released" if released else "aborted", now, assoc_id),
            )
            if cur.rowcount == 0:
                return 0
            if not released:
                c.execute("UPDATE instances SET discarded=1 WHERE assoc_id=?", (assoc_id,))
            row = c.execute(
                "SELECT COUNT(*) FROM instances WHERE assoc_id=?", (assoc_id,)
            ).fetchone()
            if row[0] == 0:
                c.execute("DELETE FROM associations WHERE id=?", (assoc_id,))
            return int(row[0])

        return self.db.run(fn)

    def rows(self) -> dict[str, AssociationRow]:
        return {
            r[0]: AssociationRow(*r)
            for r in self.db.run(
                lambda c: c.execute(
                    "SELECT id, called_ae, calling_ae, state FROM associations"
                ).fetchall()
            )
        }

    def release_interrupted(self, only: Iterable[str]) -> int:
        """Count the associations ``only`` as released if still open (their receiver died)."""
        wanted, now = list(only), time.time()
        return self.db.run(lambda c: release_open(c, now, wanted))
