"""The drop trigger's checkpoint: which inbox objects (key and ETag) were already indexed.

Why: the drop trigger indexes an object, then deletes it from the inbox; a crash in between
must not index it twice. An object whose key and ETag are recorded here is only deleted
(adapter/drop.py); a new ETag under the same key is a new object.
"""

from __future__ import annotations

from radflow.sdk.sqlite_writer import GroupCommitWriter

SCHEMA = """
CREATE TABLE IF NOT EXISTS drop_seen (
    key TEXT PRIMARY KEY, etag TEXT NOT NULL, outcome TEXT NOT NULL
);
"""


class DropsSeen:
    def __init__(self, db: GroupCommitWriter) -> None:
        self.db = db

    def etag(self, key: str) -> str | None:
        """The ETag recorded for ``key``, or ``None`` if it was never indexed."""
        row = self.db.run(
            lambda c: c.execute("SELECT etag FROM drop_seen WHERE key=?", (key,)).fetchone()
        )
        return None if row is None else str(row[0])

    def mark(self, key: str, etag: str, outcome: str) -> None:
        self.db.run(
            lambda c: c.execute(
                "INSERT INTO drop_seen(key, etag, outcome) VALUES (?,?,?)"
                " ON CONFLICT(key) DO UPDATE SET etag=excluded.etag, outcome=excluded.outcome",
                (key, etag, outcome),
            )
        )
