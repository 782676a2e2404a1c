"""The instance index: one row per acknowledged instance, from its ack until its group is emitted.

Why: the uploader needs what is still to upload, the emitter what is uploaded and released,
and the janitor what an abort discarded; the spool file alone cannot say. A row is written
behind the ack (the fsync'd file is the record, see ``files.py``), queued in FIFO order on the
spool's one writer, so an instance's row always precedes the release or abort of its
association. Rows hold UIDs: the spool lives on the adapter's own volume, never in logs or
events.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from radflow.adapter.spool import associations, groups
from radflow.sdk.sqlite_writer import GroupCommitWriter

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    assoc_id TEXT NOT NULL, group_id TEXT NOT NULL, called_ae TEXT NOT NULL,
    study_uid TEXT NOT NULL, series_uid TEXT NOT NULL, sop_uid TEXT NOT NULL,
    sop_class TEXT NOT NULL, ts_uid TEXT NOT NULL, spool_name TEXT NOT NULL, key TEXT NOT NULL,
    size INTEGER, sha256 TEXT, uploaded INTEGER NOT NULL DEFAULT 0,
    discarded INTEGER NOT NULL DEFAULT 0, received REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_group ON instances(group_id);
CREATE INDEX IF NOT EXISTS instances_assoc ON instances(assoc_id);
CREATE UNIQUE INDEX IF NOT EXISTS instances_spool ON instances(spool_name);
"""


@dataclass(frozen=True)
class InstanceRecord:
    """One acknowledged instance as the index stores it."""

    assoc_id: str
    group_id: str
    called_ae: str
    calling_ae: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class: str
    ts_uid: str
    spool_name: str
    key: str
    received: float


@dataclass(frozen=True)
class PendingUpload:
    spool_name: str
    key: str


def _log_failure(future: Future[Any]) -> None:
    exc = future.exception()
    if exc is not None:
        log.error(
            "indexing a spooled instance failed (%s); it is re-indexed at the next start",
            type(exc).__name__,
        )


def counts(c: sqlite3.Connection) -> dict[str, int]:
    """indexed / spooled (waiting for upload) / discarded rows."""
    r = c.execute(
        "SELECT COUNT(*), COALESCE(SUM(uploaded=0 AND discarded=0),0),"
        " COALESCE(SUM(discarded),0) FROM instances"
    ).fetchone()
    return {"indexed": r[0], "spooled": r[1], "discarded": r[2]}


class InstanceIndex:
    def __init__(self, db: GroupCommitWriter) -> None:
        self.db = db

    def add(self, rec: InstanceRecord, *, wait: bool = False) -> None:
        """Index an instance whose file ``SpoolFiles.take_file`` made durable (queued; FIFO)."""

        def fn(c: sqlite3.Connection) -> int:
            cur = c.execute(
                "INSERT INTO instances(assoc_id, group_id, called_ae, study_uid, series_uid,"
                " sop_uid, sop_class, ts_uid, spool_name, key, received)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    rec.assoc_id,
                    rec.group_id,
                    rec.called_ae,
                    rec.study_uid,
                    rec.series_uid,
                    rec.sop_uid,
                    rec.sop_class,
                    rec.ts_uid,
                    rec.spool_name,
                    rec.key,
                    rec.received,
                ),
            )
            groups.touch(
                c, rec.group_id, rec.called_ae, rec.study_uid, rec.calling_ae, rec.received
            )
            return int(cur.lastrowid or 0)

        future = self.db.submit(fn)
        if wait:
            future.result()
        else:
            future.add_done_callback(_log_failure)

    def spool_names(self) -> tuple[set[str], set[str]]:
        """(every indexed spool name, those already uploaded)."""
        rows = self.db.run(
            lambda c: c.execute("SELECT spool_name, uploaded FROM instances").fetchall()
        )
        return {r[0] for r in rows}, {r[0] for r in rows if r[1] == 1}

    def pending_uploads(self) -> list[PendingUpload]:
        return self.db.run(
            lambda c: [
                PendingUpload(r[0], r[1])
                for r in c.execute(
                    "SELECT spool_name, key FROM instances"
                    " WHERE uploaded=0 AND discarded=0 ORDER BY id"
                )
            ]
        )

    def mark_uploaded(
        self, spool_name: str, size: int, sha256: str, key: str | None = None
    ) -> bool:
        """Record a finished upload (under ``key`` if it moved); False if discarded meanwhile."""

        def fn(c: sqlite3.Connection) -> bool:
            c.execute(
                "UPDATE instances SET uploaded=1, size=?, sha256=?, key=COALESCE(?, key)"
                " WHERE spool_name=?",
                (size, sha256, key, spool_name),
            )
            row = c.execute(
                "SELECT discarded FROM instances WHERE spool_name=?", (spool_name,)
            ).fetchone()
            return bool(row) and row[0] == 0

        return self.db.run(fn)

    def discarded(self) -> list[tuple[int, str, str, bool, bool]]:
        """Discarded rows: (id, spool_name, key, uploaded, key still needed by a live row or
        an emitted revision)."""
        return self.db.run(
            lambda c: [
                (r[0], r[1], r[2], bool(r[3]), bool(r[4]))
                for r in c.execute(
                    "SELECT i.id, i.spool_name, i.key, i.uploaded,"
                    " EXISTS(SELECT 1 FROM instances j WHERE j.key=i.key AND j.discarded=0)"
                    " OR COALESCE((SELECT g.next_revision FROM groups g WHERE g.id=i.group_id), 0)"
                    " > 0"
                    " FROM instances i WHERE i.discarded=1"
                )
            ]
        )

    def forget(self, ids: Iterable[int]) -> None:
        """Delete rows the janitor cleaned up, and the closed associations left without rows."""
        ids = list(ids)

        def fn(c: sqlite3.Connection) -> None:
            c.executemany("DELETE FROM instances WHERE id=?", [(i,) for i in ids])
            associations.delete_finished(c)

        self.db.run(fn)

    def key_in_use(self, key: str) -> bool:
        return self.db.run(
            lambda c: (
                c.execute(
                    "SELECT 1 FROM instances WHERE key=? AND discarded=0 LIMIT 1", (key,)
                ).fetchone()
                is not None
            )
        )
