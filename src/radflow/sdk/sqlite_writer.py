"""One sqlite file, one writer thread, group commit: callers return once their rows are durable.

Why: the broker answers ``202`` and the adapter answers C-STORE success only once what they
stored survives ``kill -9`` and power loss. An ``fsync`` per caller would cap both at one
commit per disk flush; instead every operation runs on one dedicated thread (a sqlite
connection is not shared across threads, and an event loop must never block on ``fsync``),
and the operations queued while a commit is in flight are committed together in the next
transaction: one ``fsync`` for all of them.

Each operation still runs in its own savepoint, so one that raises is rolled back alone and
its caller gets its exception; the others commit. A caller is answered only after the
``COMMIT`` that made its rows durable returned; if ``BEGIN`` or ``COMMIT`` itself fails, every
caller of that batch gets the sqlite error (none of their rows were committed). Operations are
applied in the order they were submitted (FIFO), across callers.

Durability is chosen per operation: ``durable=True`` (the default) commits with
``synchronous=FULL`` (the WAL is ``fsync``'d before ``COMMIT`` returns); ``durable=False``
commits with ``synchronous=NORMAL`` (no ``fsync``: a process crash loses nothing, a power cut
may lose the newest such commits, never reorder them). A batch holding any durable operation
is committed durably.

Callers may be threads (:meth:`GroupCommitWriter.submit` / :meth:`~GroupCommitWriter.run`)
or coroutines (:meth:`~GroupCommitWriter.run_async`); a batch wakes each event loop once. An
operation, once submitted, is applied even if its caller stops waiting (is cancelled).
Stdlib only: this module knows nothing of what the rows mean.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]


class WriterClosed(RuntimeError):
    """The writer was closed; nothing more can be submitted."""


class _Job:
    __slots__ = ("op", "durable", "future", "loop")

    def __init__(
        self,
        op: Op,
        durable: bool,
        future: concurrent.futures.Future[Any] | asyncio.Future[Any],
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        self.op = op
        self.durable = durable
        self.future = future
        self.loop = loop  # set for a coroutine's job: its future is resolved on that loop


_STOP = object()


class GroupCommitWriter:
    """The single writer of one sqlite file (WAL). ``close()`` commits what is queued first.

    ``setup`` runs once on the writer thread after the connection is opened (schema, version
    checks); an exception there is raised by the constructor. The constructor blocks until
    the file is open: call it through ``asyncio.to_thread`` from an event loop.
    """

    def __init__(
        self,
        path: Path,
        *,
        setup: Callable[[sqlite3.Connection], None] | None = None,
        max_batch: int = 256,
        name: str = "sqlite-writer",
    ) -> None:
        self.path = Path(path)
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._lock = threading.Lock()  # orders submit() against close(): nothing after _STOP
        self._closed = False
        self._synchronous = "FULL"
        opened: concurrent.futures.Future[sqlite3.Connection] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._main, args=(setup, opened), name=name, daemon=True
        )
        self._thread.start()
        self._conn = opened.result()  # re-raises what opening or setup raised

    # ------------------------------------------------------------------ callers

    def submit(
        self, op: Callable[[sqlite3.Connection], T], *, durable: bool = True
    ) -> concurrent.futures.Future[T]:
        """Queue ``op``; the future resolves after the COMMIT holding it (or with its error)."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._put(_Job(op, durable, future, None))
        return future

    def run(self, op: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        """Run ``op`` in a committed transaction and return its result (blocks this thread)."""
        return self.submit(op, durable=durable).result()

    async def run_async(self, op: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        """:meth:`run` for a coroutine: the event loop keeps running while the commit is made."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._put(_Job(op, durable, future, loop))
        return await future

    def flush(self) -> None:
        """Return once everything submitted before this call is committed."""
        self.run(lambda _c: None, durable=False)

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued, stop the thread and close the file. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("sqlite writer %s did not stop within %.0f s", self.path.name, timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    def _put(self, job: _Job) -> None:
        with self._lock:
            if self._closed:
                raise WriterClosed(f"{self.path.name}: the writer is closed")
            self._queue.put(job)

    # ------------------------------------------------------------------ writer thread

    def _main(
        self,
        setup: Callable[[sqlite3.Connection], None] | None,
        opened: concurrent.futures.Future[sqlite3.Connection],
    ) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                if setup is not None:
                    setup(conn)
            except BaseException:
                conn.close()
                raise
        except BaseException as exc:
            opened.set_exception(exc)
            return
        opened.set_result(conn)
        try:
            self._serve(conn)
        finally:
            conn.close()

    def _serve(self, conn: sqlite3.Connection) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            assert isinstance(first, _Job)
            batch = [first]
            stopping = False
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                assert isinstance(item, _Job)
                batch.append(item)
            self._resolve(batch, self._commit(conn, batch))
            if stopping:
                return

    def _commit(self, conn: sqlite3.Connection, batch: list[_Job]) -> list[tuple[bool, Any]]:
        """Apply ``batch`` in one transaction; (ok, result or exception) per job."""
        try:
            wanted = "FULL" if any(job.durable for job in batch) else "NORMAL"
            if wanted != self._synchronous:
                conn.execute(f"PRAGMA synchronous={wanted}")
                self._synchronous = wanted
            results: list[tuple[bool, Any]] = []
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                conn.execute("SAVEPOINT op")
                try:
                    value = job.op(conn)
                except BaseException as exc:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    results.append((False, exc))
                else:
                    conn.execute("RELEASE op")
                    results.append((True, value))
            conn.execute("COMMIT")
            return results
        except BaseException as exc:
            # BEGIN/COMMIT failed (disk full, I/O error), or an operation broke the transaction
            log.error(
                "sqlite commit of %d operation(s) in %s failed: %s",
                len(batch),
                self.path.name,
                type(exc).__name__,
            )
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            return [(False, exc)] * len(batch)

    @staticmethod
    def _resolve(batch: list[_Job], results: list[tuple[bool, Any]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, bool, Any]]] = {}
        for job, (ok, value) in zip(batch, results, strict=True):
            if job.loop is None:
                _settle(job.future, ok, value)
            else:
                by_loop.setdefault(job.loop, []).append((job, ok, value))
        for loop, settled in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle_all, settled)  # one wake-up per loop and batch
            except RuntimeError:
                pass  # the loop is closed: nobody is waiting any more


def _settle(
    future: concurrent.futures.Future[Any] | asyncio.Future[Any], ok: bool, value: Any
) -> None:
    try:
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
    except (concurrent.futures.InvalidStateError, asyncio.InvalidStateError):
        pass  # the caller stopped waiting (cancelled)


def _settle_all(settled: list[tuple[_Job, bool, Any]]) -> None:
    for job, ok, value in settled:
        _settle(job.future, ok, value)
