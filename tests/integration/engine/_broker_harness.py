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
    at: float
    path: str

    @property
    def event(self) -> ev.CloudEvent:
        return ev.from_http(self.headers, self.body)


Handler = Callable[[web.Request, int], Awaitable[web.StreamResponse] | web.StreamResponse]


@dataclass
class Subscriber:
    """A real HTTP server on 127.0.0.1; ``handler(request, n)`` answers the n-th request (0-based)."""

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
        assert self._arrived is not None
        async with self._arrived:
            await asyncio.wait_for(
                self._arrived.wait_for(lambda: len(self.received) >= count), timeout
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
    tmp: Path, brokers: list[dict[str, Any]], triggers: list[dict[str, Any]]
) -> BrokerRuntime:
    runtime = BrokerRuntime(
        brokers=brokers, triggers=triggers, state_dir=tmp / "state", stop_grace=1.0
    )
    await runtime.start()
    return runtime


async def settle(runtime: BrokerRuntime, timeout: float = 10.0) -> None:
    """Wait until the broker has no pending deliveries."""
    deadline = time.monotonic() + timeout
    while runtime.pending and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert runtime.pending == 0, f"{runtime.pending} deliveries still pending"
