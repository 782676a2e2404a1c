"""Drains the spool to the object store: one PUT per instance, bytes exactly as received.

Instances are uploaded as soon as they are acknowledged (not when their group closes), so by
the time an association is released most of its study is already in S3 and the job event
follows within a fraction of a second. A failed PUT (S3 down) is retried with backoff,
forever: the file stays in the spool until the store has it. A PUT the store *refuses* (403, an
invalid key, a body that keeps failing its checksum: ``StoreRefused``) is not retried: sending
it again cannot help. The instance is *parked*: its file and index row stay in the spool (it
was acknowledged; it is never dropped), one log line says why (no identifiers),
``/health/status`` counts it (``upload_parked``), and its group waits. Parking lasts until the
adapter restarts, which tries each parked instance once more (after the cause is fixed, e.g.
the store's permissions). Instances of aborted associations are cleaned up here too (spool file
removed; an object already uploaded is deleted unless another live instance or an emitted
manifest may point at the same key).
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

from radflow.adapter.spool import Spool
from radflow.adapter.spool.index import PendingUpload
from radflow.sdk.errors import StoreRefused, Unavailable
from radflow.sdk.retry import retrying
from radflow.sdk.storage import AlreadyExists, Keys, NotFound, ObjectStore

log = logging.getLogger(__name__)


def _digest(path: Path, algorithm: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, algorithm).hexdigest()


class Uploader:
    def __init__(
        self, spool: Spool, store: ObjectStore, *, workers: int, on_uploaded: Callable[[], None]
    ) -> None:
        self.spool = spool
        self.store = store
        self.on_uploaded = on_uploaded
        self._queue: queue.Queue[PendingUpload | None] = queue.Queue()
        self._inflight: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, name=f"uploader-{i}", daemon=True)
            for i in range(workers)
        ]
        self._janitor = threading.Thread(
            target=self._clean_loop, name="uploader-janitor", daemon=True
        )
        self.uploaded = 0
        #: refused instances (spool name -> reason), kept in the spool until the next start
        self._parked: dict[str, str] = {}
        #: the store down: again and again, 0.2 s apart at first, doubling up to 10 s, until stop
        self._policy = retrying(
            on=Unavailable,
            first_delay=0.2,
            max_delay=10.0,
            until=self._stop,
            before_sleep=lambda delay, exc: log.warning(
                "upload failed, retrying in %.1fs: %s", delay, exc
            ),
        )

    def start(self) -> None:
        for item in self.spool.index.pending_uploads():
            self.enqueue(item)
        for t in self._threads:
            t.start()
        self._janitor.start()

    def stop(self) -> None:
        self._stop.set()
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout=10)
        self._janitor.join(timeout=5)

    def enqueue(self, item: PendingUpload) -> None:
        with self._lock:
            self._inflight.add(item.spool_name)
        self._queue.put(item)

    def backlog(self) -> int:
        return self._queue.qsize()

    def parked(self) -> dict[str, int]:
        """How many instances are parked, by reason (reasons carry no identifiers)."""
        with self._lock:
            reasons = list(self._parked.values())
        return {reason: reasons.count(reason) for reason in sorted(set(reasons))}

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._upload(item)
            except Exception:
                log.exception("upload failed unexpectedly; retrying in 5 s")
                threading.Timer(5.0, self._queue.put, args=(item,)).start()
                continue  # still in flight: the janitor must not clean it meanwhile
            with self._lock:
                self._inflight.discard(item.spool_name)

    def _upload(self, item: PendingUpload) -> None:
        path = self.spool.files.path(item.spool_name)
        try:
            size, digest = path.stat().st_size, _digest(path, "sha256")
        except FileNotFoundError:
            log.error(
                "spooled file missing; instance cannot be uploaded",
                extra={"spool_file": item.spool_name},
            )
            return
        key = item.key

        def put(target: str) -> None:
            # streamed from the spool file: a multi-GB enhanced object never sits in memory;
            # conditional, so a stored instance is never replaced (manifests point at it)
            self.store.put_file(
                target, path, content_type="application/dicom", sha256=digest, if_absent=True
            )

        def upload() -> None:
            nonlocal key
            try:
                put(key)
            except AlreadyExists:
                if key != item.key or self._same_bytes(key, path):
                    # a re-send of the same bytes, our own upload before a restart, or a variant
                    # (named by its content) that is already there
                    return
                # same SOP Instance UID, different bytes: keep both; which one a manifest lists
                # is overwrite-same-instance's decision (adapter/grouping.py merge_revision)
                key = Keys.instance_variant(item.key, digest)
                try:
                    put(key)
                except AlreadyExists:
                    pass  # the variant, named by its content, is already there

        if self._stop.is_set():
            return  # stopping: the row stays pending and the next start uploads it
        try:
            self._policy(upload)
        except Unavailable:
            return  # stopped while the store was down: the row stays pending
        except StoreRefused as exc:
            self._park(item, str(exc))
            return
        live = self.spool.index.mark_uploaded(
            item.spool_name, size, digest, key if key != item.key else None
        )
        self.spool.files.unlink(item.spool_name)
        self.uploaded += 1
        if not live and not self.spool.index.key_in_use(key):
            self._delete_quietly(key)
        self.on_uploaded()

    def _park(self, item: PendingUpload, reason: str) -> None:
        """Keep a refused instance in the spool, not retried; visible in the log and the status."""
        with self._lock:
            self._parked[item.spool_name] = reason
        log.error(
            "upload refused by the object store; instance parked in the spool until the next "
            "start: %s",
            reason,
            extra={"spool_file": item.spool_name},
        )

    def _same_bytes(self, key: str, path: Path) -> bool:
        """Does the stored object hold exactly this file? (single-PUT ETag = MD5 of the body)"""
        try:
            etag = self.store.head(key).etag.strip('"')
        except NotFound:
            return False  # deleted meanwhile: the next attempt's conditional PUT decides
        return _digest(path, "md5") == etag

    def _delete_quietly(self, key: str) -> None:
        try:
            self.store.delete(key)
        except (Unavailable, NotFound):
            pass
        except StoreRefused as exc:  # the object stays; nothing points at it
            log.warning("object of a discarded instance not deleted: %s", exc)

    def clean_discarded(self) -> int:
        """Remove what aborted associations left behind; returns how many rows were forgotten."""
        with self._lock:
            busy = set(self._inflight)
        done = []
        for row_id, spool_name, key, uploaded, key_needed in self.spool.index.discarded():
            if spool_name in busy:
                continue
            if uploaded and not key_needed:
                self._delete_quietly(key)
            self.spool.files.unlink(spool_name)
            with self._lock:
                self._parked.pop(spool_name, None)
            done.append(row_id)
        if done:
            self.spool.index.forget(done)
        return len(done)

    def _clean_loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.clean_discarded()
            except Exception:
                log.exception("cleanup of discarded instances failed")

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._inflight:
                    return True
            time.sleep(0.02)
        return False
