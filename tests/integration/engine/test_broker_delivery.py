"""Retries, backoff schedule, timeouts, dead letters, fan-out on loopback (contracts §4, §13.6-9).

No test measures elapsed time: the retry schedule is checked on the due times the broker stores
against the readings of its clock (``check_schedule``), and "nothing more happens" is asserted
once the broker has no pending delivery (``settle``).
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

from _broker_harness import (
    RecordingClock,
    Schedule,
    Subscriber,
    broker_manifest,
    check_schedule,
    event,
    eventually,
    exact_type,
    post_event,
    settle,
    started,
    trigger_manifest,
)
from aiohttp import web

from radflow.engine import metrics


def failing(status: int) -> web.Response:
    return web.Response(status=status)


def test_exponential_retry_count_and_schedule(tmp_path: Path) -> None:
    schedule, clock = Schedule(), RecordingClock()

    async def answer(req: web.Request, n: int) -> web.Response:
        await schedule.read()
        return failing(503)

    async def scenario() -> None:
        sub = await Subscriber(answer).start()
        delivery = {"retry": 3, "backoffPolicy": "exponential", "backoffDelay": "PT0.1S"}
        rt = await started(
            tmp_path, [broker_manifest(delivery=delivery)], [trigger_manifest("t", sub.url)], clock
        )
        schedule.runtime = rt
        try:
            assert (await post_event(rt.ingress_url("default", "default"), event()))[0] == 202
            await sub.wait_for(4)
            await settle(rt)
            assert len(sub.received) == 4  # retry + 1 attempts, then dropped (no DLS)
            check_schedule(sub, schedule, clock, [0.1, 0.2, 0.4])  # d * 2^(n-1)
            assert await rt.store.count() == (0, 0)
        finally:
            await rt.stop()
            await sub.stop()

    asyncio.run(scenario())


def test_linear_backoff_first_retry_immediate(tmp_path: Path) -> None:
    schedule, clock = Schedule(), RecordingClock()

    async def answer(req: web.Request, n: int) -> web.Response:
        await schedule.read()
        return failing(500) if n < 3 else web.Response(status=202)

    async def scenario() -> None:
        sub = await Subscriber(answer).start()
        delivery = {"retry": 4, "backoffPolicy": "linear", "backoffDelay": "PT0.15S"}
        rt = await started(
            tmp_path,
            [broker_manifest()],
            [trigger_manifest("t", sub.url, delivery=delivery)],
            clock,
        )
        schedule.runtime = rt
        try:
            await post_event(rt.ingress_url("default", "default"), event())
            await sub.wait_for(4)
            await settle(rt)
            assert len(sub.received) == 4  # success on the 4th attempt stops the retries
            check_schedule(sub, schedule, clock, [0.0, 0.15, 0.3])  # d * (n-1)
        finally:
            await rt.stop()
            await sub.stop()

    asyncio.run(scenario())


def test_timeout_is_retried_then_dead_lettered(tmp_path: Path) -> None:
    release = asyncio.Event()

    async def hang(req: web.Request, n: int) -> web.Response:
        if n == 0:
            await release.wait()  # never answers in time: only the delivery timeout ends it
        return web.Response(status=202)

    async def scenario() -> None:
        sub = await Subscriber(hang).start()
        dls = await Subscriber().start()
        # 1 s: ample for the retry that answers at once, even on a busy machine
        delivery = {"retry": 2, "timeout": "PT1S", "deadLetterSink": {"uri": dls.url}}
        rt = await started(
            tmp_path, [broker_manifest()], [trigger_manifest("t", sub.url, delivery=delivery)]
        )
        try:
            await post_event(rt.ingress_url("default", "default"), event())
            await sub.wait_for(2)  # arrives only because the first attempt was cut
            await settle(rt)
            assert len(sub.received) == 2  # timed out once, retried, succeeded
            assert dls.received == []
            assert (
                metrics.REGISTRY.get_sample_value(
                    "radflow_broker_retries_total",
                    {"trigger": "default/t", "function": f"127.0.0.1:{sub.port}"},
                )
                == 1
            )
        finally:
            release.set()
            await rt.stop()
            await sub.stop()
            await dls.stop()

    asyncio.run(scenario())


def test_dead_letter_carries_original_event_and_error_attributes(tmp_path: Path) -> None:
    async def scenario() -> None:
        sub = await Subscriber(
            lambda req, n: web.Response(status=503, text="model loading")
        ).start()
        dls = await Subscriber().start()
        delivery = {
            "retry": 1,
            "backoffPolicy": "linear",
            "backoffDelay": "PT0.05S",
            "deadLetterSink": {"uri": dls.url},
        }
        rt = await started(
            tmp_path, [broker_manifest(delivery=delivery)], [trigger_manifest("t", sub.url)]
        )
        try:
            labels = {"trigger": "default/t", "function": f"127.0.0.1:{sub.port}"}

            def sample(name: str, **extra: str) -> float:
                return metrics.REGISTRY.get_sample_value(name, {**labels, **extra}) or 0.0

            before = (
                sample("radflow_broker_retries_total"),
                sample("radflow_broker_dead_letters_total"),
                sample("radflow_broker_deliveries_total", outcome="retry"),
            )
            original = event(id_="orig-1", radflowjob="job-9")
            await post_event(rt.ingress_url("default", "default"), original)
            (letter,) = await dls.wait_for(1)
            await settle(rt)
            after = (
                sample("radflow_broker_retries_total"),
                sample("radflow_broker_dead_letters_total"),
                sample("radflow_broker_deliveries_total", outcome="retry"),
            )
            assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 2]
            assert sample("radflow_broker_queue_depth") == 0
            assert len(sub.received) == 2
            h = letter.headers
            assert (
                h["ce-id"] == "orig-1"
                and h["ce-type"] == "dev.radflow.test.v1"
                and h["ce-radflowjob"] == "job-9"
            )
            assert json.loads(letter.body) == {"n": 1}  # the original data
            assert h["ce-knativeerrordest"] == sub.url
            assert h["ce-knativeerrorcode"] == "503"
            assert base64.b64decode(h["ce-knativeerrordata"]) == b"model loading"
            assert "ce-knativebrokerttl" not in h
        finally:
            await rt.stop()
            await sub.stop()
            await dls.stop()

    asyncio.run(scenario())


def test_permanent_failure_goes_straight_to_dls_and_dls_is_retried(tmp_path: Path) -> None:
    async def scenario() -> None:
        sub = await Subscriber(lambda req, n: web.Response(status=400, text="x" * 2000)).start()
        dls = await Subscriber(
            lambda req, n: failing(503) if n == 0 else web.Response(status=200)
        ).start()
        delivery = {"retry": 5, "deadLetterSink": {"uri": dls.url}}
        rt = await started(
            tmp_path, [broker_manifest()], [trigger_manifest("t", sub.url, delivery=delivery)]
        )
        try:
            await post_event(rt.ingress_url("default", "default"), event())
            await dls.wait_for(2)
            await settle(rt)
            assert len(sub.received) == 1  # 400: no retry
            assert len(dls.received) == 2  # the DLS uses the same retry policy
            data = dls.received[1].headers["ce-knativeerrordata"]
            assert dls.received[1].headers["ce-knativeerrorcode"] == "400"
            assert len(data) == 1024  # base64 text truncated to 1024 chars
        finally:
            await rt.stop()
            await sub.stop()
            await dls.stop()

    asyncio.run(scenario())


def test_redirect_is_not_retried(tmp_path: Path) -> None:
    async def scenario() -> None:
        sub = await Subscriber(
            lambda req, n: web.Response(status=302, headers={"Location": "/elsewhere"})
        ).start()
        rt = await started(
            tmp_path, [broker_manifest()], [trigger_manifest("t", sub.url, delivery={"retry": 3})]
        )
        try:
            await post_event(rt.ingress_url("default", "default"), event())
            await sub.wait_for(1)
            await settle(rt)  # the delivery is finished: no retry can follow
            assert len(sub.received) == 1
        finally:
            await rt.stop()
            await sub.stop()

    asyncio.run(scenario())


def test_non_cloudevent_2xx_body_is_a_502_and_retried(tmp_path: Path) -> None:
    """What a functions-framework ``@cloud_event`` handler answers (200 text/html "OK")."""

    def ok_html(req: web.Request, n: int) -> web.Response:
        return web.Response(status=200, text="OK", content_type="text/html")

    async def scenario() -> None:
        sub = await Subscriber(ok_html).start()
        dls = await Subscriber().start()
        delivery = {"retry": 2, "deadLetterSink": {"uri": dls.url}}
        rt = await started(
            tmp_path, [broker_manifest()], [trigger_manifest("t", sub.url, delivery=delivery)]
        )
        try:
            await post_event(rt.ingress_url("default", "default"), event())
            (letter,) = await dls.wait_for(1)
            await settle(rt)
            assert len(sub.received) == 3
            assert letter.headers["ce-knativeerrorcode"] == "502"
            assert base64.b64decode(letter.headers["ce-knativeerrordata"]) == b"OK"
        finally:
            await rt.stop()
            await sub.stop()
            await dls.stop()

    asyncio.run(scenario())


def test_each_matching_trigger_is_delivered_independently(tmp_path: Path) -> None:
    async def scenario() -> None:
        good = await Subscriber().start()
        flaky = await Subscriber(
            lambda req, n: failing(503) if n < 2 else web.Response(status=202)
        ).start()
        delivery = {"retry": 3, "backoffPolicy": "exponential", "backoffDelay": "PT0.05S"}
        triggers = [
            trigger_manifest("good-1", good.url, filters=exact_type("dev.radflow.test.v1")),
            trigger_manifest(
                "good-2", good.url, filters=[{"prefix": {"type": "dev.radflow."}}]
            ),  # same subscriber
            trigger_manifest("flaky", flaky.url),
            trigger_manifest("other", good.url, filters=exact_type("something.else")),
        ]
        rt = await started(tmp_path, [broker_manifest(delivery=delivery)], triggers)
        try:
            await post_event(rt.ingress_url("default", "default"), event(id_="fan"))
            await flaky.wait_for(3)
            await settle(rt)
            assert len(good.received) == 2  # one per matching Trigger, even for the same subscriber
            assert len(flaky.received) == 3  # its own retries did not repeat the others' deliveries
            assert {r.headers["ce-id"] for r in good.received + flaky.received} == {"fan"}
        finally:
            await rt.stop()
            await good.stop()
            await flaky.stop()

    asyncio.run(scenario())


def test_transport_error_retried_until_subscriber_appears(tmp_path: Path) -> None:
    async def scenario() -> None:
        from radflow.engine.ports import free_port

        port = free_port()
        delivery = {"retry": 20, "backoffPolicy": "linear", "backoffDelay": "PT0.05S"}
        rt = await started(
            tmp_path,
            [broker_manifest()],
            [trigger_manifest("t", f"http://127.0.0.1:{port}/", delivery=delivery)],
        )
        sub = Subscriber()
        labels = {"trigger": "default/t", "function": f"127.0.0.1:{port}"}

        async def refused_twice() -> bool:
            retries = metrics.REGISTRY.get_sample_value("radflow_broker_retries_total", labels)
            return (retries or 0) >= 2

        try:
            await post_event(rt.ingress_url("default", "default"), event())
            await eventually(refused_twice, "two refused attempts")
            await sub.start(port)
            await sub.wait_for(1, timeout=5)
            await settle(rt)
            assert len(sub.received) == 1
        finally:
            await rt.stop()
            await sub.stop()

    asyncio.run(scenario())
