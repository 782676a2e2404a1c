"""BrokerRuntime: the embedded engine's durable, Knative-faithful Broker (one process, many
Brokers).

Ingress (knative-contracts.md §1, §13.2): ``POST /<namespace>/<broker>`` with a binary- or
structured-mode CloudEvent. The event gets ``knativearrivaltime`` and ``knativebrokerttl``, is
matched against the broker's Triggers, and the event plus one delivery per matching Trigger is
committed to sqlite in one transaction; only then does the ingress answer **202** (the spec's
"durably enqueue" rule, as the Kafka broker does, not MT+IMC's synchronous fan-out).

Everything else (retries, dead letters, replies) is the :class:`Dispatcher`'s.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from radflow.engine import metrics
from radflow.engine.broker import config as cfg
from radflow.engine.broker import store as st
from radflow.engine.broker.dispatcher import Delivery, Dispatcher, LiveEvent, Reply, ReplyRejected
from radflow.engine.broker.filters import matches
from radflow.engine.broker.policy import (
    ARRIVAL_ATTR,
    TTL_ATTR,
    arrival_time,
    attribute_problem,
    next_ttl,
    pass_through,
)
from radflow.sdk import events as ev
from radflow.sdk.errors import Unavailable
from radflow.sdk.httpserver import start_site

log = logging.getLogger(__name__)

DB_NAME = "broker.sqlite3"
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_ALLOW = "POST, OPTIONS"
_NOT_A_CLOUDEVENT = (
    "not a valid CloudEvent: send binary mode (ce-id, ce-source, ce-type, ce-specversion headers) "
    "or structured mode (Content-Type: application/cloudevents+json)\n"
)


class Rejected(Exception):
    """An event the ingress refuses; ``status`` is the HTTP answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class Prepared:
    """An event ready to commit: TTL and arrival time set, matching Triggers found."""

    event: ev.CloudEvent
    body: bytes
    triggers: list[str]


class BrokerRuntime:
    """Every Broker and Trigger of the loaded manifests, served on one loopback port.

    ``resolve(destination, namespace)`` turns a Destination with a ``ref`` into an absolute URL;
    it is called once per destination, here, so an unresolvable manifest fails at construction.
    ``clock`` (wall-clock seconds, :func:`time.time` by default) stamps acceptance and due times:
    tests pass their own to check the retry schedule without measuring elapsed time.
    """

    def __init__(
        self,
        *,
        brokers: list[dict[str, Any]],
        triggers: list[dict[str, Any]],
        state_dir: Path,
        resolve: Callable[[dict[str, Any], str], str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        max_in_flight: int = 256,
        stop_grace: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.brokers, self.triggers = cfg.load(brokers, triggers, resolve)
        self._by_broker: dict[str, list[cfg.TriggerConfig]] = {key: [] for key in self.brokers}
        for trigger in self.triggers.values():
            self._by_broker[trigger.broker].append(trigger)
        self.state_dir = Path(state_dir)
        self.host = host
        self._port = port
        self._stop_grace = stop_grace
        self._max_in_flight = max_in_flight
        self._clock = clock
        self._store: st.Store | None = None
        self._dispatcher: Dispatcher | None = None
        self._runner: web.AppRunner | None = None

    # ----------------------------------------------------------------- public API

    @property
    def port(self) -> int:
        return self._port

    def ingress_url(self, namespace: str, name: str) -> str:
        """What a SinkBinding puts in ``K_SINK`` for Broker ``namespace/name``."""
        return f"http://{self.host}:{self._port}/{namespace}/{name}"

    @property
    def store(self) -> st.Store:
        if self._store is None:
            raise Unavailable("broker runtime is not started")
        return self._store

    @property
    def pending(self) -> int:
        """Deliveries waiting or in flight (0 before start)."""
        return self._dispatcher.pending if self._dispatcher else 0

    async def start(self) -> None:
        """Open the store, resume pending deliveries, then serve the ingress."""
        self._store = st.Store(self.state_dir / DB_NAME)
        stored_events, stored = await self._store.open()
        self._dispatcher = Dispatcher(
            store=self._store,
            triggers=self.triggers,
            admit_reply=self._admit_reply,
            reply_url=lambda key: self.ingress_url(*key.split("/", 1)),
            max_in_flight=self._max_in_flight,
            clock=self._clock,
        )
        orphans = 0
        live_events: dict[int, LiveEvent] = {}
        for row in stored:
            if row.trigger not in self.triggers:
                orphans += 1  # kept in the store: they resume if the Trigger comes back
                continue
            event_row = stored_events[row.event_id]
            live = live_events.get(row.event_id)
            if live is None:
                live = LiveEvent(
                    event_row.id, event_row.broker, ev.from_json(event_row.body), event_row.headers
                )
                live_events[row.event_id] = live
            self._dispatcher.add(
                Delivery(row.id, live, row.trigger, row.phase, row.attempt, row.due, row.error)
            )
        if stored:
            log.info("resumed %d pending deliveries", len(stored) - orphans)
        if orphans:
            log.warning(
                "%d stored deliveries belong to Triggers that are no longer defined; "
                "kept, not sent",
                orphans,
            )
        await self._dispatcher.start()
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self._port = await start_site(self._runner, self.host, self._port)
        log.info(
            "broker ingress on http://%s:%d (%d brokers, %d triggers)",
            self.host,
            self._port,
            len(self.brokers),
            len(self.triggers),
        )

    async def stop(self) -> None:
        """Stop accepting, let in-flight attempts finish for ``stop_grace`` s (else they stay
        pending)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._dispatcher is not None:
            await self._dispatcher.stop(self._stop_grace)
            self._dispatcher = None
        if self._store is not None:
            await self._store.close()
            self._store = None

    # ----------------------------------------------------------------- admission

    def prepare(self, broker: str, event: ev.CloudEvent) -> Prepared:
        """TTL, arrival time and Trigger matching for one event entering ``broker`` (pure)."""
        problem = attribute_problem(ev.attributes(event))
        if problem:
            raise Rejected(400, f"not a valid CloudEvent: {problem}\n")
        try:
            ttl = next_ttl(event.get(TTL_ATTR))
        except ValueError:
            raise Rejected(400, f"{TTL_ATTR} must be an integer\n") from None
        if ttl <= 0:
            raise Rejected(
                400,
                f"{TTL_ATTR} exhausted: the event went round the broker too often (reply loop?)\n",
            )
        event = ev.with_attributes(event, **{TTL_ATTR: ttl, ARRIVAL_ATTR: arrival_time()})
        attrs = ev.attributes(event)
        for name, value in attrs.items():
            if isinstance(value, str) and _CONTROL.search(value):
                # binary mode carries attributes in HTTP headers, which cannot hold these
                raise Rejected(
                    400, f"attribute {name!r} contains a control character (line break?)\n"
                )
        chosen = [t.key for t in self._by_broker[broker] if matches(t.filter, attrs)]
        return Prepared(event, ev.to_json(event) if chosen else b"", chosen)

    async def _commit(self, broker: str, prepared: Prepared, headers: dict[str, str]) -> None:
        if not prepared.triggers:
            return
        now = self._clock()
        stored = await self.store.run(
            lambda c: st.insert_event(c, broker, prepared.body, headers, prepared.triggers, now)
        )
        self._track(broker, prepared, headers, stored, now)

    def _track(
        self, broker: str, prepared: Prepared, headers: dict[str, str], stored: Any, now: float
    ) -> None:
        event_id, delivery_ids = stored
        if self._dispatcher is None:
            return  # stopping: the rows are committed and resume on the next start
        live = LiveEvent(event_id, broker, prepared.event, headers)
        for delivery_id, trigger in zip(delivery_ids, prepared.triggers, strict=True):
            self._dispatcher.add(Delivery(delivery_id, live, trigger, "subscriber", 0, now))

    def _admit_reply(self, delivery: Delivery, reply: Reply) -> tuple[Any, Any]:
        """Store operation for a reply re-entering the originating delivery's broker.

        The reply inherits the original event's TTL, which the ingress rules then decrement;
        raises :class:`ReplyRejected` (400, no retry) when the reply cannot enter.
        """
        broker = delivery.event.broker
        ttl = delivery.event.event.get(TTL_ATTR)
        try:
            prepared = self.prepare(broker, ev.with_attributes(reply.event, **{TTL_ATTR: ttl}))
        except Rejected as exc:
            raise ReplyRejected(exc.status, str(exc).strip()) from None
        except (TypeError, ValueError) as exc:
            raise ReplyRejected(400, f"invalid reply: {type(exc).__name__}") from None
        if not prepared.triggers:
            _observe(prepared)
            return None, _noop
        now = self._clock()

        def op(conn: Any) -> Any:
            return st.insert_event(
                conn, broker, prepared.body, reply.headers, prepared.triggers, now
            )

        async def after(stored: Any) -> None:
            _observe(prepared)
            self._track(broker, prepared, reply.headers, stored, now)

        return op, after

    # ----------------------------------------------------------------- HTTP

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "OPTIONS":
            return web.Response(
                status=200,
                headers={
                    "Allow": _ALLOW,
                    "WebHook-Allowed-Origin": "*",
                    "WebHook-Allowed-Rate": "*",
                },
            )
        if request.method != "POST":
            return self._answer("-", 405, "only POST and OPTIONS\n", {"Allow": _ALLOW})
        path = request.path
        if path == "/":
            return self._answer("-", 404, "POST events to /<namespace>/<broker>\n")
        parts = path[1:-1].split("/") if path.endswith("/") else path[1:].split("/")
        if len(parts) != 2 or not all(parts):
            return self._answer("-", 400, "path must be /<namespace>/<broker>\n")
        broker = f"{parts[0]}/{parts[1]}"
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            event = ev.from_http(headers, body)
        except ev.InvalidEvent:
            return self._answer(broker if broker in self.brokers else "-", 400, _NOT_A_CLOUDEVENT)
        if broker not in self.brokers:
            return self._answer("-", 404, f"no Broker {broker}\n")
        try:
            prepared = self.prepare(broker, event)
        except Rejected as exc:
            log.info(
                "ingress %s rejected event id=%s type=%s: %s",
                broker,
                event.get("id"),
                event.get("type"),
                str(exc).strip(),
            )
            return self._answer(broker, exc.status, str(exc))
        try:
            await self._commit(broker, prepared, pass_through(request.headers.items()))
        except Unavailable as exc:
            log.error("ingress %s could not store event id=%s: %s", broker, event.get("id"), exc)
            return self._answer(broker, 503, "broker store unavailable; retry\n")
        _observe(prepared)
        return self._answer(broker, 202, "")

    @staticmethod
    def _answer(
        broker: str, status: int, text: str, headers: dict[str, str] | None = None
    ) -> web.Response:
        metrics.INGRESS.labels(broker, str(status)).inc()
        return web.Response(status=status, text=text or None, headers=headers)


async def _noop(_: Any) -> None:
    return None


def _observe(prepared: Prepared) -> None:
    """Job and export metrics from an event the broker accepted (engine/metrics.py)."""
    data = prepared.event.data
    if isinstance(data, (bytes, str)):
        try:
            data = json.loads(data)
        except ValueError:
            data = None
    metrics.JOB_CLOCK.observe(ev.attributes(prepared.event), data)
