"""Object-store drop trigger: DICOM files put under ``inbox/<AE title>/...`` start jobs too.

SeaweedFS offers no S3 bucket notifications (knative-contracts.md section 11), so this is a
checkpointed poll: every ``interval`` seconds the prefix is listed; each object not yet seen
(by key and ETag) is downloaded into the spool, checked exactly like a C-STORE, indexed under
one pseudo-association per (poll pass, AE title) and deleted from the inbox. The pass's
association is *released* at its end, so grouping, timeouts, revisions and events are the same
code path as a DICOM push. A crash mid-pass leaves the association open; recovery treats it as
released (the files were indexed), and objects not yet indexed are picked up again.
Objects that are not DICOM, or sit under an AE title that is not configured, are moved to
``quarantine/<original key>`` with the reason in the log.

An upload takes time: files appear one after another. A folder ``inbox/<AE title>/`` is taken
only once it is *quiet*: its listing (every key with its size and ETag, temporary files
included) has not changed for ``settle`` seconds (``RADFLOW_ADAPTER_DROP_SETTLE_SECONDS``), so a
study copied in over several passes makes one job, not one per pass. Temporary files (a name
starting with ``.``, or ending in ``.part``, ``.partial``, ``.tmp``, ``.filepart``,
``.crdownload``) keep a folder busy while they change but are never taken nor quarantined.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from radflow.adapter.handlers import check_header, record_for
from radflow.adapter.spool.index import PendingUpload
from radflow.imaging.dicom_walk import (
    SERIES_INSTANCE,
    SOP_CLASS,
    SOP_INSTANCE,
    STUDY_INSTANCE,
    NotDicom,
    inspect_bytes,
)
from radflow.sdk.errors import Unavailable
from radflow.sdk.storage import NotFound, ObjectInfo

if TYPE_CHECKING:
    from radflow.adapter.app import Adapter

log = logging.getLogger(__name__)

DROP_CALLING_AE = "S3-DROP"
TEMPORARY_SUFFIXES = (".part", ".partial", ".tmp", ".filepart", ".crdownload")


def is_temporary(key: str) -> bool:
    """True for a file an uploader is still writing (or hides): a dotfile, or a name ending in
    one of :data:`TEMPORARY_SUFFIXES`, in any folder of ``key``."""
    parts = key.split("/")
    return any(p.startswith(".") for p in parts) or parts[-1].lower().endswith(TEMPORARY_SUFFIXES)


Listing = frozenset[tuple[str, str, int]]


class DropWatcher:
    def __init__(
        self,
        adapter: Adapter,
        prefix: str,
        interval: float,
        settle: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.adapter = adapter
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.interval = interval
        self.settle = settle
        self.clock = clock
        #: AE folder -> (its listing, when that listing was first seen)
        self._quiet_since: dict[str, tuple[Listing, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="drop-watcher", daemon=True)
        self.ingested = 0
        self.quarantined = 0

    def start(self) -> None:
        if self.interval > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll_once()
            except Unavailable as exc:
                log.warning("drop trigger poll failed: %s", exc)
            except Exception:
                log.exception("drop trigger poll failed")

    def poll_once(self) -> int:
        """One pass over the inbox; returns how many instances were indexed."""
        a = self.adapter
        store, spool = a.store, a.spool
        cfg = a.configs.current()
        assocs: dict[str, str] = {}
        count = 0
        try:
            for obj in self._settled(list(store.list(self.prefix))):
                if self._stop.is_set():
                    break
                rest = obj.key[len(self.prefix) :]
                ae_title, _, tail = rest.partition("/")
                if spool.drops.etag(obj.key) == obj.etag:
                    store.delete(obj.key)  # indexed by an earlier pass that died before deleting
                    continue
                ae = cfg.ae(ae_title)
                if ae is None:
                    self._quarantine(obj.key, "no Clara AE title of that name is configured")
                    continue
                try:
                    data = store.get_bytes(obj.key)
                except NotFound:
                    continue
                wanted = frozenset(
                    {SOP_CLASS, SOP_INSTANCE, STUDY_INSTANCE, SERIES_INSTANCE, ae.group_tag}
                )
                try:
                    header = inspect_bytes(data, wanted)
                except NotDicom as exc:
                    self._quarantine(obj.key, str(exc))
                    continue
                problem = check_header(header, ae.group_tag, ae.group_by, None)
                if problem is not None:
                    self._quarantine(obj.key, problem)
                    continue
                if header.values.get(SOP_CLASS, "") in ae.ignored_sop_classes:
                    store.delete(obj.key)
                    continue
                assoc_id = assocs.get(ae.ae_title)
                if assoc_id is None:
                    assoc_id = f"drop-{uuid.uuid4().hex}"
                    spool.associations.open(assoc_id, ae.ae_title, DROP_CALLING_AE)
                    assocs[ae.ae_title] = assoc_id
                tmp = spool.files.tmp_dir / f"drop-{uuid.uuid4().hex}.dcm"
                with open(tmp, "wb") as fh:
                    fh.write(data)
                name = spool.files.take_file(tmp, assoc_id)
                rec = record_for(
                    header,
                    assoc_id=assoc_id,
                    called=ae.ae_title,
                    calling=DROP_CALLING_AE,
                    spool_name=name,
                    group_tag=ae.group_tag,
                )
                spool.index.add(rec)
                spool.drops.mark(obj.key, obj.etag, "indexed")
                a.uploader.enqueue(PendingUpload(name, rec.key))
                store.delete(obj.key)
                count += 1
        finally:
            for assoc_id in assocs.values():
                spool.associations.close(assoc_id, released=True)
            if assocs:
                a.emitter.wake()
        self.ingested += count
        return count

    def _settled(self, objects: list[ObjectInfo]) -> list[ObjectInfo]:
        """The objects of the folders ``inbox/<AE>/`` that are quiet, temporary files left out.

        A folder is quiet once its listing has been the same for :attr:`settle` seconds; a
        folder seen for the first time, or changed since the last pass, waits.
        """
        folders: dict[str, list[ObjectInfo]] = {}
        for obj in objects:
            ae_title, _, tail = obj.key[len(self.prefix) :].partition("/")
            if tail:
                folders.setdefault(ae_title, []).append(obj)
        now = self.clock()
        taken: list[ObjectInfo] = []
        for folder, items in folders.items():
            listing = frozenset((o.key, o.etag, o.size) for o in items)
            seen, since = self._quiet_since.get(folder, (None, now))
            if seen != listing:
                self._quiet_since[folder] = (listing, now)
                since = now
            if now - since >= self.settle:
                taken.extend(o for o in items if not is_temporary(o.key))
        for gone in self._quiet_since.keys() - folders.keys():
            del self._quiet_since[gone]
        return taken

    def _quarantine(self, key: str, reason: str) -> None:
        store = self.adapter.store
        try:
            store.put_bytes(f"quarantine/{key}", store.get_bytes(key))
            store.delete(key)
        except NotFound:
            return
        self.quarantined += 1
        log.warning(
            "dropped object quarantined: %s", reason, extra={"quarantine_key": f"quarantine/{key}"}
        )
