"""Replies re-enter the same broker; TTL stops reply loops; bad replies dead-letter.

(Contracts §3, §13.10.)
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

from _broker_harness import (
    Subscriber,
    broker_manifest,
    event,
    exact_type,
    post_event,
    reply_response,
    settle,
    started,
    trigger_manifest,
)
from aiohttp import web


def test_reply_chain_through_triggers(tmp_path: Path) -> None:
    """A consumes a.v1 and replies b.v1 (200); B consumes b.v1 and replies c.v1 with 202; C acks."""

    async def scenario() -> None:
        a = await Subscriber(lambda req, n: reply_response("b.v1")).start()
        b = await Subscriber(lambda req, n: reply_response("c.v1", status=202)).start()
        c = await Subscriber().start()
        triggers = [
            trigger_manifest("a", a.url, filters=exact_type("a.v1")),
            trigger_manifest("b", b.url, filters=exact_type("b.v1")),
            trigger_manifest("c", c.url, filters=exact_type("c.v1")),
        ]
        rt = await started(tmp_path, [broker_manifest()], triggers)
        try:
            status, _ = await post_event(
                rt.ingress_url("default", "default"), event("a.v1"), headers={"X-Request-Id": "r1"}
            )
            assert status == 202
            (last,) = await c.wait_for(1)
            await settle(rt)
            assert [len(s.received) for s in (a, b, c)] == [1, 1, 1]
            assert b.received[0].headers["ce-type"] == "b.v1"
            assert b.received[0].headers["ce-source"] == "/subscriber"
            assert "ce-knativebrokerttl" not in b.received[0].headers
            assert last.headers["ce-type"] == "c.v1"
            assert last.headers["prefer"] == "reply"
            assert await rt.store.count() == (0, 0)
        finally:
            await rt.stop()
            for s in (a, b, c):
                await s.stop()

    asyncio.run(scenario())


def test_self_matching_reply_loop_stops_at_ttl(tmp_path: Path) -> None:
    """A Trigger whose subscriber replies with the type it consumes loops until the TTL runs out."""

    async def scenario() -> None:
        loop = await Subscriber(lambda req, n: reply_response("loop.v1")).start()
        dls = await Subscriber().start()
        trig = trigger_manifest(
            "loop",
            loop.url,
            filters=exact_type("loop.v1"),
            delivery={"deadLetterSink": {"uri": dls.url}},
        )
        rt = await started(tmp_path, [broker_manifest()], [trig])
        try:
            # posted with TTL 5 -> 4 at ingress; replies enter with 3, 2, 1; the next would be 0
            status, _ = await post_event(
                rt.ingress_url("default", "default"),
                event("loop.v1"),
                headers={"ce-knativebrokerttl": "5"},
            )
            assert status == 202
            (letter,) = await dls.wait_for(1)
            await settle(rt)  # nothing pending: no further attempt or reply can follow
            assert len(loop.received) == 4
            assert len(dls.received) == 1
            # the delivery whose reply was refused is dead-lettered with 400,
            # dest = the broker ingress
            assert letter.headers["ce-knativeerrorcode"] == "400"
            assert letter.headers["ce-knativeerrordest"] == rt.ingress_url("default", "default")
            assert b"exhausted" in base64.b64decode(letter.headers["ce-knativeerrordata"])
            assert letter.headers["ce-source"] == "/subscriber"  # it is the 3rd reply that looped
        finally:
            await rt.stop()
            await loop.stop()
            await dls.stop()

    asyncio.run(scenario())


def test_invalid_reply_fails_original_delivery_without_retry(tmp_path: Path) -> None:
    def broken(req: web.Request, n: int) -> web.Response:
        # claims to be a CloudEvent but lacks ce-id/ce-source/ce-type
        return web.Response(
            status=200,
            body=b"{}",
            headers={"ce-specversion": "1.0", "content-type": "application/json"},
        )

    async def scenario() -> None:
        sub = await Subscriber(broken).start()
        dls = await Subscriber().start()
        trig = trigger_manifest(
            "t", sub.url, delivery={"retry": 3, "deadLetterSink": {"uri": dls.url}}
        )
        rt = await started(tmp_path, [broker_manifest()], [trig])
        try:
            await post_event(rt.ingress_url("default", "default"), event(id_="orig"))
            (letter,) = await dls.wait_for(1)
            await settle(rt)
            assert len(sub.received) == 1
            assert letter.headers["ce-id"] == "orig"
            assert letter.headers["ce-knativeerrorcode"] == "400"
        finally:
            await rt.stop()
            await sub.stop()
            await dls.stop()

    asyncio.run(scenario())


def test_reply_matching_no_trigger_completes_delivery(tmp_path: Path) -> None:
    async def scenario() -> None:
        sub = await Subscriber(lambda req, n: reply_response("nobody.listens.v1")).start()
        rt = await started(
            tmp_path,
            [broker_manifest()],
            [trigger_manifest("t", sub.url, filters=exact_type("in.v1"))],
        )
        try:
            await post_event(rt.ingress_url("default", "default"), event("in.v1"))
            await sub.wait_for(1)
            await settle(rt)  # nothing pending: no further attempt or reply can follow
            assert len(sub.received) == 1
            assert await rt.store.count() == (0, 0)
        finally:
            await rt.stop()
            await sub.stop()

    asyncio.run(scenario())
