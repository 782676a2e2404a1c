"""The whole embedded engine: manifests in, events through broker and function host, kill -9."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from radflow.cli.main import main as radflow_cli
from radflow.engine.config import load_engine_config
from radflow.engine.ports import free_port
from radflow.engine.stack import Engine
from radflow.sdk import events

pytestmark = pytest.mark.slow

SOURCE = "tests/fixtures/functions/engine_chain.py"


def _service(name: str, target: str, record_dir: Path) -> dict[str, Any]:
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "template": {
                "metadata": {"annotations": {"autoscaling.knative.dev/min-scale": "0"}},
                "spec": {
                    "containerConcurrency": 4,
                    "timeoutSeconds": 30,
                    "containers": [
                        {
                            "image": "radflow/test",
                            "env": [
                                {"name": "FUNCTION_TARGET", "value": target},
                                {"name": "FUNCTION_SOURCE", "value": SOURCE},
                                {"name": "FUNCTION_SIGNATURE_TYPE", "value": "http"},
                                {"name": "RECORD_DIR", "value": str(record_dir)},
                            ],
                        }
                    ],
                },
            }
        },
    }


def _trigger(name: str, type_: str, subscriber: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "broker": "radflow",
            "filters": [{"exact": {"type": type_}}],
            "subscriber": subscriber,
        },
    }


def _ksvc(name: str) -> dict[str, Any]:
    return {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": name}}


def write_manifests(
    folder: Path, record_dir: Path, extra_triggers: list[dict[str, Any]] = ()
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    broker = {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Broker",
        "metadata": {"name": "radflow", "namespace": "default"},
        "spec": {
            "delivery": {
                "retry": 2,
                "backoffPolicy": "exponential",
                "backoffDelay": "PT0.1S",
                "deadLetterSink": _ksvc("dead-letters"),
            }
        },
    }
    docs = [
        broker,
        _service("stage-a", "stage_a", record_dir),
        _service("stage-b", "record", record_dir),
        _service("failing", "always_fail", record_dir),
        _service("dead-letters", "record", record_dir),
        _trigger("to-a", "test.start.v1", _ksvc("stage-a")),
        _trigger("to-b", "test.a.done.v1", _ksvc("stage-b")),
        _trigger("to-failing", "test.fail.v1", _ksvc("failing")),
        *extra_triggers,
    ]
    (folder / "test.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))


def post(url: str, event: events.CloudEvent) -> int:
    headers, body = events.to_binary(event)
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return int(resp.status)


def records(folder: Path, by: str | None = None) -> list[dict[str, Any]]:
    if not folder.is_dir():
        return []
    docs = [json.loads(p.read_text()) for p in folder.glob("*.json")]
    return [d for d in docs if by is None or d["by"] == by]


def wait_for(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_chain_reply_and_dead_letter_through_the_engine(tmp_path: Path, repo_root: Path) -> None:
    record_dir = tmp_path / "records"
    write_manifests(tmp_path / "knative", record_dir)
    config = load_engine_config(
        None,
        state_dir=tmp_path / "state",
        manifests=tmp_path / "knative",
        workdir=repo_root,
        scale_to_zero_after=3.0,
    )

    async def scenario() -> dict[str, Any]:
        engine = Engine(config)
        await engine.start()
        try:
            url = engine.broker.ingress_url("default", "radflow")
            start = events.make_event("test.start.v1", "/test", {"n": 7}, id="chain-1")
            failing = events.make_event("test.fail.v1", "/test", {"n": 8}, id="fail-1")
            assert await asyncio.to_thread(post, url, start) == 202
            assert await asyncio.to_thread(post, url, failing) == 202
            ok = await asyncio.to_thread(
                wait_for,
                lambda: records(record_dir, "stage-b") and records(record_dir, "dead-letters"),
                60,
            )
            assert ok, f"records so far: {[r['by'] for r in records(record_dir)]}"
            # nothing pending in the broker: no duplicate or further attempt can follow
            deadline = time.monotonic() + 30
            while engine.broker.pending and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert engine.broker.pending == 0
            # scale to zero after the idle window
            gone = await asyncio.to_thread(
                wait_for, lambda: all(not f["instances"] for f in engine.host.status()), 30
            )
            return {"status": engine.status(), "scaled_to_zero": gone}
        finally:
            await engine.stop()

    result = asyncio.run(scenario())
    b = records(record_dir, "stage-b")
    assert len(b) == 1 and b[0]["data"] == {"n": 7}
    assert b[0]["attributes"]["type"] == "test.a.done.v1"
    assert len(records(record_dir, "fail")) == 3  # retry: 2 -> three attempts
    dead = records(record_dir, "dead-letters")[0]["attributes"]
    assert dead["id"] == "fail-1" and int(dead["knativeerrorcode"]) == 503
    assert dead["knativeerrordest"].startswith("http://127.0.0.1:")
    assert result["scaled_to_zero"]


def _start_engine(
    manifests: Path, state: Path, repo_root: Path
) -> tuple[subprocess.Popen[bytes], str]:
    (state / "engine.json").unlink(missing_ok=True)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "radflow.cli.main",
            "--state-dir",
            str(state),
            "up",
            "--manifests",
            str(manifests),
        ],
        cwd=repo_root,
        stdout=subprocess.DEVNULL,
        stderr=open(state.parent / "engine.log", "ab"),
    )
    assert wait_for(lambda: (state / "engine.json").exists() or proc.poll() is not None, 60)
    assert proc.poll() is None, (state.parent / "engine.log").read_text()[-3000:]
    control = json.loads((state / "engine.json").read_text())["control_url"]
    with urllib.request.urlopen(control + "/status", timeout=5) as resp:
        status = json.load(resp)
    return proc, status["brokers"][0]["url"]


def test_events_acknowledged_before_a_kill_9_are_delivered_after_restart(
    tmp_path: Path, repo_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the subscriber is down while the engine runs the first time, so every event is still queued
    port = free_port()
    receiver_trigger = _trigger(
        "to-receiver", "test.durable.v1", {"uri": f"http://127.0.0.1:{port}/"}
    )
    write_manifests(tmp_path / "knative", tmp_path / "records", [receiver_trigger])
    state = tmp_path / "state"
    state.mkdir()
    proc, url = _start_engine(tmp_path / "knative", state, repo_root)
    assert radflow_cli(["--state-dir", str(state), "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["brokers"][0]["url"] == url
    sent = [
        events.make_event("test.durable.v1", "/test", {"i": i}, id=f"durable-{i}") for i in range(5)
    ]
    for ev in sent:
        assert post(url, ev) == 202
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # engine.json outlives a killed engine: `radflow status` says nobody answers, exit 1
    assert radflow_cli(["--state-dir", str(state), "status"]) == 1
    err = capsys.readouterr().err
    assert f"radflow engine pid {proc.pid} does not answer at http://127.0.0.1:" in err
    assert "Connection refused" in err

    received: list[str] = []
    receiver = subprocess.Popen(
        [sys.executable, "-c", _RECEIVER, str(port), str(tmp_path / "received.jsonl")],
        cwd=repo_root,
    )
    try:
        proc2, _ = _start_engine(tmp_path / "knative", state, repo_root)
        try:

            def got_all() -> bool:
                path = tmp_path / "received.jsonl"
                if path.exists():
                    received[:] = [json.loads(line)["id"] for line in path.read_text().splitlines()]
                return {e["id"] for e in sent} <= set(received)

            assert wait_for(got_all, 60), f"received {received}"
        finally:
            proc2.send_signal(signal.SIGTERM)
            assert proc2.wait(30) == 0
    finally:
        receiver.kill()
        receiver.wait()


_RECEIVER = """
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
port, out = int(sys.argv[1]), sys.argv[2]
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        with open(out, "a") as fh:
            fh.write(json.dumps({"id": self.headers["ce-id"]}) + "\\n")
        self.send_response(202); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
HTTPServer(("127.0.0.1", port), H).serve_forever()
"""
