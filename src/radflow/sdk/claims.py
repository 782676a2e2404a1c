"""Exactly-once stage runs on top of at-least-once delivery: a leased claim in the object store.

A stage run first *claims* its job's stage with an S3 conditional put (``If-None-Match: *``);
only the winner runs. While it runs, a heartbeat thread renews the lease with ``If-Match`` on
the claim's ETag. A run killed mid-way stops renewing, so after ``lease_seconds`` its claim is
*stale* and the broker's retry of the same event takes it over (``If-Match`` again, so two
retries cannot both win). The completed marker, written with ``If-None-Match`` too, is the
final arbiter: whoever writes it first defines the stage's result.

Timestamps are wall-clock seconds written by the claimant; pods are assumed NTP-synchronised
to well within a lease (30 s by default).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from radflow.sdk.errors import StoreRefused, Unavailable
from radflow.sdk.storage import AlreadyExists, NotFound, ObjectStore

logger = logging.getLogger(__name__)


class Outcome(Enum):
    """What :meth:`Claim.acquire` found."""

    ACQUIRED = "acquired"  # this run owns the stage now (the stage never ran before)
    STALE = "stale"  # a claim whose holder stopped renewing it: call take_over() to run
    TAKEN_OVER = "taken_over"  # a stale claim (a dead run) was taken over
    BUSY_SAME_EVENT = (
        "busy_same_event"  # this event's earlier delivery is still running: retry later
    )
    BUSY_OTHER_EVENT = (
        "busy_other_event"  # another event's delivery runs it (fan-in): nothing to do
    )


@dataclass
class Claim:
    """One stage's claim object (``jobs/<job>/<stage>/claim``)."""

    store: ObjectStore
    key: str
    event_id: str
    lease_seconds: float = 30.0
    #: stop renewing after this long: past the Service's timeoutSeconds the broker has given up
    #: on this request (504) and retries, so a hung run must let a retry take over
    max_seconds: float = 600.0
    #: wall-clock seconds (shared by every claimant); tests pass a clock they move by hand
    clock: Callable[[], float] = time.time
    holder: str = field(default_factory=lambda: uuid.uuid4().hex)
    started_at: float = 0.0
    etag: str | None = field(default=None, init=False)
    lost: bool = field(default=False, init=False)
    _stale_etag: str = field(default="", init=False)
    _stale_age: float = field(default=0.0, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    def _doc(self) -> bytes:
        return json.dumps(
            {
                "event_id": self.event_id,
                "holder": self.holder,
                "started_at": self.started_at,
                "heartbeat_at": self.clock(),
                "lease_seconds": self.lease_seconds,
            },
            sort_keys=True,
        ).encode()

    def acquire(self) -> Outcome:
        self.started_at = self.clock()
        try:
            self.etag = self.store.put_if_absent(self.key, self._doc())
            return Outcome.ACQUIRED
        except AlreadyExists:
            pass
        try:
            blob, etag = self.store.get_with_etag(self.key)
        except NotFound:
            # released between our put and get: let the broker retry soon
            raise Unavailable("claim changed while reading it; retry") from None
        try:
            doc = json.loads(blob)
            age = self.clock() - float(doc.get("heartbeat_at", 0))
            lease = float(doc.get("lease_seconds", self.lease_seconds))
            owner_event = str(doc.get("event_id", ""))
        except (ValueError, TypeError):
            age, lease, owner_event = float("inf"), 0.0, ""
        if age <= lease:
            return (
                Outcome.BUSY_SAME_EVENT
                if owner_event == self.event_id
                else Outcome.BUSY_OTHER_EVENT
            )
        self._stale_etag, self._stale_age = etag, age
        return Outcome.STALE

    def take_over(self) -> Outcome:
        """Replace a stale claim (after :meth:`acquire` said ``STALE``); only one caller wins."""
        try:
            self.etag = self.store.put_if_match(self.key, self._doc(), self._stale_etag)
        except AlreadyExists:
            raise Unavailable("another delivery took over the stale claim first; retry") from None
        logger.warning("took over a stale claim", extra={"claim_age_s": round(self._stale_age, 1)})
        return Outcome.TAKEN_OVER

    def start_heartbeat(self) -> None:
        self._thread = threading.Thread(
            target=self._beat, name=f"claim-heartbeat-{self.holder[:8]}", daemon=True
        )
        self._thread.start()

    def _beat(self) -> None:
        interval = max(0.2, self.lease_seconds / 3)
        while not self._stop.wait(interval):
            if self.etag is None:
                return
            if self.clock() - self.started_at > self.max_seconds:
                logger.warning("run exceeded its timeout; no longer renewing its claim")
                return
            try:
                self.etag = self.store.put_if_match(self.key, self._doc(), self.etag)
            except AlreadyExists:
                # somebody judged us dead and took over; our result only counts if we finish first
                self.lost = True
                logger.warning("claim lost to another delivery while running")
                return
            except Unavailable:
                continue  # try again next beat; a long outage lets the lease lapse, which is right
            except StoreRefused as exc:
                # permanent: renewing again will not help; the lease lapses, a retry may take over
                logger.error("claim renewal refused by the object store: %s", exc)
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def release(self) -> None:
        """Give the stage up after a transient failure so a retry need not wait for the lease."""
        self.stop()
        if self.lost:
            return
        try:
            blob = self.store.get_bytes(self.key)
            if json.loads(blob).get("holder") == self.holder:
                self.store.delete(self.key)
        except (Unavailable, StoreRefused, NotFound, ValueError):
            pass  # the lease lapses on its own
