"""Loopback helpers for the broker tests: programmable aiohttp subscribers and a broker factory."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from radflow.engine.broker import BrokerRuntime
from radflow.sdk import events as ev

API = "eventing.knative.dev/v1"


@dataclass
class Received:
    headers: dict[str, str]  # lower-cased names
    body: bytes
    at: float  # time.monotonic()
    path: str
    wall: float  # time.time(), the broker's default clock: compare with its due times

    @property
    def event(self) -> ev.CloudEvent:
        return ev.from_http(self.headers, self.body)


Handler = Callable[[web.Request, int], Awaitable[web.StreamResponse] | web.StreamResponse]


@dataclass
class Subscriber:
    """A real HTTP server on 127.0.0.1; ``handler(request, n)`` answers request n (0-based)."""

    handler: Handler | None = None
    received: list[Received] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None
    _arrived: asyncio.Condition | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def start(self, port: int = 0) -> Subscriber:
        self._arrived = asyncio.Condition()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        n = len(self.received)
        self.received.append(
            Received(
                {k.lower(): v for k, v in request.headers.items()},
                body,
                time.monotonic(),
                request.path,
                time.time(),
            )
        )
        assert self._arrived is not None
        async with self._arrived:
            self._arrived.notify_all()
        if self.handler is None:
            return web.Response(status=202)
        result = self.handler(request, n)
        if asyncio.iscoroutine(result):
            result = await result
        return result  # type: ignore[return-value]

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        return await self.wait_until(lambda got: len(got) >= count, timeout)

    async def wait_until(
        self, predicate: Callable[[list[Received]], bool], timeout: float = 10.0
    ) -> list[Received]:
        """Wait until ``predicate(received)`` holds (checked at every arrival)."""
        assert self._arrived is not None
        async with self._arrived:
            await asyncio.wait_for(
                self._arrived.wait_for(lambda: predicate(self.received)), timeout
            )
        return self.received


def broker_manifest(
    name: str = "default", ns: str = "default", delivery: dict[str, Any] | None = None
) -> dict[str, Any]:
    spec = {"delivery": delivery} if delivery else {}
    return {
        "apiVersion": API,
        "kind": "Broker",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def trigger_manifest(
    name: str,
    subscriber: str,
    *,
    broker: str = "default",
    ns: str = "default",
    filters: list[dict[str, Any]] | None = None,
    delivery: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"broker": broker, "subscriber": {"uri": subscriber}}
    if filters is not None:
        spec["filters"] = filters
    if delivery is not None:
        spec["delivery"] = delivery
    return {
        "apiVersion": API,
        "kind": "Trigger",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def exact_type(t: str) -> list[dict[str, Any]]:
    return [{"exact": {"type": t}}]


async def post_event(
    url: str,
    event: ev.CloudEvent,
    *,
    structured: bool = False,
    headers: dict[str, str] | None = None,
) -> tuple[int, str]:
    h, body = ev.to_structured(event) if structured else ev.to_binary(event)
    send = {k: str(v) for k, v in h.items()} | (headers or {})
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=send) as resp,
    ):
        return resp.status, await resp.text()


def event(
    type_: str = "dev.radflow.test.v1", *, id_: str | None = None, **ext: Any
) -> ev.CloudEvent:
    return ev.make_event(type_, "/tests", {"n": 1}, id=id_, extensions=ext or None)


def reply_response(type_: str, status: int = 200) -> web.Response:
    headers, body = ev.to_binary(ev.make_event(type_, "/subscriber", {"reply": True}))
    return web.Response(status=status, body=body, headers={k: str(v) for k, v in headers.items()})


async def started(
    tmp: Path,
    brokers: list[dict[str, Any]],
    triggers: list[dict[str, Any]],
    clock: Callable[[], float] = time.time,
) -> BrokerRuntime:
    runtime = BrokerRuntime(
        brokers=brokers, triggers=triggers, state_dir=tmp / "state", stop_grace=1.0, clock=clock
    )
    await runtime.start()
    return runtime


async def settle(runtime: BrokerRuntime, timeout: float = 10.0) -> None:
    """Wait until the broker has no pending deliveries: the signal that nothing more will happen.

    Checked between two steps of the broker's loop: a reply or a dead letter is stored and
    queued in the same step that finishes the delivery producing it, so once ``pending`` is 0
    every attempt, reply and dead letter has been made, and none follows without a new event.
    """
    deadline = time.monotonic() + timeout
    while runtime.pending and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert runtime.pending == 0, f"{runtime.pending} deliveries still pending"


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float = 10.0
) -> None:
    """Poll the async ``check`` until it is true; fail naming ``what`` after ``timeout`` s."""

    async def poll() -> None:
        while not await check():
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None


async def stored_deliveries(runtime: BrokerRuntime) -> list[tuple[int, float]]:
    """``(attempt, due)`` of every delivery row the broker has committed."""
    return await runtime.store.run(
        lambda c: [(int(a), float(d)) for a, d in c.execute("SELECT attempt, due FROM deliveries")],
        durable=False,
    )


@dataclass
class RecordingClock:
    """The broker's clock (``time.time``), keeping every reading: a due time the broker stored
    is then ``reading + backoff`` for one of them, which checks the schedule exactly."""

    readings: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        now = time.time()
        self.readings.append(now)
        return now


@dataclass
class Schedule:
    """The stored due time of a (single) delivery, read when each attempt arrives.

    While attempt ``n`` is in flight its row still holds the due time that released it
    (``attempt == n``), so reading it from the subscriber's handler sees every reschedule.
    """

    runtime: BrokerRuntime | None = None
    dues: list[tuple[int, float]] = field(default_factory=list)

    async def read(self) -> None:
        assert self.runtime is not None
        (row,) = await stored_deliveries(self.runtime)
        self.dues.append(row)


def check_schedule(
    sub: Subscriber, schedule: Schedule, clock: RecordingClock, delays: list[float]
) -> None:
    """Attempt ``n`` waited exactly ``delays[n-1]`` after the broker settled attempt ``n-1``.

    For each retry: the stored due time is a clock reading taken between the two attempts plus
    the expected delay (to float precision), and the attempt arrived no earlier than it. No
    elapsed time is measured, so a slow machine cannot fail this.
    """
    assert len(sub.received) == len(delays) + 1, (len(sub.received), delays)
    for n, want in enumerate(delays, start=1):
        attempt, due = schedule.dues[n]
        assert attempt == n, schedule.dues
        before, after = sub.received[n - 1].wall, sub.received[n].wall
        assert after >= due, f"attempt {n} came {due - after:.3f} s before its due time"
        settled = [t for t in clock.readings if before <= t <= after]
        assert any(abs(due - t - want) < 1e-6 for t in settled), (
            f"retry {n}: due time {due} is not {want} s after a clock reading "
            f"in [{before}, {after}]"
        )
