"""Bringing the index back in line with the files after ``kill -9`` or a dead receiver process.

Why: an instance is acknowledged once its file is fsync'd; its index row follows behind the
ack, so a crash can leave acknowledged files without rows. They are indexed from their DICOM
header (``describe``, the C-STORE handlers' own rule); a file that cannot be described is
moved to ``quarantine/``, never deleted. Half-received temp files were never acknowledged and
are removed. Associations left open were cut by us, not aborted by the peer: their instances
are kept and the associations count as released.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from radflow.adapter.spool import associations as assoc_table
from radflow.adapter.spool import index as index_table
from radflow.adapter.spool import outbox_store
from radflow.adapter.spool.associations import AssociationRow, Associations
from radflow.adapter.spool.files import SpoolFiles
from radflow.adapter.spool.index import InstanceIndex, InstanceRecord
from radflow.sdk.sqlite_writer import GroupCommitWriter

log = logging.getLogger(__name__)

#: rebuilds the index row of an acknowledged file, or ``None`` if it cannot
Describe = Callable[[Path, AssociationRow], InstanceRecord | None]


def reindex(
    files: SpoolFiles,
    index: InstanceIndex,
    associations: Associations,
    describe: Describe,
    only: set[str] | None = None,
) -> int:
    """Index acknowledged files without a row (of the associations ``only``, or all)."""
    known, uploaded = index.spool_names()
    assocs = associations.rows()
    reindexed = 0
    for f in files.acknowledged():
        owner = files.association_of(f.name)
        if only is not None and owner not in only:
            continue
        if f.name in uploaded:
            f.unlink(missing_ok=True)  # uploaded before the crash, not yet removed
            continue
        if f.name in known:
            continue
        row = assocs.get(owner)
        rec = describe(f, row) if row is not None and row.state != "aborted" else None
        if rec is None:
            log.error(
                "spooled file cannot be re-indexed; moved to quarantine/",
                extra={"spool_file": f.name},
            )
            files.quarantine(f)
            continue
        index.add(rec, wait=True)
        reindexed += 1
    return reindexed


def recover(
    files: SpoolFiles,
    db: GroupCommitWriter,
    index: InstanceIndex,
    associations: Associations,
    describe: Describe,
) -> dict[str, int]:
    """At start-up: temp files removed, unindexed files indexed, open associations released.

    Returns what it found: ``interrupted_associations``, ``pending_uploads``,
    ``pending_events``, ``reindexed``.
    """
    files.drop_partial_receives()
    reindexed = reindex(files, index, associations, describe)
    now = time.time()

    def fn(c: sqlite3.Connection) -> dict[str, int]:
        return {
            "interrupted_associations": assoc_table.release_open(c, now),
            "pending_uploads": index_table.counts(c)["spooled"],
            "pending_events": outbox_store.count_pending(c),
        }

    stats = db.run(fn)
    stats["reindexed"] = reindexed
    return stats


def recover_associations(
    files: SpoolFiles,
    index: InstanceIndex,
    associations: Associations,
    assoc_ids: Iterable[str],
    describe: Describe,
) -> int:
    """A receiver process died: its open associations were cut by *us*, like a crash.

    Their acknowledged files are indexed (a row may not have reached us) and the associations
    count as released, exactly as after a restart. Returns the number of files indexed here.
    """
    wanted = set(assoc_ids)
    if not wanted:
        return 0
    reindexed = reindex(files, index, associations, describe, wanted)
    associations.release_interrupted(wanted)
    return reindexed
