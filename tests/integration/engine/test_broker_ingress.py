"""Broker ingress on loopback: status codes, durable 202, attributes, encodings.

(Contracts §1, §13.2-4.)
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
from _broker_harness import (
    Subscriber,
    broker_manifest,
    event,
    post_event,
    settle,
    started,
    trigger_manifest,
)

from radflow.engine.broker.runtime import DB_NAME
from radflow.sdk import events as ev


def test_status_codes(tmp_path: Path) -> None:
    async def scenario() -> None:
        sub = await Subscriber().start()
        rt = await started(tmp_path, [broker_manifest()], [trigger_manifest("t", sub.url)])
        base = f"http://127.0.0.1:{rt.port}"
        h, body = ev.to_binary(event())
        h = {k: str(v) for k, v in h.items()}
        try:
            async with aiohttp.ClientSession() as s:
                async with s.options(f"{base}/default/default") as r:
                    assert r.status == 200
                    assert r.headers["Allow"] == "POST, OPTIONS"
                    assert r.headers["WebHook-Allowed-Origin"] == "*"
                    assert r.headers["WebHook-Allowed-Rate"] == "*"
                for method in ("GET", "PUT", "DELETE"):
                    async with s.request(method, f"{base}/default/default") as r:
                        assert r.status == 405, method
                async with s.post(f"{base}/", data=body, headers=h) as r:
                    assert r.status == 404
                for path in ("/default", "/a/b/c", "//default"):
                    async with s.post(base + path, data=body, headers=h) as r:
                        assert r.status == 400, path
                async with s.post(f"{base}/default/nosuch", data=body, headers=h) as r:
                    assert r.status == 404
                async with s.post(f"{base}/other/default", data=body, headers=h) as r:
                    assert r.status == 404
                # not a CloudEvent at all, and CloudEvents missing a required attribute
                async with s.post(
                    f"{base}/default/default",
                    data=b'{"hello": 1}',
                    headers={"content-type": "application/json"},
                ) as r:
                    assert r.status == 400
                    assert "hello" not in await r.text()  # the body is never echoed
                for missing in ("ce-id", "ce-source", "ce-type", "ce-specversion"):
                    partial = {k: v for k, v in h.items() if k != missing}
                    async with s.post(f"{base}/default/default", data=body, headers=partial) as r:
                        assert r.status == 400, missing
                structured = {"specversion": "1.0", "source": "/x", "type": "t"}  # no id
                async with s.post(
                    f"{base}/default/default",
                    data=json.dumps(structured),
                    headers={"content-type": "application/cloudevents+json"},
                ) as r:
                    assert r.status == 400
                # a line break cannot travel in a binary-mode header: refused up front,
                # not dropped later
                with_newline = {**structured, "id": "nl", "subject": "a\nb"}
                async with s.post(
                    f"{base}/default/default",
                    data=json.dumps(with_newline),
                    headers={"content-type": "application/cloudevents+json"},
                ) as r:
                    assert r.status == 400
                # what Go's event.Validate() refuses but the Python SDK would let through
                for bad in ({"id": 7}, {"time": "yesterday"}):
                    doc = {**structured, "id": "x", **bad}
                    async with s.post(
                        f"{base}/default/default",
                        data=json.dumps(doc),
                        headers={"content-type": "application/cloudevents+json"},
                    ) as r:
                        assert r.status == 400, bad
                # TTL exhausted on arrival: 1 -> 0
                async with s.post(
                    f"{base}/default/default", data=body, headers={**h, "ce-knativebrokerttl": "1"}
                ) as r:
                    assert r.status == 400
                async with s.post(f"{base}/default/default/", data=body, headers=h) as r:
                    assert r.status == 202  # trailing slash is fine
            await sub.wait_for(1)
            await settle(rt)
            assert len(sub.received) == 1
        finally:
            await rt.stop()
            await sub.stop()

    asyncio.run(scenario())


def test_binary_and_structured_in_binary_out(tmp_path: Path) -> None:
    async def scenario() -> None:
        sub = await Subscriber().start()
        rt = await started(
            tmp_path,
            [broker_manifest(ns="radiology")],
            [trigger_manifest("t", sub.url, ns="radiology")],
        )
        url = rt.ingress_url("radiology", "default")
        assert url == f"http://127.0.0.1:{rt.port}/radiology/default"
        try:
            passthrough = {
                "X-Request-Id": "req-1",
                "X-B3-TraceId": "abc",
                "Knative-Custom": "k",
                "Authorization": "secret",
            }
            assert (await post_event(url, event(id_="bin", radflowjob="j1"), headers=passthrough))[
                0
            ] == 202
            assert (await post_event(url, event(id_="str"), structured=True))[0] == 202
            got = await sub.wait_for(2)
            await settle(rt)
            by_id = {r.headers["ce-id"]: r for r in got}
            for r in got:
                assert r.headers["ce-specversion"] == "1.0"  # binary mode out
                assert r.headers["content-type"] == "application/json"
                assert json.loads(r.body) == {"n": 1}
                assert r.headers["prefer"] == "reply"
                assert r.headers["kn-namespace"] == "radiology"
                assert "ce-knativebrokerttl" not in r.headers  # stripped before delivery
                assert r.headers["ce-knativearrivaltime"].endswith("Z")
            first = by_id["bin"].headers
            assert first["ce-radflowjob"] == "j1"
            assert (
                first["x-request-id"] == "req-1"
                and first["x-b3-traceid"] == "abc"
                and first["knative-custom"] == "k"
            )
            assert "authorization" not in first
        finally:
            await rt.stop()
            await sub.stop()

    asyncio.run(scenario())


def test_format_json_delivers_structured(tmp_path: Path) -> None:
    async def scenario() -> None:
        sub = await Subscriber().start()
        trig = trigger_manifest("t", sub.url, delivery={"format": "json"})
        rt = await started(tmp_path, [broker_manifest()], [trig])
        try:
            assert (await post_event(rt.ingress_url("default", "default"), event(id_="s1")))[
                0
            ] == 202
            (got,) = await sub.wait_for(1)
            assert got.headers["content-type"].startswith("application/cloudevents+json")
            doc = json.loads(got.body)
            assert doc["id"] == "s1" and doc["data"] == {"n": 1} and "knativebrokerttl" not in doc
        finally:
            await rt.stop()
            await sub.stop()

    asyncio.run(scenario())


def test_202_means_committed_to_sqlite(tmp_path: Path) -> None:
    """With the subscriber down, a 202 leaves the event and both deliveries in the store."""

    async def scenario() -> None:
        dead = "http://127.0.0.1:9/"  # discard port: connection refused
        slow = {"retry": 5, "backoffPolicy": "linear", "backoffDelay": "PT10S"}
        triggers = [trigger_manifest(n, dead, delivery=slow) for n in ("a", "b")]
        rt = await started(tmp_path, [broker_manifest()], triggers)
        try:
            assert (await post_event(rt.ingress_url("default", "default"), event()))[0] == 202
            assert (tmp_path / "state" / DB_NAME).exists()
            events, deliveries = await rt.store.count()
            assert (events, deliveries) == (1, 2)
        finally:
            await rt.stop()

    asyncio.run(scenario())


def test_unmatched_event_is_accepted_and_not_stored(tmp_path: Path) -> None:
    async def scenario() -> None:
        sub = await Subscriber().start()
        trig = trigger_manifest("t", sub.url, filters=[{"exact": {"type": "wanted"}}])
        rt = await started(tmp_path, [broker_manifest()], [trig])
        try:
            assert (await post_event(rt.ingress_url("default", "default"), event("unwanted")))[
                0
            ] == 202
            assert (await post_event(rt.ingress_url("default", "default"), event("wanted")))[
                0
            ] == 202
            await sub.wait_for(1)
            await settle(rt)  # nothing pending: no further delivery can follow
            assert [r.headers["ce-type"] for r in sub.received] == ["wanted"]
            assert await rt.store.count() == (0, 0)
        finally:
            await rt.stop()
            await sub.stop()

    asyncio.run(scenario())
