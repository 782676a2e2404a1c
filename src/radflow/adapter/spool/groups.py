"""Study groups in the spool index: what each group holds, and the one transaction that emits it.

Why: a group is emitted revision by revision (adapter/grouping.py decides when); its row keeps
the next revision number and the previous revision's manifest, so a later revision lists what
came before. Emitting is atomic: the job events enter the outbox, the emitted instance rows go
and the revision advances in one transaction, so a crash either keeps or loses all three
(and the group is emitted again with the same deterministic ids).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from radflow.adapter.spool import associations, outbox_store
from radflow.sdk.sqlite_writer import GroupCommitWriter

SCHEMA = """
CREATE TABLE IF NOT EXISTS groups (
    id TEXT PRIMARY KEY, called_ae TEXT NOT NULL, study_uid TEXT NOT NULL,
    calling_ae TEXT NOT NULL DEFAULT '', next_revision INTEGER NOT NULL DEFAULT 0,
    last_activity REAL NOT NULL, last_manifest TEXT
);
"""


@dataclass(frozen=True)
class GroupRow:
    group_id: str
    called_ae: str
    study_uid: str
    calling_ae: str
    next_revision: int
    last_activity: float
    last_manifest: str | None
    open_instances: int
    ready_instances: int
    unuploaded: int


@dataclass(frozen=True)
class ReadyInstance:
    id: int
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class: str
    ts_uid: str
    key: str
    size: int
    sha256: str


def touch(
    c: sqlite3.Connection,
    group_id: str,
    called_ae: str,
    study_uid: str,
    calling_ae: str,
    received: float,
) -> None:
    """A new instance joined ``group_id``: create the group or move its last activity on."""
    c.execute(
        "INSERT INTO groups(id, called_ae, study_uid, calling_ae, last_activity) VALUES (?,?,?,?,?)"
        " ON CONFLICT(id) DO UPDATE SET last_activity=MAX(last_activity, excluded.last_activity),"
        " calling_ae=excluded.calling_ae",
        (group_id, called_ae, study_uid, calling_ae, received),
    )


class Groups:
    def __init__(self, db: GroupCommitWriter) -> None:
        self.db = db

    def rows(self) -> list[GroupRow]:
        """Every group that has live, not yet emitted instances."""
        sql = (
            "SELECT g.id, g.called_ae, g.study_uid, g.calling_ae, g.next_revision,"
            " g.last_activity, g.last_manifest,"
            " SUM(a.state='open'), SUM(a.state='released'),"
            " SUM(a.state='released' AND i.uploaded=0)"
            " FROM instances i JOIN associations a ON a.id=i.assoc_id"
            " JOIN groups g ON g.id=i.group_id"
            " WHERE i.discarded=0 GROUP BY g.id"
        )
        return self.db.run(
            lambda c: [
                GroupRow(
                    r[0],
                    r[1],
                    r[2],
                    r[3],
                    int(r[4]),
                    float(r[5]),
                    r[6],
                    int(r[7] or 0),
                    int(r[8] or 0),
                    int(r[9] or 0),
                )
                for r in c.execute(sql)
            ]
        )

    def ready_instances(self, group_id: str) -> list[ReadyInstance]:
        """Uploaded instances of released associations in ``group_id``, in arrival order."""
        sql = (
            "SELECT i.id, i.study_uid, i.series_uid, i.sop_uid, i.sop_class, i.ts_uid, i.key,"
            " i.size, i.sha256"
            " FROM instances i JOIN associations a ON a.id=i.assoc_id"
            " WHERE i.group_id=? AND i.discarded=0 AND i.uploaded=1 AND a.state='released'"
            " ORDER BY i.id"
        )
        return self.db.run(lambda c: [ReadyInstance(*r) for r in c.execute(sql, (group_id,))])

    def commit_emission(
        self,
        group_id: str,
        revision: int,
        manifest_key: str | None,
        instance_ids: list[int],
        events: list[tuple[str, bytes]],
    ) -> bool:
        """Atomically: queue ``events`` in the outbox, drop the emitted rows, advance the revision.

        Returns ``False`` (and changes nothing) if another emission of this revision won.
        """
        now = time.time()

        def fn(c: sqlite3.Connection) -> bool:
            row = c.execute("SELECT next_revision FROM groups WHERE id=?", (group_id,)).fetchone()
            if row is None or row[0] != revision:
                return False
            outbox_store.queue(c, events, now)
            c.executemany("DELETE FROM instances WHERE id=?", [(i,) for i in instance_ids])
            if manifest_key is not None:
                c.execute(
                    "UPDATE groups SET next_revision=?, last_manifest=? WHERE id=?",
                    (revision + 1, manifest_key, group_id),
                )
            associations.delete_finished(c)
            return True

        return self.db.run(fn)
