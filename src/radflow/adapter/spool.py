"""The durable spool: received files on local disk plus an SQLite index, both crash-safe.

Why: C-STORE success may only be answered once the instance cannot be lost. Writing each
instance to S3 inside the handler costs a round trip per instance; instead the received file is
renamed into ``data/<association id>-<uuid>.dcm`` and then ``fsync``'d, file and folder, before
the handler returns. The file *is* the durable record: its name says which association brought
it, the association row was committed when the association stored its first instance, and the
DICOM header says the rest. Its index row (SQLite, WAL, ``synchronous=FULL``) is written
asynchronously, behind the ack; a file without a row after ``kill -9`` is re-indexed by
:meth:`Spool.recover`. An uploader drains the spool to S3; restarting resumes it.

All index writes go through one writer thread that commits whatever is queued in one
transaction (group commit), in FIFO order, so an instance's row always precedes the release or
abort of its association.

Index rows hold UIDs; the spool lives on the adapter's own volume, never in logs or events.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS associations (
    id TEXT PRIMARY KEY, called_ae TEXT NOT NULL, calling_ae TEXT NOT NULL,
    state TEXT NOT NULL, opened REAL NOT NULL, closed REAL
);
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
CREATE TABLE IF NOT EXISTS groups (
    id TEXT PRIMARY KEY, called_ae TEXT NOT NULL, study_uid TEXT NOT NULL,
    calling_ae TEXT NOT NULL DEFAULT '', next_revision INTEGER NOT NULL DEFAULT 0,
    last_activity REAL NOT NULL, last_manifest TEXT
);
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY, event BLOB NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL, created REAL NOT NULL, sent REAL, last_error TEXT
);
CREATE TABLE IF NOT EXISTS drop_seen (key TEXT PRIMARY KEY, etag TEXT NOT NULL, outcome TEXT NOT NULL);
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


@dataclass(frozen=True)
class AssociationRow:
    id: str
    called_ae: str
    calling_ae: str
    state: str


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


def _log_failure(future: Future[Any]) -> None:
    exc = future.exception()
    if exc is not None:
        log.error(
            "indexing a spooled instance failed (%s); it is re-indexed at the next start",
            type(exc).__name__,
        )


class _Job:
    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        self.fn = fn
        self.future: Future[Any] = Future()


class SpoolFiles:
    """The spool's folders: ``tmp/`` (half-received), ``data/`` (acknowledged, fsync'd).

    This half needs no index, so a receiver process (adapter/receiver_worker.py) uses it to make
    instances durable itself, while the adapter process alone owns the SQLite index.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"
        self.data_dir = self.root / "data"
        for d in (self.root, self.tmp_dir, self.data_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._dir_fd = os.open(self.data_dir, os.O_RDONLY)

    def close_files(self) -> None:
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1

    # -- files -----------------------------------------------------------------------------------

    def take_file(self, src: Path, assoc_id: str) -> str:
        """Move ``src`` into ``data/`` and make it durable; returns its spool name.

        Rename first, then fsync the file and the folder: the file's fsync commits the journal
        transaction holding the rename on ext4/XFS, so the folder's fsync is usually free.
        """
        name = f"{assoc_id}-{uuid.uuid4().hex}.dcm"
        dst = self.data_dir / name
        os.replace(src, dst)
        fd = os.open(dst, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.fsync(self._dir_fd)
        return name

    @staticmethod
    def association_of(spool_name: str) -> str:
        return spool_name.rsplit("-", 1)[0]

    def path(self, spool_name: str) -> Path:
        return self.data_dir / spool_name

    def unlink(self, spool_name: str) -> None:
        try:
            os.unlink(self.data_dir / spool_name)
        except FileNotFoundError:
            pass


class Spool(SpoolFiles):
    """Spool folders and index. ``close()`` stops the writer; a new instance recovers the state."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self._conn = sqlite3.connect(
            self.root / "index.sqlite3", isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._writer, name="spool-writer", daemon=True)
        self._closed = False
        self._thread.start()

    # -- writer thread ---------------------------------------------------------------------------

    def _writer(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            batch = [job]
            stop = False
            while len(batch) < 256:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._run_batch(batch)
            if stop:
                return

    def _run_batch(self, batch: list[_Job]) -> None:
        results: list[tuple[_Job, Any, BaseException | None]] = []
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                self._conn.execute("SAVEPOINT job")
                try:
                    value = job.fn(self._conn)
                except BaseException as exc:
                    self._conn.execute("ROLLBACK TO job")
                    self._conn.execute("RELEASE job")
                    results.append((job, None, exc))
                else:
                    self._conn.execute("RELEASE job")
                    results.append((job, value, None))
            self._conn.execute("COMMIT")
        except BaseException as exc:
            log.exception("spool index commit failed")
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        for job, value, exc in results:
            if exc is not None:
                job.future.set_exception(exc)
            else:
                job.future.set_result(value)

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> Future[T]:
        if self._closed:
            raise RuntimeError("spool is closed")
        job = _Job(fn)
        self._queue.put(job)
        return job.future

    def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in the writer thread inside a committed transaction; returns its result."""
        return self.submit(fn).result()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=10)
        self._conn.close()
        self.close_files()

    # -- associations ----------------------------------------------------------------------------

    def open_association(self, assoc_id: str, called_ae: str, calling_ae: str) -> None:
        now = time.time()
        self.run(
            lambda c: c.execute(
                "INSERT OR IGNORE INTO associations(id, called_ae, calling_ae, state, opened) VALUES (?,?,?,?,?)",
                (assoc_id, called_ae, calling_ae, "open", now),
            )
        )

    def close_association(self, assoc_id: str, *, released: bool) -> int:
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

        return self.run(fn)

    def add_instance(self, rec: InstanceRecord, *, wait: bool = False) -> None:
        """Index an instance whose file :meth:`take_file` made durable (queued; FIFO)."""

        def fn(c: sqlite3.Connection) -> int:
            cur = c.execute(
                "INSERT INTO instances(assoc_id, group_id, called_ae, study_uid, series_uid, sop_uid,"
                " sop_class, ts_uid, spool_name, key, received) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
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
            c.execute(
                "INSERT INTO groups(id, called_ae, study_uid, calling_ae, last_activity) VALUES (?,?,?,?,?)"
                " ON CONFLICT(id) DO UPDATE SET last_activity=MAX(last_activity, excluded.last_activity),"
                " calling_ae=excluded.calling_ae",
                (rec.group_id, rec.called_ae, rec.study_uid, rec.calling_ae, rec.received),
            )
            return int(cur.lastrowid or 0)

        future = self.submit(fn)
        if wait:
            future.result()
        else:
            future.add_done_callback(_log_failure)

    def recover(
        self, describe: Callable[[Path, AssociationRow], InstanceRecord | None]
    ) -> dict[str, int]:
        """After a crash: associations left open were cut by *us*, not aborted by the peer.

        Their instances were acknowledged, so they are kept and the associations count as
        released. Files acknowledged but not yet indexed are indexed now (``describe`` reads
        their header); half-received temp files were never acknowledged and are removed.
        """
        for leftover in self.tmp_dir.iterdir():
            try:
                leftover.unlink()
            except OSError:
                pass
        now = time.time()

        def fn(c: sqlite3.Connection) -> dict[str, int]:
            opened = c.execute(
                "UPDATE associations SET state='released', closed=? WHERE state='open'", (now,)
            )
            pending = c.execute(
                "SELECT COUNT(*) FROM instances WHERE uploaded=0 AND discarded=0"
            ).fetchone()[0]
            outbox = c.execute("SELECT COUNT(*) FROM outbox WHERE state='pending'").fetchone()[0]
            return {
                "interrupted_associations": opened.rowcount,
                "pending_uploads": pending,
                "pending_events": outbox,
            }

        reindexed = self._reindex(describe, None)
        stats = self.run(fn)
        stats["reindexed"] = reindexed
        return stats

    def recover_associations(
        self,
        assoc_ids: Iterable[str],
        describe: Callable[[Path, AssociationRow], InstanceRecord | None],
    ) -> int:
        """A receiver process died: its open associations were cut by *us*, like a crash.

        Their acknowledged files are indexed (a row may not have reached us) and the
        associations count as released, exactly as :meth:`recover` does after a restart.
        Returns the number of files indexed here.
        """
        wanted = set(assoc_ids)
        if not wanted:
            return 0
        reindexed = self._reindex(describe, wanted)
        now = time.time()
        self.run(
            lambda c: c.executemany(
                "UPDATE associations SET state='released', closed=? WHERE id=? AND state='open'",
                [(now, a) for a in wanted],
            )
        )
        return reindexed

    def _reindex(
        self,
        describe: Callable[[Path, AssociationRow], InstanceRecord | None],
        only: set[str] | None,
    ) -> int:
        """Index acknowledged files without a row (of the associations ``only``, or all)."""
        known = set(
            self.run(lambda c: [r[0] for r in c.execute("SELECT spool_name FROM instances")])
        )
        uploaded = set(
            self.run(
                lambda c: [
                    r[0] for r in c.execute("SELECT spool_name FROM instances WHERE uploaded=1")
                ]
            )
        )
        assocs = {
            r[0]: AssociationRow(*r)
            for r in self.run(
                lambda c: c.execute(
                    "SELECT id, called_ae, calling_ae, state FROM associations"
                ).fetchall()
            )
        }
        reindexed = 0
        for f in sorted(self.data_dir.iterdir()):
            owner = self.association_of(f.name)
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
                (self.root / "quarantine").mkdir(exist_ok=True)
                os.replace(f, self.root / "quarantine" / f.name)
                continue
            self.add_instance(rec, wait=True)
            reindexed += 1
        return reindexed

    # -- uploads ---------------------------------------------------------------------------------

    def pending_uploads(self) -> list[PendingUpload]:
        return self.run(
            lambda c: [
                PendingUpload(r[0], r[1])
                for r in c.execute(
                    "SELECT spool_name, key FROM instances WHERE uploaded=0 AND discarded=0 ORDER BY id"
                )
            ]
        )

    def mark_uploaded(
        self, spool_name: str, size: int, sha256: str, key: str | None = None
    ) -> bool:
        """Record a finished upload (under ``key`` if it moved); ``False`` if discarded meanwhile."""

        def fn(c: sqlite3.Connection) -> bool:
            c.execute(
                "UPDATE instances SET uploaded=1, size=?, sha256=?, key=COALESCE(?, key) WHERE spool_name=?",
                (size, sha256, key, spool_name),
            )
            row = c.execute(
                "SELECT discarded FROM instances WHERE spool_name=?", (spool_name,)
            ).fetchone()
            return bool(row) and row[0] == 0

        return self.run(fn)

    def discarded(self) -> list[tuple[int, str, str, bool, bool]]:
        """Discarded rows: (id, spool_name, key, uploaded, key still needed by a live row/emission)."""
        return self.run(
            lambda c: [
                (r[0], r[1], r[2], bool(r[3]), bool(r[4]))
                for r in c.execute(
                    "SELECT i.id, i.spool_name, i.key, i.uploaded,"
                    " EXISTS(SELECT 1 FROM instances j WHERE j.key=i.key AND j.discarded=0)"
                    " OR COALESCE((SELECT g.next_revision FROM groups g WHERE g.id=i.group_id), 0) > 0"
                    " FROM instances i WHERE i.discarded=1"
                )
            ]
        )

    def forget(self, ids: Iterable[int]) -> None:
        ids = list(ids)

        def fn(c: sqlite3.Connection) -> None:
            c.executemany("DELETE FROM instances WHERE id=?", [(i,) for i in ids])
            c.execute(
                "DELETE FROM associations WHERE state!='open'"
                " AND NOT EXISTS(SELECT 1 FROM instances WHERE assoc_id=associations.id)"
            )

        self.run(fn)

    def key_in_use(self, key: str) -> bool:
        return self.run(
            lambda c: (
                c.execute(
                    "SELECT 1 FROM instances WHERE key=? AND discarded=0 LIMIT 1", (key,)
                ).fetchone()
                is not None
            )
        )

    # -- groups ----------------------------------------------------------------------------------

    def group_rows(self) -> list[GroupRow]:
        """Every group that has live, not yet emitted instances."""
        sql = (
            "SELECT g.id, g.called_ae, g.study_uid, g.calling_ae, g.next_revision, g.last_activity, g.last_manifest,"
            " SUM(a.state='open'), SUM(a.state='released'), SUM(a.state='released' AND i.uploaded=0)"
            " FROM instances i JOIN associations a ON a.id=i.assoc_id JOIN groups g ON g.id=i.group_id"
            " WHERE i.discarded=0 GROUP BY g.id"
        )
        return self.run(
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
            "SELECT i.id, i.study_uid, i.series_uid, i.sop_uid, i.sop_class, i.ts_uid, i.key, i.size, i.sha256"
            " FROM instances i JOIN associations a ON a.id=i.assoc_id"
            " WHERE i.group_id=? AND i.discarded=0 AND i.uploaded=1 AND a.state='released' ORDER BY i.id"
        )
        return self.run(lambda c: [ReadyInstance(*r) for r in c.execute(sql, (group_id,))])

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
            for event_id, body in events:
                c.execute(
                    "INSERT OR IGNORE INTO outbox(id, event, state, next_at, created) VALUES (?,?,?,?,?)",
                    (event_id, body, "pending", now, now),
                )
            c.executemany("DELETE FROM instances WHERE id=?", [(i,) for i in instance_ids])
            if manifest_key is not None:
                c.execute(
                    "UPDATE groups SET next_revision=?, last_manifest=? WHERE id=?",
                    (revision + 1, manifest_key, group_id),
                )
            c.execute(
                "DELETE FROM associations WHERE state!='open'"
                " AND NOT EXISTS(SELECT 1 FROM instances WHERE assoc_id=associations.id)"
            )
            return True

        return self.run(fn)

    # -- outbox ----------------------------------------------------------------------------------

    def outbox_due(self, now: float, limit: int = 64) -> list[tuple[str, bytes, int]]:
        return self.run(
            lambda c: [
                (r[0], bytes(r[1]), int(r[2]))
                for r in c.execute(
                    "SELECT id, event, attempts FROM outbox WHERE state='pending' AND next_at<=? ORDER BY created LIMIT ?",
                    (now, limit),
                )
            ]
        )

    def outbox_next_due(self) -> float | None:
        row = self.run(
            lambda c: c.execute("SELECT MIN(next_at) FROM outbox WHERE state='pending'").fetchone()
        )
        return None if row is None or row[0] is None else float(row[0])

    def outbox_sent(self, event_id: str) -> None:
        now = time.time()
        self.run(
            lambda c: c.execute(
                "UPDATE outbox SET state='sent', sent=? WHERE id=?", (now, event_id)
            )
        )

    def outbox_retry(self, event_id: str, next_at: float, error: str) -> None:
        self.run(
            lambda c: c.execute(
                "UPDATE outbox SET attempts=attempts+1, next_at=?, last_error=? WHERE id=?",
                (next_at, error[:200], event_id),
            )
        )

    def outbox_counts(self) -> dict[str, int]:
        return self.run(
            lambda c: dict(
                c.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall()
            )
        )

    # -- drop trigger checkpoint -----------------------------------------------------------------

    def drop_seen(self, key: str) -> str | None:
        row = self.run(
            lambda c: c.execute("SELECT etag FROM drop_seen WHERE key=?", (key,)).fetchone()
        )
        return None if row is None else str(row[0])

    def mark_drop_seen(self, key: str, etag: str, outcome: str) -> None:
        self.run(
            lambda c: c.execute(
                "INSERT INTO drop_seen(key, etag, outcome) VALUES (?,?,?)"
                " ON CONFLICT(key) DO UPDATE SET etag=excluded.etag, outcome=excluded.outcome",
                (key, etag, outcome),
            )
        )

    def stats(self) -> dict[str, int]:
        def fn(c: sqlite3.Connection) -> dict[str, int]:
            r = c.execute(
                "SELECT COUNT(*), COALESCE(SUM(uploaded=0 AND discarded=0),0), COALESCE(SUM(discarded),0) FROM instances"
            ).fetchone()
            o = c.execute("SELECT COUNT(*) FROM associations WHERE state='open'").fetchone()
            return {"indexed": r[0], "spooled": r[1], "discarded": r[2], "open_associations": o[0]}

        return self.run(fn)
