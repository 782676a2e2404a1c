"""FunctionHost against real functions-framework processes on loopback: Knative Serving semantics.

Each test starts its own host with tiny @http handlers (tests/fixtures/functions/host_probe.py)
and talks HTTP to the activator port, the way the broker does.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import itertools
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from radflow.engine import metrics
from radflow.engine.host import FunctionHost, tail_log

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[3]

PROBE_SOURCE = "tests/fixtures/functions/host_probe.py"


def ksvc(
    name: str,
    target: str,
    *,
    cc: int | None = None,
    timeout: int | None = None,
    annotations: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    container: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A serving.knative.dev/v1 Service shaped like our knative/ manifests (functions-framework)."""
    if container is None:
        container = {
            "image": f"radflow/{name}",
            "env": [
                {"name": "FUNCTION_TARGET", "value": target},
                {"name": "FUNCTION_SOURCE", "value": PROBE_SOURCE},
                {"name": "FUNCTION_SIGNATURE_TYPE", "value": "http"},
                *({"name": k, "value": v} for k, v in (env or {}).items()),
            ],
        }
    pod: dict[str, Any] = {"containers": [container]}
    if cc is not None:
        pod["containerConcurrency"] = cc
    if timeout is not None:
        pod["timeoutSeconds"] = timeout
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"template": {"metadata": {"annotations": annotations or {}}, "spec": pod}},
    }


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def group_members(pgid: int) -> list[int]:
    """Live pids whose process group is ``pgid`` (a gunicorn master and its workers)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


def run_host(
    tmp_path: Path,
    services: list[dict[str, Any]],
    body: Callable[[FunctionHost, aiohttp.ClientSession], Awaitable[T]],
    **kwargs: Any,
) -> T:
    """Start a host, run ``body`` with a client session, always stop the host."""

    async def main() -> T:
        host = FunctionHost(services=services, workdir=REPO, state_dir=tmp_path / "state", **kwargs)
        await host.start()
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
                return await body(host, session)
        finally:
            await host.stop()

    return asyncio.run(main())


async def call(
    session: aiohttp.ClientSession, url: str, method: str = "GET", **kw: Any
) -> tuple[int, dict[str, str], bytes]:
    async with session.request(method, url, **kw) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def service_status(host: FunctionHost, name: str) -> dict[str, Any]:
    return next(s for s in host.status() if s["name"] == name)


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def metric(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_scale_from_zero_holds_first_request_then_scales_back_to_zero(tmp_path: Path) -> None:
    before = metric("radflow_function_cold_starts_total", function="zero")
    answered = metric("radflow_function_invocations_total", function="zero", code="200")

    async def body(host: FunctionHost, session: aiohttp.ClientSession) -> None:
        assert service_status(host, "zero")["instances"] == []  # nothing spawned at start
        assert service_status(host, "zero")["state"] == "scaled-to-zero"
        status, _, payload = await call(
            session, host.url("zero") + "/first"
        )  # held during the cold start
        assert status == 200
        first_pid = json.loads(payload)["pgid"]
        st = service_status(host, "zero")
        assert st["cold_starts"] == 1 and st["last_cold_start_s"] > 0
        assert [i["pid"] for i in st["instances"]] == [first_pid]
        await wait_until(
            lambda: service_status(host, "zero")["instances"] == [], 10, "scale to zero"
        )
        assert not alive(first_pid)
        status, _, payload = await call(session, host.url("zero"))
        assert status == 200 and json.loads(payload)["pgid"] != first_pid
        assert service_status(host, "zero")["cold_starts"] == 2

    run_host(tmp_path, [ksvc("zero", "echo")], body, idle_override_s=0.5)
    assert metric("radflow_function_cold_starts_total", function="zero") == before + 2
    assert metric("radflow_function_invocations_total", function="zero", code="200") == answered + 2


def test_container_concurrency_one_serialises_or_scales_up_to_max_scale(tmp_path: Path) -> None:
    services = [
        ksvc("serial", "slow", cc=1, annotations={"autoscaling.knative.dev/max-scale": "1"}),
        ksvc("wide", "slow", cc=1, annotations={"autoscaling.knative.dev/max-scale": "3"}),
    ]

    async def body(
        host: FunctionHost, session: aiohttp.ClientSession
    ) -> dict[str, list[dict[str, float]]]:
        async def three(name: str) -> list[dict[str, float]]:
            replies = await asyncio.gather(
                *(call(session, host.url(name) + "?s=0.6") for _ in range(3))
            )
            assert [r[0] for r in replies] == [200, 200, 200]
            return [json.loads(r[2]) for r in replies]

        serial, wide = await asyncio.gather(three("serial"), three("wide"))
        assert service_status(host, "serial")["cold_starts"] == 1
        return {"serial": serial, "wide": wide}

    works = run_host(tmp_path, services, body)

    def overlaps(a: dict[str, float], b: dict[str, float]) -> bool:
        return a["start"] < b["end"] and b["start"] < a["end"]

    serial = sorted(works["serial"], key=lambda w: w["start"])
    assert len({w["pid"] for w in serial}) == 1
    assert not any(overlaps(a, b) for a, b in itertools.pairwise(serial)), (
        "containerConcurrency 1 was exceeded"
    )
    wide = works["wide"]
    assert len({w["pid"] for w in wide}) >= 2, "max-scale 3 never added a second process"
    for pid in {w["pid"] for w in wide}:  # still at most one request in flight per process
        mine = sorted((w for w in wide if w["pid"] == pid), key=lambda w: w["start"])
        assert not any(overlaps(a, b) for a, b in itertools.pairwise(mine))


def test_queue_bound_exceeded_answers_503(tmp_path: Path) -> None:
    svc = ksvc("narrow", "slow", cc=1, annotations={"autoscaling.knative.dev/max-scale": "1"})

    async def body(host: FunctionHost, session: aiohttp.ClientSession) -> None:
        first = asyncio.create_task(call(session, host.url("narrow") + "?s=1.0"))
        await wait_until(  # the first request holds the queue's one place (or the one slot)
            lambda: (
                service_status(host, "narrow")["queued"] == 1
                or any(i["in_flight"] for i in service_status(host, "narrow")["instances"])
            ),
            10,
            "the first request to be queued",
        )
        rest = await asyncio.gather(*(call(session, host.url("narrow") + "?s=0") for _ in range(3)))
        assert (await first)[0] == 200
        codes = [r[0] for r in rest]
        assert 503 in codes, codes
        assert b"queue full" in next(r[2] for r in rest if r[0] == 503)

    run_host(tmp_path, [svc], body, max_queue=1)


def test_timeout_seconds_answers_504_and_counts_the_cold_start_hold(tmp_path: Path) -> None:
    # the second service's container sleeps 2 s before serving: its hold alone exceeds
    # timeoutSeconds=1
    sleepy = {
        "image": "radflow/sleepy",
        "command": ["sh"],
        "args": [
            "-c",
            "sleep 2 && exec $(PY) -m functions_framework --target echo "
            f"--source {PROBE_SOURCE} --host 127.0.0.1 --port $(PORT)",
        ],
        "env": [{"name": "PY", "value": sys.executable}],
    }
    services = [ksvc("slowfn", "slow", timeout=1), ksvc("sleepy", "", timeout=1, container=sleepy)]

    async def body(host: FunctionHost, session: aiohttp.ClientSession) -> None:
        # a 504 naming timeoutSeconds: the 4 s of work were cut, not waited for
        status, _, payload = await call(session, host.url("slowfn") + "?s=4")
        assert status == 504 and b"timeoutSeconds=1" in payload
        status, _, payload = await call(session, host.url("sleepy"))
        # the function would answer instantly, but the hold counts
        assert status == 504 and b"timeoutSeconds=1" in payload
        await wait_until(
            lambda: service_status(host, "sleepy")["state"] == "ready", 10, "sleepy ready"
        )
        status, _, _ = await call(
            session, host.url("sleepy")
        )  # and once it is up, it serves ($(PORT) expanded)
        assert status == 200

    run_host(tmp_path, services, body)


def test_crashed_process_gives_502_then_next_request_starts_a_new_one(tmp_path: Path) -> None:
    async def body(host: FunctionHost, session: aiohttp.ClientSession) -> None:
        status, _, payload = await call(session, host.url("crashy"))
        assert status == 200
        pid = service_status(host, "crashy")["instances"][0]["pid"]
        status, _, payload = await call(session, host.url("crashy") + "?now=1")
        assert status == 502 and b"failed mid-request" in payload
        await wait_until(
            lambda: service_status(host, "crashy")["instances"] == [], 5, "crashed process reaped"
        )
        assert not alive(pid)
        status, _, _ = await call(session, host.url("crashy"))
        assert status == 200
        st = service_status(host, "crashy")
        assert st["cold_starts"] == 2 and st["instances"][0]["pid"] != pid
        assert "exited with code" in (tmp_path / "state" / "logs" / "crashy.log").read_text()

    run_host(tmp_path, [ksvc("crashy", "crash")], body)


def test_env_from_base_manifest_and_knative(tmp_path: Path) -> None:
    svc = ksvc("envy", "echo", env={"GREETING": "hello", "OVERRIDDEN": "manifest"})

    async def body(host: FunctionHost, session: aiohttp.ClientSession) -> None:
        status, _, payload = await call(session, host.url("envy"))
        assert status == 200
        env = json.loads(payload)["env"]
        assert host.url("envy") == f"http://127.0.0.1:{pinned}"
        port = service_status(host, "envy")["instances"][0]["port"]
        assert env == {
            "PORT": str(port),
            "K_SERVICE": "envy",
            "K_REVISION": "envy-00001",
            "K_CONFIGURATION": "envy",
            "GREETING": "hello",
            "BASE_ONLY": "base",
            "OVERRIDDEN": "manifest",
        }

    from radflow.engine.ports import free_port

    pinned = free_port()
    run_host(
        tmp_path,
        [svc],
        body,
        base_env={"BASE_ONLY": "base", "OVERRIDDEN": "base"},
        activator_ports={"envy": pinned},
    )


def test_stop_leaves_no_child_process(tmp_path: Path) -> None:
    services = [
        ksvc("pinned", "echo", annotations={"autoscaling.knative.dev/min-scale": "1"}),
        ksvc("woken", "slow"),
    ]
    seen: list[int] = []

    async def main() -> None:
        host = FunctionHost(
            services=services, workdir=REPO, state_dir=tmp_path / "state", grace_cap_s=1.5
        )
        await host.start()
        try:
            # min-scale 1: a process is started without any request
            await wait_until(
                lambda: service_status(host, "pinned")["state"] == "ready", 15, "min-scale instance"
            )
            async with aiohttp.ClientSession() as session:
                mark = tmp_path / "working"
                busy = asyncio.create_task(call(session, host.url("woken") + f"?s=30&mark={mark}"))
                await wait_until(mark.exists, 15, "the request inside the handler")
                for st in host.status():
                    for inst in st["instances"]:
                        seen.extend(group_members(inst["pid"]))
                # with a request in flight for 30 s: SIGTERM, 1.5 s grace, SIGKILL; stop() does
                # not wait for the request, which is cut (502), not answered
                await asyncio.wait_for(host.stop(), 25)
                status, _, payload = await busy
                assert status == 502 and b"failed mid-request" in payload, payload
        finally:
            await host.stop()

    asyncio.run(main())
    assert len(seen) >= 4, seen  # two gunicorn masters and their workers
    assert [pid for pid in seen if alive(pid)] == []


def test_function_output_goes_to_its_log_file(tmp_path: Path) -> None:
    async def body(host: FunctionHost, session: aiohttp.ClientSession) -> Path:
        status, _, _ = await call(session, host.url("chatty") + "?marker=m-41")
        assert status == 202
        return host.log_path("chatty")

    log = run_host(tmp_path, [ksvc("chatty", "talk")], body)
    assert log == tmp_path / "state" / "logs" / "chatty.log"
    text = log.read_text()
    assert "stdout says m-41" in text and "stderr says m-41" in text
    assert "[radflow host] started pid" in text and "stopped (exit code" in text
    assert list(tail_log(log, follow=False, lines=1)) == [text.splitlines()[-1]]


def test_bodies_and_headers_pass_through_unchanged(tmp_path: Path) -> None:
    services = [
        ksvc("ce-style", "ce_handler"),
        ksvc("replier", "binary_reply"),
        ksvc("echo", "echo"),
    ]
    services[0]["spec"]["template"]["spec"]["containers"][0]["env"][2]["value"] = "cloudevent"
    event_headers = {
        "ce-specversion": "1.0",
        "ce-id": "e-1",
        "ce-source": "/test",
        "ce-type": "dev.radflow.test.v1",
        "Content-Type": "application/json",
    }

    async def body(host: FunctionHost, session: aiohttp.ClientSession) -> None:
        # a @cloud_event handler's "200 OK text/html": the host must not hide it (the broker
        # judges it)
        status, headers, payload = await call(
            session, host.url("ce-style"), "POST", headers=event_headers, data=b"{}"
        )
        assert (status, headers["Content-Type"], payload) == (
            200,
            "text/html; charset=utf-8",
            b"OK",
        )
        status, headers, payload = await call(
            session, host.url("replier"), "POST", headers=event_headers, data=b"{}"
        )
        assert status == 200 and json.loads(payload) == {"ok": True}
        assert (
            headers["ce-type"] == "dev.radflow.test.completed.v1"
            and headers["ce-radflowjob"] == "job%201"
        )
        assert headers["Content-Type"] == "application/json"
        # an 8 MiB body streams through both ways unchanged; custom request headers arrive as sent
        blob = os.urandom(8 << 20)
        status, headers, payload = await call(
            session,
            host.url("echo") + "/deep/path?q=a%20b",
            "PUT",
            data=io.BytesIO(blob),
            headers={"X-Trace": "t-1", **event_headers},
        )
        doc = json.loads(payload)
        assert status == 200 and headers["X-Probe"] == "echo"
        assert (
            doc["body_len"] == len(blob)
            and doc["body_sha"] == __import__("hashlib").sha256(blob).hexdigest()
        )
        assert doc["method"] == "PUT" and doc["path"] == "/deep/path?q=a%20b"
        assert doc["headers"]["x-trace"] == "t-1" and doc["headers"]["ce-id"] == "e-1"
        # content codings are end to end: neither side of the proxy may decode them
        packed = gzip.compress(b'{"a": 1}')
        status, _, payload = await call(
            session,
            host.url("echo"),
            "POST",
            data=packed,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )
        assert (
            status == 200 and json.loads(payload)["body_sha"] == hashlib.sha256(packed).hexdigest()
        )

    run_host(tmp_path, services, body)


def test_prewarmed_instances_are_forked_with_their_own_env_session_and_log(tmp_path: Path) -> None:
    services = [
        ksvc("warm-echo", "echo", env={"GREETING": "forked"}),
        ksvc("warm-crash", "crash"),
        ksvc("warm-talk", "talk"),
    ]
    seen: list[int] = []

    async def main() -> None:
        host = FunctionHost(
            services=services,
            workdir=REPO,
            state_dir=tmp_path / "state",
            prewarm=["json"],
            grace_cap_s=2,
        )
        await host.start()
        try:
            assert await host.wait_prewarmed(30)
            async with aiohttp.ClientSession() as session:
                status, _, payload = await call(session, host.url("warm-echo"))
                assert status == 200
                doc = json.loads(payload)
                inst = service_status(host, "warm-echo")["instances"][0]
                assert doc["pgid"] == inst["pid"]  # its own session, like a spawned one
                assert doc["env"]["GREETING"] == "forked" and doc["env"]["K_SERVICE"] == "warm-echo"
                assert doc["env"]["PORT"] == str(inst["port"])
                assert (await call(session, host.url("warm-talk") + "?marker=z-9"))[0] == 202
                assert (await call(session, host.url("warm-crash")))[0] == 200
                crashed = service_status(host, "warm-crash")["instances"][0]["pid"]
                assert (await call(session, host.url("warm-crash") + "?now=1"))[0] == 502
                await wait_until(
                    lambda: service_status(host, "warm-crash")["instances"] == [],
                    5,
                    "reaped via zygote",
                )
                assert (await call(session, host.url("warm-crash")))[0] == 200
                assert not alive(crashed)
                for st in host.status():
                    for i in st["instances"]:
                        seen.extend(group_members(i["pid"]))
        finally:
            await host.stop()

    asyncio.run(main())
    assert len(seen) >= 6 and [pid for pid in seen if alive(pid)] == []
    text = (tmp_path / "state" / "logs" / "warm-talk.log").read_text()
    assert "stdout says z-9" in text and "stderr says z-9" in text and "<prewarmed>" in text


def test_process_that_dies_before_ready_fails_held_requests_with_502(tmp_path: Path) -> None:
    svc = ksvc("broken", "handle")
    svc["spec"]["template"]["spec"]["containers"][0]["env"][1]["value"] = (
        "tests/fixtures/functions/host_broken.py"
    )

    async def body(host: FunctionHost, session: aiohttp.ClientSession) -> None:
        replies = await asyncio.gather(*(call(session, host.url("broken")) for _ in range(2)))
        assert [r[0] for r in replies] == [502, 502]  # the start-up failure, not the 504 timeout
        assert b"exited with code" in replies[0][2] and b"broken.log" in replies[0][2]
        assert service_status(host, "broken")["instances"] == []

    run_host(tmp_path, [svc], body)
    assert (
        "failing at import on purpose" in (tmp_path / "state" / "logs" / "broken.log").read_text()
    )


ENGINE_THAT_DIES = """
import asyncio, json, os, sys
from pathlib import Path
from radflow.engine.host import FunctionHost

async def main():
    host = FunctionHost(
        services=[json.loads(sys.argv[1])], workdir=Path(sys.argv[2]), state_dir=Path(sys.argv[3])
    )
    await host.start()
    while host.status()[0]["state"] != "ready":
        await asyncio.sleep(0.05)
    print(host.status()[0]["instances"][0]["pid"], flush=True)
    os._exit(9)  # like kill -9 / the OOM killer: stop() never runs

asyncio.run(main())
"""


def test_groups_left_by_a_killed_engine_are_killed_on_the_next_start(tmp_path: Path) -> None:
    import subprocess

    svc = ksvc("orphan", "echo", annotations={"autoscaling.knative.dev/min-scale": "1"})
    state = tmp_path / "state"
    done = subprocess.run(
        [sys.executable, "-c", ENGINE_THAT_DIES, json.dumps(svc), str(REPO), str(state)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 9, done.stderr
    pid = int(done.stdout.split()[0])
    members = group_members(pid)
    log = (state / "logs" / "orphan.log").read_text()
    assert pid in members and len(members) >= 2, (
        members,
        log,
    )  # gunicorn master + worker survived the engine
    assert (state / "run" / "functions" / str(pid)).exists(), list(
        (state / "run" / "functions").iterdir()
    )

    async def restart() -> None:
        host = FunctionHost(services=[], workdir=REPO, state_dir=state)
        await host.start()
        await host.stop()

    asyncio.run(restart())
    deadline = time.monotonic() + 5
    while any(alive(p) for p in members) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = [p for p in members if alive(p)]
    assert survivors == [], (survivors, log)
