"""pynetdicom event handlers: admission, C-ECHO, C-STORE (durable ack), release and abort.

Each handler turns a failure into the DIMSE answer PS3.4 prescribes and never raises:

* association admission (``EVT_REQUESTED``): called AE not one of ours -> A-ASSOCIATE-RJ
  permanent, service-user, reason 7 "called AE title not recognized"; calling AE / host not an
  allowed source while ``reject-unknown-sources`` -> reason 3 "calling AE title not
  recognized"; a TLS client certificate outside the allow-list -> reason 1 "no reason given";
* C-STORE: ``0x0000`` only once the instance is durable in the spool; ``0xA700`` out of
  resources (spool write failed), ``0xA900`` the dataset's UIDs do not match the request or a
  required UID is missing, ``0xC000`` not a (complete) DICOM dataset, ``0xC211`` unexpected.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from pynetdicom import evt
from pynetdicom.events import EventHandlerType

from radflow.adapter import grouping
from radflow.adapter.config import AdapterConfig
from radflow.adapter.spool.associations import AssociationRow
from radflow.adapter.spool.index import InstanceRecord, PendingUpload
from radflow.adapter.uids import uid_problem
from radflow.imaging.dicom_walk import (
    SERIES_INSTANCE,
    SOP_CLASS,
    SOP_INSTANCE,
    STUDY_INSTANCE,
    Header,
    NotDicom,
    inspect_file,
)
from radflow.imaging.dimse import NODELAY_HANDLERS
from radflow.sdk.storage import Keys

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0xC211
SOP_CLASS_NOT_SUPPORTED = 0x0122

REJECT_PERMANENT, REJECT_TRANSIENT = 0x01, 0x02
SOURCE_USER, SOURCE_PRESENTATION = 0x01, 0x03
REASON_NONE, REASON_CALLING_AE, REASON_CALLED_AE = 0x01, 0x03, 0x07
REASON_LOCAL_LIMIT = 0x02  # with SOURCE_PRESENTATION: "local-limit-exceeded" (max-associations)


class SpoolPort(Protocol):
    """What the C-STORE handlers need of the spool: :class:`Spool` in-process, or
    :class:`~radflow.adapter.receiver_worker.RemoteSpool` in a receiver process."""

    def take_file(self, src: Path, assoc_id: str) -> str: ...

    def open_association(self, assoc_id: str, called_ae: str, calling_ae: str) -> None: ...

    def add_instance(self, rec: InstanceRecord) -> None: ...

    def close_association(self, assoc_id: str, *, released: bool) -> int: ...


def record_for(
    header: Header, *, assoc_id: str, called: str, calling: str, spool_name: str, group_tag: int
) -> InstanceRecord:
    """The index row of a spooled instance (also used to re-index files after a crash)."""
    v = header.values
    study_uid, series_uid, sop_uid = v[STUDY_INSTANCE], v[SERIES_INSTANCE], v[SOP_INSTANCE]
    return InstanceRecord(
        assoc_id=assoc_id,
        group_id=grouping.group_id(called, v[group_tag]),
        called_ae=called,
        calling_ae=calling,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        sop_class=v.get(SOP_CLASS, ""),
        ts_uid=header.transfer_syntax,
        spool_name=spool_name,
        key=Keys.instance(grouping.study_id(study_uid), series_uid, sop_uid),
        received=time.time(),
    )


def check_header(
    header: Header,
    group_tag: int,
    group_by: str,
    sop_uid: str | None,
    *,
    validate_uids: bool = True,
) -> str | None:
    """Why ``header`` cannot be stored (naming the tag), or ``None`` when it can.

    ``validate_uids=False`` for files acknowledged before UIDs were validated (recovery): what
    was acked is kept, whatever its UIDs."""
    v = header.values
    for tag, label in (
        (STUDY_INSTANCE, "(0020,000D) Study Instance UID"),
        (SERIES_INSTANCE, "(0020,000E) Series Instance UID"),
        (SOP_INSTANCE, "(0008,0018) SOP Instance UID"),
    ):
        if not v.get(tag):
            return f"{label} is missing or empty"
        problem = uid_problem(v[tag]) if validate_uids else None
        if problem is not None:
            return f"{label} {problem}"
    if sop_uid is not None and v[SOP_INSTANCE] != sop_uid:
        return "(0008,0018) SOP Instance UID differs from the request's Affected SOP Instance UID"
    if not v.get(group_tag):
        return f"grouping tag ({group_by}) is missing or empty"
    return None


class StoreHandlers:
    """Bound to the SCP's AE; the configuration is read per association (hot reload)."""

    def __init__(
        self,
        spool: SpoolPort,
        config: Callable[[], AdapterConfig],
        *,
        on_stored: Callable[[PendingUpload], None],
        on_closed: Callable[[], None],
        cert_allowed: Callable[[Any], bool] | None = None,
        over_limit: Callable[[Any], bool] | None = None,
    ) -> None:
        self.spool = spool
        self.config = config
        self.on_stored = on_stored
        self.on_closed = on_closed
        self.cert_allowed = cert_allowed
        #: in a receiver process: was this association's connection over max-associations?
        self.over_limit = over_limit
        self._lock = threading.Lock()
        self._open: dict[
            int, str
        ] = {}  # id(assoc) -> spool association id, once it stored something
        #: summed over receiver processes (ReceiverPool.counters) and exposed as metrics
        #: (adapter/metrics.py); ``refused_0x<status>`` counts C-STOREs answered with a failure
        self.counters = {
            "stored": 0,
            "rejected_associations": 0,
            "accepted_associations": 0,
            "refused_instances": 0,
            "ignored": 0,
            "bytes_received": 0,
        }
        self._live: set[int] = set()  # associations accepted and not yet closed

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counters)

    def live_associations(self) -> int:
        """Associations accepted by this process and not yet ended."""
        with self._lock:
            return len(self._live)

    def bindings(self) -> list[EventHandlerType]:
        return [
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_RELEASED, self.on_released),
            (evt.EVT_ABORTED, self.on_aborted),
            (evt.EVT_CONN_CLOSE, self.on_conn_close),
            *NODELAY_HANDLERS,
        ]

    # -- admission -------------------------------------------------------------------------------

    def admission(
        self, called_ae: str, calling_ae: str, host: str, peer_cert: Any = None
    ) -> tuple[int, int] | None:
        """``None`` to accept, else (result, reason) of the A-ASSOCIATE-RJ. Pure given the
        config."""
        cfg = self.config()
        if cfg.ae(called_ae) is None:
            return REJECT_PERMANENT, REASON_CALLED_AE
        if cfg.reject_unknown_sources and not cfg.source_allowed(calling_ae, host):
            return REJECT_PERMANENT, REASON_CALLING_AE
        if self.cert_allowed is not None and not self.cert_allowed(peer_cert):
            return REJECT_PERMANENT, REASON_NONE
        return None

    def on_requested(self, event: Any) -> None:
        assoc = event.assoc
        if self.over_limit is not None and self.over_limit(assoc):
            # the adapter process counts associations across all receivers (max-associations)
            self._reject(assoc, REJECT_TRANSIENT, SOURCE_PRESENTATION, REASON_LOCAL_LIMIT)
            return
        rq = assoc.requestor.primitive
        called = str(rq.called_ae_title).strip()
        calling = str(rq.calling_ae_title).strip()
        host = str(assoc.requestor.address)
        cert = None
        if self.cert_allowed is not None:
            sock = getattr(assoc.dul.socket, "socket", None)
            getpeercert = getattr(sock, "getpeercert", None)
            cert = getpeercert(binary_form=True) if getpeercert else None
        verdict = self.admission(called, calling, host, cert)
        if verdict is None:
            return
        result, reason = verdict
        log.warning(
            "association rejected",
            extra={
                "called_ae": called,
                "calling_ae": calling,
                "peer": host,
                "reject_reason": reason,
            },
        )
        self._reject(assoc, result, SOURCE_USER, reason)

    def on_accepted(self, event: Any) -> None:
        with self._lock:
            self.counters["accepted_associations"] += 1
            self._live.add(id(event.assoc))

    def _reject(self, assoc: Any, result: int, source: int, reason: int) -> None:
        with self._lock:
            self.counters["rejected_associations"] += 1
        assoc.acse.send_reject(result, source, reason)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()

    def on_echo(self, event: Any) -> int:
        # Clara's dicom.scp.verification.enabled: false -> "SOP class not supported"
        return SUCCESS if self.config().verification_enabled else SOP_CLASS_NOT_SUPPORTED

    # -- storage ---------------------------------------------------------------------------------

    def on_store(self, event: Any) -> int:
        try:
            status = self._store(event)
        except Exception:
            log.exception("C-STORE handling failed unexpectedly")
            status = PROCESSING_FAILURE
        if status != SUCCESS:
            with self._lock:
                key = f"refused_0x{status:04X}"
                self.counters[key] = self.counters.get(key, 0) + 1
        return status

    def _store(self, event: Any) -> int:
        req = event.request
        assoc = event.assoc
        called = str(assoc.requestor.primitive.called_ae_title).strip()
        calling = str(assoc.requestor.ae_title).strip()
        cfg = self.config()
        ae = cfg.ae(called)
        if ae is None:  # removed over REST while the association was open
            return OUT_OF_RESOURCES
        sop_class = str(req.AffectedSOPClassUID)
        if sop_class in ae.ignored_sop_classes:
            with self._lock:
                self.counters["ignored"] += 1
            return SUCCESS
        problem = uid_problem(str(req.AffectedSOPInstanceUID))
        if problem is not None:
            self._refused(
                "invalid request", f"(0000,1000) Affected SOP Instance UID {problem}", called
            )
            return DATASET_MISMATCH
        path = Path(event.dataset_path)
        wanted = frozenset({SOP_CLASS, SOP_INSTANCE, STUDY_INSTANCE, SERIES_INSTANCE, ae.group_tag})
        try:
            header = inspect_file(path, wanted)
        except NotDicom as exc:
            self._refused("not a complete DICOM dataset", str(exc), called)
            return CANNOT_UNDERSTAND
        problem = check_header(header, ae.group_tag, ae.group_by, str(req.AffectedSOPInstanceUID))
        if problem is not None:
            self._refused("dataset does not match the request", problem, called)
            return DATASET_MISMATCH
        try:
            size = path.stat().st_size
            assoc_id = self._association(assoc, called, calling)
            name = self.spool.take_file(path, assoc_id)
            rec = record_for(
                header,
                assoc_id=assoc_id,
                called=called,
                calling=calling,
                spool_name=name,
                group_tag=ae.group_tag,
            )
            self.spool.add_instance(rec)  # queued behind the ack: the fsync'd file is the record
        except OSError as exc:  # disk full, or (receiver process) the adapter process is gone
            log.error(
                "spool write failed: %s; answering Out of Resources",
                exc.strerror or type(exc).__name__,
                extra={"called_ae": called},
            )
            return OUT_OF_RESOURCES
        with self._lock:
            self.counters["stored"] += 1
            self.counters["bytes_received"] += size
        self.on_stored(PendingUpload(rec.spool_name, rec.key))
        return SUCCESS

    def _refused(self, what: str, detail: str, called: str) -> None:
        with self._lock:
            self.counters["refused_instances"] += 1
        log.warning("instance refused: %s: %s", what, detail, extra={"called_ae": called})

    def _association(self, assoc: Any, called: str, calling: str) -> str:
        with self._lock:
            existing = self._open.get(id(assoc))
        if existing:
            return existing
        assoc_id = uuid.uuid4().hex
        self.spool.open_association(assoc_id, called, calling)
        with self._lock:
            self._open[id(assoc)] = assoc_id
        return assoc_id

    def describe(self, path: Path, assoc: AssociationRow) -> InstanceRecord | None:
        """Rebuild the index row of an acknowledged file found unindexed after a crash."""
        ae = self.config().ae(assoc.called_ae)
        group_tag, group_by = (ae.group_tag, ae.group_by) if ae else (STUDY_INSTANCE, "0020,000D")
        try:
            header = inspect_file(
                path,
                frozenset({SOP_CLASS, SOP_INSTANCE, STUDY_INSTANCE, SERIES_INSTANCE, group_tag}),
            )
        except (NotDicom, OSError):
            return None
        if check_header(header, group_tag, group_by, None, validate_uids=False) is not None:
            return None
        return record_for(
            header,
            assoc_id=assoc.id,
            called=assoc.called_ae,
            calling=assoc.calling_ae,
            spool_name=path.name,
            group_tag=group_tag,
        )

    # -- end of association ----------------------------------------------------------------------

    def _close(self, event: Any, released: bool) -> None:
        with self._lock:
            self._live.discard(id(event.assoc))
            assoc_id = self._open.pop(id(event.assoc), None)
        if assoc_id is None:
            return
        count = self.spool.close_association(assoc_id, released=released)
        if not released:
            log.warning(
                "association aborted: %d instance(s) discarded",
                count,
                extra={"association": assoc_id},
            )
        self.on_closed()

    def on_released(self, event: Any) -> None:
        self._close(event, released=True)

    def on_aborted(self, event: Any) -> None:
        self._close(event, released=False)

    def on_conn_close(self, event: Any) -> None:
        # a connection that ends without A-RELEASE is an abort (peer vanished, A-P-ABORT)
        self._close(event, released=False)
