"""Delivery: one independent, durable delivery per (event, matching Trigger).

Each delivery has its own attempt counter, backoff and dead-letter state (knative-contracts.md
§4, §13.6). Pending deliveries live in memory in a due-time heap and in the sqlite store; every
state change is committed before the in-memory state moves on, so a crash at any point leaves
the delivery pending with its last committed ``due`` time and it is attempted again after a
restart (at-least-once: a subscriber may see an attempt twice, never zero times).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from radflow.engine import metrics
from radflow.engine.broker import store as st
from radflow.engine.broker.config import Destination, TriggerConfig
from radflow.engine.broker.policy import TTL_ATTR, Kind, classify, error_attributes, pass_through
from radflow.sdk import events as ev
from radflow.sdk.errors import RadflowError

log = logging.getLogger(__name__)


@dataclass
class LiveEvent:
    """An accepted event while it has pending deliveries (parsed once, shared by them)."""

    id: int
    broker: str
    event: ev.CloudEvent
    headers: dict[str, str]


@dataclass
class Delivery:
    id: int
    event: LiveEvent
    trigger: str
    phase: str  # "subscriber" | "dls"
    attempt: int  # attempts made in this phase
    due: float
    error: dict[str, Any] | None = None
    labels: tuple[str, str] = ("", "")


@dataclass(frozen=True)
class Reply:
    """A subscriber's reply, decoded, with the headers the broker passes through."""

    event: ev.CloudEvent
    headers: dict[str, str]


class ReplyRejected(Exception):
    """The reply cannot enter the broker (invalid, TTL exhausted): fails the original delivery."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


#: (delivery, reply) -> a store operation committing the reply's event (or None when no Trigger
#: matches it); raises ReplyRejected. The dispatcher runs it together with the delivery's finish.
ReplyAdmitter = Callable[
    [Delivery, Reply], tuple[Callable[[Any], Any] | None, Callable[[Any], Awaitable[None]]]
]


@dataclass
class _Attempt:
    kind: Kind
    code: int
    body: bytes = b""
    reply: Reply | None = None
    dest: str = ""


@dataclass
class Dispatcher:
    store: st.Store
    triggers: dict[str, TriggerConfig]
    admit_reply: ReplyAdmitter
    reply_url: Callable[[str], str]
    max_in_flight: int = 256
    #: wall-clock seconds for due times (persisted, so wall clock); tests pass a recording clock
    clock: Callable[[], float] = time.time
    _heap: list[tuple[float, int, int]] = field(default_factory=list)
    _pending: dict[int, Delivery] = field(default_factory=dict)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _session: aiohttp.ClientSession | None = None
    _loop_task: asyncio.Task[None] | None = None
    _stopping: bool = False
    _sem: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(256))

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=60)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        self._sem = asyncio.Semaphore(self.max_in_flight)
        self._loop_task = asyncio.create_task(self._run(), name="broker-dispatcher")

    async def stop(self, grace: float) -> None:
        """Stop scheduling; give in-flight attempts ``grace`` seconds, then abandon them.

        An abandoned attempt's row is unchanged in the store, so it is attempted again after
        a restart.
        """
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            # the scheduler may be parked on the in-flight semaphore: cancelling it loses nothing
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        if self._tasks:
            _, still = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in still:
                task.cancel()
            if still:
                log.info("abandoned %d in-flight delivery attempts; they stay pending", len(still))
                await asyncio.wait(still)
        if self._session is not None:
            await self._session.close()

    # ----------------------------------------------------------------- queue

    def add(self, delivery: Delivery) -> None:
        """Track a committed delivery and wake the scheduler."""
        trigger = self.triggers[delivery.trigger]
        delivery.labels = (trigger.key, trigger.subscriber.label)
        self._pending[delivery.id] = delivery
        metrics.QUEUE_DEPTH.labels(*delivery.labels).inc()
        self._push(delivery)

    def _push(self, delivery: Delivery) -> None:
        heapq.heappush(self._heap, (delivery.due, next(self._seq), delivery.id))
        self._wake.set()

    def _forget(self, delivery: Delivery) -> None:
        self._pending.pop(delivery.id, None)
        metrics.QUEUE_DEPTH.labels(*delivery.labels).dec()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def _run(self) -> None:
        while not self._stopping:
            now = self.clock()
            while self._heap and self._heap[0][0] <= now and not self._stopping:
                _, _, delivery_id = heapq.heappop(self._heap)
                delivery = self._pending.get(delivery_id)
                if delivery is None:
                    continue
                await self._sem.acquire()
                task = asyncio.create_task(self._attempt(delivery), name=f"delivery-{delivery_id}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if self._stopping:
                break
            self._wake.clear()
            timeout = max(self._heap[0][0] - self.clock(), 0.0) if self._heap else None
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    # ----------------------------------------------------------------- one attempt

    async def _attempt(self, delivery: Delivery) -> None:
        try:
            trigger = self.triggers[delivery.trigger]
            if delivery.phase == "subscriber":
                dest = trigger.subscriber
                extra: dict[str, Any] = {}
            elif trigger.delivery.dead_letter is not None:
                dest = trigger.delivery.dead_letter
                extra = dict(delivery.error or {})
            else:
                # stored in the dead-letter phase, but the Trigger no longer has a sink
                # (config changed)
                await self.store.run(
                    lambda c: st.finish(c, delivery.id, delivery.event.id), durable=False
                )
                self._forget(delivery)
                log.error(
                    "dropped event id=%s type=%s for trigger %s: its deadLetterSink was removed",
                    delivery.event.event.get("id"),
                    delivery.event.event.get("type"),
                    trigger.key,
                )
                return
            result = await self._send(delivery, trigger, dest, extra)
            metrics.DELIVERIES.labels(*delivery.labels, result.kind.value).inc()
            await self._settle(delivery, trigger, result)
        except RadflowError as exc:
            # the store refused a state change: keep the delivery pending and retry it soon
            log.warning("delivery %s: %s; retrying in 1 s", delivery.id, exc)
            self._retry_later(delivery)
        except Exception:
            log.exception("delivery %s: unexpected error; retrying in 1 s", delivery.id)
            self._retry_later(delivery)
        finally:
            self._sem.release()

    def _retry_later(self, delivery: Delivery) -> None:
        if delivery.id in self._pending and not self._stopping:
            delivery.due = self.clock() + 1.0
            self._push(delivery)

    async def _send(
        self, delivery: Delivery, trigger: TriggerConfig, dest: Destination, extra: dict[str, Any]
    ) -> _Attempt:
        outgoing = ev.with_attributes(delivery.event.event, **{TTL_ATTR: None}, **extra)
        if trigger.delivery.format == "json":
            headers, body = ev.to_structured(outgoing)
        else:
            headers, body = ev.to_binary(outgoing)
        send_headers = {k: str(v) for k, v in headers.items()}
        send_headers.update(delivery.event.headers)
        send_headers["Prefer"] = "reply"
        send_headers["Kn-Namespace"] = trigger.namespace
        assert self._session is not None
        timeout = aiohttp.ClientTimeout(total=trigger.delivery.timeout)
        try:
            async with self._session.post(
                dest.url, data=body, headers=send_headers, timeout=timeout, allow_redirects=False
            ) as resp:
                answer = await resp.read()
                status = resp.status
                resp_headers = {k.lower(): v for k, v in resp.headers.items()}
        except TimeoutError:
            return _Attempt(Kind.RETRY, 500, b"dispatch error: timeout", dest=dest.url)
        except aiohttp.ClientError as exc:
            return _Attempt(
                Kind.RETRY, 500, f"dispatch error: {type(exc).__name__}".encode(), dest=dest.url
            )
        except ValueError:
            # an attribute value HTTP cannot carry (e.g. a line break in a header):
            # retrying cannot help
            return _Attempt(
                Kind.FAIL,
                500,
                b"dispatch error: event cannot be encoded as an HTTP request",
                dest=dest.url,
            )
        kind, code = classify(status, resp_headers, answer)
        reply = None
        if kind is Kind.REPLY and delivery.phase == "subscriber":
            try:
                reply = Reply(
                    ev.from_http(resp_headers, answer), pass_through(resp_headers.items())
                )
            except ev.InvalidEvent:
                return _Attempt(
                    Kind.FAIL,
                    400,
                    b"invalid reply: not a valid CloudEvent",
                    dest=self.reply_url(trigger.broker),
                )
        elif kind is Kind.REPLY:
            kind = Kind.SUCCESS  # a dead-letter sink's reply is not routed anywhere
        return _Attempt(kind, code, answer, reply, dest.url)

    async def _settle(self, delivery: Delivery, trigger: TriggerConfig, result: _Attempt) -> None:
        event = delivery.event
        if result.kind is Kind.REPLY and result.reply is not None:
            try:
                reply_op, after = self.admit_reply(delivery, result.reply)
            except ReplyRejected as exc:
                result = _Attempt(
                    Kind.FAIL, exc.code, str(exc).encode(), dest=self.reply_url(trigger.broker)
                )
            else:
                ops = reply_op

                def finish_and_store(conn: Any) -> Any:
                    st.finish(conn, delivery.id, event.id)
                    return ops(conn) if ops is not None else None

                stored = await self.store.run(finish_and_store, durable=False)
                self._forget(delivery)
                await after(stored)
                return
        if result.kind in (Kind.SUCCESS, Kind.REPLY):
            await self.store.run(lambda c: st.finish(c, delivery.id, event.id), durable=False)
            self._forget(delivery)
            if delivery.phase == "dls":
                metrics.DEAD_LETTERS.labels(*delivery.labels).inc()
                log.warning(
                    "event id=%s type=%s dead-lettered by trigger %s (code %s)",
                    event.event.get("id"),
                    event.event.get("type"),
                    trigger.key,
                    (delivery.error or {}).get("knativeerrorcode"),
                )
            return
        attempts = delivery.attempt + 1
        policy = trigger.delivery
        if result.kind is Kind.RETRY and attempts <= policy.retry:
            due = self.clock() + policy.backoff(attempts)
            await self.store.run(
                lambda c: st.reschedule(c, delivery.id, attempts, due), durable=False
            )
            metrics.RETRIES.labels(*delivery.labels).inc()
            delivery.attempt, delivery.due = attempts, due
            self._push(delivery)
            return
        if delivery.phase == "subscriber" and policy.dead_letter is not None:
            error = error_attributes(result.dest, result.code, result.body)
            now = self.clock()
            await self.store.run(
                lambda c: st.to_dead_letter(c, delivery.id, error, now), durable=False
            )
            delivery.phase, delivery.attempt, delivery.due, delivery.error = "dls", 0, now, error
            self._push(delivery)
            return
        await self.store.run(lambda c: st.finish(c, delivery.id, event.id), durable=False)
        self._forget(delivery)
        log.error(
            "dropped event id=%s type=%s for trigger %s after %d attempt(s): last code %s, %s",
            event.event.get("id"),
            event.event.get("type"),
            trigger.key,
            attempts,
            result.code,
            "dead-letter sink failed too"
            if delivery.phase == "dls"
            else "no deadLetterSink configured",
        )
