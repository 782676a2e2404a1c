"""The durable outbox: job events leave the adapter only through here, at least once.

Events are inserted in the same SQLite transaction that closes their group, so a crash either
loses both (and the group is emitted again, with the same deterministic ids) or keeps both.
The sender POSTs each pending event in CloudEvents binary mode to ``K_SINK`` (the Broker URL a
SinkBinding injects) until the broker answers 2xx, with capped exponential backoff on anything
else. Event ids are deterministic, so a re-send after a lost 2xx is a duplicate the broker and
consumers recognise (``source`` + ``id``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from radflow.adapter.loop import WakeableLoop
from radflow.adapter.spool.outbox_store import OutboxStore
from radflow.sdk import events, http

log = logging.getLogger(__name__)


class Outbox(WakeableLoop):
    def __init__(
        self,
        store: OutboxStore,
        sink: Callable[[], str | None],
        *,
        max_backoff: float = 30.0,
        timeout: float = 10.0,
    ) -> None:
        self.store = store
        self.sink = sink
        self.max_backoff = max_backoff
        self.timeout = timeout
        super().__init__("outbox")
        self.sent = 0
        self.last_sent_at: float | None = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.flush_once()
                nxt = self.store.next_due()
            except Exception:
                log.exception("outbox pass failed")
                nxt = time.time() + 1.0
            wait = 5.0 if nxt is None else max(0.0, min(5.0, nxt - time.time()))
            self._wake.wait(wait)

    def flush_once(self) -> int:
        """Try every due event once; returns how many the broker accepted."""
        url = self.sink()
        due = self.store.due(time.time())
        if not due:
            return 0
        if not url:
            for event_id, _, attempts in due:
                self.store.retry(
                    event_id, time.time() + self._backoff(attempts), "K_SINK is not set"
                )
            log.warning("%d job event(s) waiting: K_SINK is not set (no SinkBinding?)", len(due))
            return 0
        ok = 0
        for event_id, body, attempts in due:
            if self._stop.is_set():
                break
            error = self._post(url, body)
            if error is None:
                self.store.sent(event_id)
                self.sent += 1
                self.last_sent_at = time.time()
                ok += 1
            else:
                delay = self._backoff(attempts)
                log.warning(
                    "event delivery failed (%s); retry %d in %.1fs",
                    error,
                    attempts + 1,
                    delay,
                    extra={"event_id": event_id},
                )
                self.store.retry(event_id, time.time() + delay, error)
        return ok

    def _backoff(self, attempts: int) -> float:
        return min(self.max_backoff, 0.2 * (2 ** min(attempts, 20)))

    def _post(self, url: str, stored: bytes) -> str | None:
        """POST one event in binary mode; ``None`` on 2xx, else a short PHI-free reason."""
        event = events.from_json(stored)
        headers, body = events.to_binary(event)
        try:
            http.request("POST", url, body=body, headers=headers, timeout=self.timeout)
        except (http.ServiceUnavailable, http.RequestRejected) as exc:
            return exc.reason  # every answer but a 2xx is retried (see the module docstring)
        return None
