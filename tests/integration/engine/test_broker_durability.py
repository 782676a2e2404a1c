"""Nothing acknowledged is lost: kill -9 of the standalone broker, restarts, abandoned attempts.

(Rule 2 of the broker contract.)
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import yaml
from _broker_harness import (
    Subscriber,
    broker_manifest,
    event,
    eventually,
    post_event,
    settle,
    stored_deliveries,
    trigger_manifest,
)
from aiohttp import web

from radflow.engine.broker import BrokerRuntime
from radflow.engine.ports import free_port
from radflow.sdk import events as ev


async def spawn_broker(manifests: Path, state: Path, port: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "radflow.engine.broker",
        "--manifests",
        str(manifests),
        "--state",
        str(state),
        "--port",
        str(port),
        "--log-level",
        "WARNING",
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line.decode().strip() == f"READY {port}", line
    return proc


def test_kill_9_after_202_loses_nothing(tmp_path: Path) -> None:
    """Events acked while the subscriber is down survive SIGKILL, delivered after a restart."""

    async def scenario() -> None:
        sub_port = free_port()
        manifests = tmp_path / "manifests"
        manifests.mkdir()
        delivery = {"retry": 100, "backoffPolicy": "linear", "backoffDelay": "PT0.05S"}
        docs = [
            broker_manifest(delivery=delivery),
            trigger_manifest("all", f"http://127.0.0.1:{sub_port}/"),
            {
                "apiVersion": "serving.knative.dev/v1",
                "kind": "Service",
                "metadata": {"name": "ignored"},
            },
        ]
        (manifests / "broker.yaml").write_text(yaml.safe_dump_all(docs))
        port = free_port()
        proc = await spawn_broker(manifests, tmp_path / "state", port)
        url = f"http://127.0.0.1:{port}/default/default"
        ids = [f"evt-{i}" for i in range(60)]
        sub = Subscriber()
        try:
            async with aiohttp.ClientSession() as session:

                async def post(i: str) -> int:
                    headers, body = ev.to_binary(event(id_=i))
                    async with session.post(
                        url, data=body, headers={k: str(v) for k, v in headers.items()}
                    ) as r:
                        return r.status

                statuses = await asyncio.gather(*(post(i) for i in ids))
            assert statuses == [202] * len(ids)
            proc.send_signal(signal.SIGKILL)  # no chance to flush anything
            assert await proc.wait() == -signal.SIGKILL
            await sub.start(sub_port)
            proc = await spawn_broker(manifests, tmp_path / "state", port)
            # every acked event, at least once (an attempt cut by the kill may come twice)
            await sub.wait_until(lambda got: {r.headers["ce-id"] for r in got} >= set(ids), 20)
            assert {r.headers["ce-id"] for r in sub.received} == set(ids)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.wait(), 15)
            await sub.stop()

    asyncio.run(scenario())


def test_waiting_retry_resumes_after_restart_at_its_due_time(tmp_path: Path) -> None:
    async def scenario() -> None:
        sub = await Subscriber(
            lambda req, n: web.Response(status=503) if n == 0 else web.Response(status=202)
        ).start()
        delivery = {"retry": 3, "backoffPolicy": "exponential", "backoffDelay": "PT0.8S"}
        manifests = ([broker_manifest(delivery=delivery)], [trigger_manifest("t", sub.url)])
        # the first broker's clock stands still: its retry is never due while it runs
        frozen = time.time()
        rt = BrokerRuntime(
            brokers=manifests[0], triggers=manifests[1], state_dir=tmp_path, clock=lambda: frozen
        )
        await rt.start()
        try:
            await post_event(rt.ingress_url("default", "default"), event(id_="wait"))
            await sub.wait_for(1)

            async def rescheduled() -> bool:
                return [a for a, _ in await stored_deliveries(rt)] == [1]

            await eventually(rescheduled, "the retry committed with its due time")
            ((_, due),) = await stored_deliveries(rt)
            assert due == frozen + 0.8
            await rt.stop()
            assert len(sub.received) == 1
            rt = BrokerRuntime(brokers=manifests[0], triggers=manifests[1], state_dir=tmp_path)
            await rt.start()
            assert rt.pending == 1
            assert await stored_deliveries(rt) == [(1, due)]
            await sub.wait_for(2, timeout=5)
            await settle(rt)
            # at the persisted due time, not "immediately after the restart"
            assert sub.received[1].wall >= due
            assert await rt.store.count() == (0, 0)
        finally:
            await rt.stop()
            await sub.stop()

    asyncio.run(scenario())


def test_stop_abandons_in_flight_attempt_which_is_redelivered(tmp_path: Path) -> None:
    release = asyncio.Event()

    async def slow_first(req: web.Request, n: int) -> web.Response:
        if n == 0:
            await release.wait()  # hangs until the test ends: stop() must not wait for it
        return web.Response(status=202)

    async def scenario() -> None:
        sub = await Subscriber(slow_first).start()
        manifests = ([broker_manifest()], [trigger_manifest("t", sub.url)])
        rt = BrokerRuntime(
            brokers=manifests[0], triggers=manifests[1], state_dir=tmp_path, stop_grace=0.1
        )
        await rt.start()
        try:
            await post_event(rt.ingress_url("default", "default"), event(id_="inflight"))
            await sub.wait_for(1)
            await asyncio.wait_for(rt.stop(), 30)  # returns although the attempt never ends
            rt = BrokerRuntime(brokers=manifests[0], triggers=manifests[1], state_dir=tmp_path)
            await rt.start()
            await sub.wait_for(2, timeout=5)
            await settle(rt)
            assert [r.headers["ce-id"] for r in sub.received] == ["inflight", "inflight"]
            assert await rt.store.count() == (0, 0)
        finally:
            release.set()
            await rt.stop()
            await sub.stop()

    asyncio.run(scenario())


def test_store_file_is_wal_and_synchronous_full(tmp_path: Path) -> None:
    async def scenario() -> None:
        rt = BrokerRuntime(brokers=[broker_manifest()], triggers=[], state_dir=tmp_path)
        await rt.start()
        try:
            mode, sync = await rt.store.run(
                lambda c: (
                    c.execute("PRAGMA journal_mode").fetchone()[0],
                    c.execute("PRAGMA synchronous").fetchone()[0],
                )
            )
            assert (mode, sync) == ("wal", 2)  # 2 = FULL
        finally:
            await rt.stop()

    asyncio.run(scenario())
    assert os.path.exists(tmp_path / "broker.sqlite3")


def test_standalone_refuses_invalid_manifest(tmp_path: Path) -> None:
    bad = trigger_manifest(
        "t", "http://127.0.0.1:9/", filters=[{"exact": {"type": "a"}, "suffix": {"type": "b"}}]
    )
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "all.yaml").write_text(yaml.safe_dump_all([broker_manifest(), bad]))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "radflow.engine.broker",
            "--manifests",
            str(tmp_path / "m"),
            "--state",
            str(tmp_path / "s"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "Trigger default/t: spec.filters[0] must set exactly one dialect" in done.stderr
