"""Broker overhead per hop on loopback: ingress POST -> subscriber receipt, vs. a direct POST.

The broker runs as the standalone process (``python -m radflow.engine.broker``), as a user
would run it; the client and the subscriber share this process, so both timestamps come from
one monotonic clock. Events are sent one at a time (latency, not throughput), after a warm-up.
A second, optional phase posts events concurrently and reports end-to-end events/s.

    .venv/bin/python benchmarks/broker_hop.py --events 300
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

from radflow.engine.ports import free_port
from radflow.sdk import events as ev


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(ms: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(ms), 3),
        "p99_ms": round(pct(ms, 0.99), 3),
        "n": len(ms),
    }


async def run(events: int, warmup: int, burst: int, concurrency: int) -> dict[str, object]:
    arrivals: dict[str, float] = {}
    waiters: dict[str, asyncio.Future[float]] = {}

    async def subscriber(request: web.Request) -> web.Response:
        await request.read()
        now = time.perf_counter()
        event_id = request.headers.get("ce-id", "")
        arrivals[event_id] = now
        fut = waiters.get(event_id)
        if fut is not None and not fut.done():
            fut.set_result(now)
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/", subscriber)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    sub_url = f"http://127.0.0.1:{runner.addresses[0][1]}/"

    tmp = Path(tempfile.mkdtemp(prefix="broker-bench-"))
    (tmp / "m").mkdir()
    docs = [
        {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Broker",
            "metadata": {"name": "default"},
        },
        {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Trigger",
            "metadata": {"name": "t"},
            "spec": {
                "broker": "default",
                "filters": [{"exact": {"type": "bench.v1"}}],
                "subscriber": {"uri": sub_url},
            },
        },
    ]
    (tmp / "m" / "broker.yaml").write_text(yaml.safe_dump_all(docs))
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "radflow.engine.broker",
        "--manifests",
        str(tmp / "m"),
        "--state",
        str(tmp / "s"),
        "--port",
        str(port),
        "--log-level",
        "WARNING",
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    ready = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert ready.decode().startswith("READY"), ready
    ingress = f"http://127.0.0.1:{port}/default/default"
    loop = asyncio.get_running_loop()
    try:
        async with aiohttp.ClientSession() as session:

            async def hop(url: str, i: int, tag: str) -> tuple[float, float]:
                event_id = f"{tag}-{i}"
                headers, body = ev.to_binary(
                    ev.make_event("bench.v1", "/bench", {"i": i}, id=event_id)
                )
                fut: asyncio.Future[float] = loop.create_future()
                waiters[event_id] = fut
                t0 = time.perf_counter()
                async with session.post(
                    url, data=body, headers={k: str(v) for k, v in headers.items()}
                ) as r:
                    assert r.status in (200, 202), r.status
                    acked = time.perf_counter()
                received = await asyncio.wait_for(fut, 10)
                del waiters[event_id]
                return (received - t0) * 1000, (acked - t0) * 1000

            results: dict[str, list[float]] = {"direct": [], "broker": [], "broker_ack": []}
            for i in range(warmup):
                await hop(sub_url, i, "wd")
                await hop(ingress, i, "wb")
            # interleave so both see the same machine state
            for i in range(events):
                results["direct"].append((await hop(sub_url, i, "d"))[0])
                hop_ms, ack_ms = await hop(ingress, i, "b")
                results["broker"].append(hop_ms)
                results["broker_ack"].append(ack_ms)

            burst_result: dict[str, float] = {}
            if burst:
                sem = asyncio.Semaphore(concurrency)
                start = time.perf_counter()

                async def one(i: int) -> None:
                    async with sem:
                        await hop(ingress, i, "c")

                await asyncio.gather(*(one(i) for i in range(burst)))
                elapsed = time.perf_counter() - start
                burst_result = {
                    "events": burst,
                    "concurrency": concurrency,
                    "seconds": round(elapsed, 3),
                    "events_per_s": round(burst / elapsed, 1),
                }
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 15)
        await runner.cleanup()

    direct, broker = summary(results["direct"]), summary(results["broker"])
    return {
        "command": "python benchmarks/broker_hop.py " + " ".join(sys.argv[1:]),
        "machine": {
            "nproc": os.cpu_count(),
            "cpu": cpu_model(),
            "python": platform.python_version(),
        },
        "direct_post": direct,
        "broker_hop": broker,
        "broker_ingress_ack": summary(results["broker_ack"]),
        "overhead_median_ms": round(broker["median_ms"] - direct["median_ms"], 3),
        "overhead_p99_ms": round(broker["p99_ms"] - direct["p99_ms"], 3),
        "burst": burst_result,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument(
        "--burst", type=int, default=0, help="also post this many events concurrently"
    )
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    print(
        json.dumps(
            asyncio.run(run(args.events, args.warmup, args.burst, args.concurrency)), indent=2
        )
    )


if __name__ == "__main__":
    main()
