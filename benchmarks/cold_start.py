"""Function-host cold start and warm latency.

(a) cold: a fresh FunctionHost per run; time from the first request (which spawns the process)
    to its reply through the activator, for a light function and one importing the full stack
    (pydicom, pynetdicom, SimpleITK, highdicom, numpy, botocore). Also the host's own spawn->ready.
    Mode ``bare`` is the baseline without the host: spawn functions-framework directly, poll
    until the first 2xx (the method of shared/docs/performance-baselines.md §1.8). Mode ``spawn``
    starts each process from scratch; mode ``prewarm`` forks it from the host's fork server, which
    imported the full stack once (FunctionHost(prewarm=[...])).
(b) warm: sequential requests to a warm instance through the activator vs directly to its port.

    .venv/bin/python benchmarks/cold_start.py --runs 5 --warm 300   # about 1.5 minutes on 2 cores
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
from typing import Any

import aiohttp

from radflow.engine.host import IMAGING_STACK, FunctionHost
from radflow.engine.ports import free_port

REPO = Path(__file__).resolve().parents[1]
PREWARM = list(IMAGING_STACK)
FUNCTIONS = {
    "light": "benchmarks/functions/cold_light.py",
    "full": "benchmarks/functions/cold_full.py",
}


def manifest(name: str, source: str) -> dict[str, Any]:
    env = [
        {"name": "FUNCTION_TARGET", "value": "handle"},
        {"name": "FUNCTION_SOURCE", "value": source},
        {"name": "FUNCTION_SIGNATURE_TYPE", "value": "http"},
    ]
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "spec": {
                    "containerConcurrency": 1,
                    "containers": [{"image": f"bench/{name}", "env": env}],
                }
            }
        },
    }


async def cold_once(
    kind: str, state: Path, session: aiohttp.ClientSession, **host_kw: Any
) -> tuple[float, float]:
    host = FunctionHost(
        services=[manifest(kind, FUNCTIONS[kind])], workdir=REPO, state_dir=state, **host_kw
    )
    await host.start()
    try:
        if "prewarm" in host_kw:
            assert await host.wait_prewarmed(60), "fork server did not come up"
        t0 = time.perf_counter()
        async with session.post(
            host.url(kind), data=b"{}", headers={"Content-Type": "application/json"}
        ) as resp:
            await resp.read()
            assert resp.status == 200, resp.status
        total = time.perf_counter() - t0
        return total, float(host.status()[0]["last_cold_start_s"])
    finally:
        await host.stop()


async def bare_once(kind: str, session: aiohttp.ClientSession) -> tuple[float, float]:
    """No host: spawn functions-framework directly and poll it until the first 2xx (baseline
    method)."""
    port = free_port()
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "functions_framework",
        "--target",
        "handle",
        "--source",
        FUNCTIONS[kind],
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        cwd=str(REPO),
        start_new_session=True,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                async with session.post(f"http://127.0.0.1:{port}/", data=b"{}") as resp:
                    await resp.read()
                    if resp.status == 200:
                        total = time.perf_counter() - t0
                        return total, total
            except aiohttp.ClientError:
                await asyncio.sleep(0.005)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


async def warm(
    n: int, state: Path, session: aiohttp.ClientSession, **host_kw: Any
) -> dict[str, list[float]]:
    host = FunctionHost(
        services=[manifest("light", FUNCTIONS["light"])], workdir=REPO, state_dir=state, **host_kw
    )
    await host.start()
    try:
        activator = host.url("light")
        async with session.post(activator, data=b"{}") as resp:
            await resp.read()
        direct = f"http://127.0.0.1:{host.status()[0]['instances'][0]['port']}"
        out: dict[str, list[float]] = {"activator": [], "direct": []}
        for _ in range(n):
            for label, url in (("activator", activator), ("direct", direct)):
                t0 = time.perf_counter()
                async with session.post(
                    url, data=b"{}", headers={"Content-Type": "application/json"}
                ) as resp:
                    await resp.read()
                out[label].append(time.perf_counter() - t0)
        return out
    finally:
        await host.stop()


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median_s": round(statistics.median(ordered), 4),
        "min_s": round(ordered[0], 4),
        "max_s": round(ordered[-1], 4),
        "p95_s": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 4),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "machine": f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_avg_before": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        async with aiohttp.ClientSession() as session:

            async def once(mode: str, kind: str, state: Path) -> tuple[float, float]:
                if mode == "bare":
                    return await bare_once(kind, session)
                return await cold_once(
                    kind, state, session, **({"prewarm": PREWARM} if mode == "prewarm" else {})
                )

            samples: dict[str, list[float]] = {}
            for mode in args.modes:
                for kind in args.kinds:
                    await once(mode, kind, Path(tmp) / "warmup")  # page cache, .pyc
            # modes interleaved run by run, so load drift on a shared machine hits them alike
            for i in range(args.runs):
                for mode in args.modes:
                    for kind in args.kinds:
                        total, spawn = await once(mode, kind, Path(tmp) / f"{mode}{kind}{i}")
                        samples.setdefault(f"cold_{mode}_{kind}_first_reply", []).append(total)
                        samples.setdefault(f"cold_{mode}_{kind}_spawn_to_ready", []).append(spawn)
            results.update({key: summary(values) for key, values in samples.items()})
            if args.warm:
                lat = await warm(args.warm, Path(tmp) / "warm", session)
                results["warm_activator"] = summary(lat["activator"])
                results["warm_direct"] = summary(lat["direct"])
    results["load_avg_after"] = os.getloadavg()
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warm", type=int, default=300, help="warm requests per path (0 = skip)")
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["bare", "spawn", "prewarm"],
        choices=["bare", "spawn", "prewarm"],
    )
    parser.add_argument("--kinds", nargs="+", default=["light", "full"], choices=sorted(FUNCTIONS))
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
    sys.exit(0)
