"""The durable spool: received files on local disk plus a SQLite index, both crash-safe.

Why: C-STORE success may only be answered once the instance cannot be lost, and writing each
instance to S3 inside the handler costs a round trip per instance. Instead the handler makes
the file durable in the spool (``files.py``) and acknowledges; the index row follows on the
spool's one group-commit writer (:mod:`radflow.sdk.sqlite_writer`, ``synchronous=FULL``), in
FIFO order. An uploader drains the spool to S3; restarting resumes it (``recovery.py``).

One database (``<root>/index.sqlite3``) and one writer, shared by the parts, each owning its
table(s) and the statements on them:

==================  =====================================================================
``files.py``        ``tmp/``, ``data/`` (fsync'd instance files), ``quarantine/``
``associations.py`` ``associations``: open, released or aborted
``index.py``        ``instances``: one row per acknowledged instance, upload state
``groups.py``       ``groups``: revisions, and the transaction that emits a group
``outbox_store.py`` ``outbox``: job events waiting for the broker
``drops.py``        ``drop_seen``: the drop trigger's checkpoint
``recovery.py``     the index brought back in line with the files after a crash
==================  =====================================================================

:class:`Spool` opens them together; the C-STORE handlers see it through their ``SpoolPort``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

from radflow.adapter.spool import associations, drops, groups, index, outbox_store, recovery
from radflow.adapter.spool.associations import Associations
from radflow.adapter.spool.drops import DropsSeen
from radflow.adapter.spool.files import SpoolFiles
from radflow.adapter.spool.groups import Groups
from radflow.adapter.spool.index import InstanceIndex, InstanceRecord
from radflow.adapter.spool.outbox_store import OutboxStore
from radflow.sdk.sqlite_writer import GroupCommitWriter

DB_NAME = "index.sqlite3"
#: the tables as the single-module spool created them (no user_version): existing spools open
SCHEMA = "".join(m.SCHEMA for m in (associations, index, groups, outbox_store, drops))


def _create_tables(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)


class Spool:
    """The spool's folders and index. ``close()`` stops the writer; a new instance recovers."""

    def __init__(self, root: Path) -> None:
        self.files = SpoolFiles(root)
        self.db = GroupCommitWriter(
            self.files.root / DB_NAME, setup=_create_tables, max_batch=256, name="spool-writer"
        )
        self.associations = Associations(self.db)
        self.index = InstanceIndex(self.db)
        self.groups = Groups(self.db)
        self.outbox = OutboxStore(self.db)
        self.drops = DropsSeen(self.db)

    @property
    def root(self) -> Path:
        return self.files.root

    def close(self) -> None:
        """Commit what is queued and close the index and the folder handle. Idempotent."""
        if self.db.closed:
            return
        self.db.close()
        self.files.close()

    # -- SpoolPort: what the in-process C-STORE handlers write ------------------------------------

    def take_file(self, src: Path, assoc_id: str) -> str:
        return self.files.take_file(src, assoc_id)

    def open_association(self, assoc_id: str, called_ae: str, calling_ae: str) -> None:
        self.associations.open(assoc_id, called_ae, calling_ae)

    def add_instance(self, rec: InstanceRecord) -> None:
        self.index.add(rec)  # queued behind the ack

    def close_association(self, assoc_id: str, *, released: bool) -> int:
        return self.associations.close(assoc_id, released=released)

    # -- recovery and status --------------------------------------------------------------------

    def recover(self, describe: recovery.Describe) -> dict[str, int]:
        """At start-up, after a possible crash: see ``recovery.py``. Returns what it found."""
        return recovery.recover(self.files, self.db, self.index, self.associations, describe)

    def recover_associations(self, assoc_ids: Iterable[str], describe: recovery.Describe) -> int:
        """A receiver process died with ``assoc_ids`` open: see ``recovery.py``."""
        return recovery.recover_associations(
            self.files, self.index, self.associations, assoc_ids, describe
        )

    def stats(self) -> dict[str, int]:
        return self.db.run(
            lambda c: {**index.counts(c), "open_associations": associations.count_open(c)}
        )
