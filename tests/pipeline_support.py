"""Test helpers for pipelines: seeded studies, job events, and a stand-in broker driver.

``MiniBroker`` is NOT the engine's broker. It exists so the function contract can be tested
end to end before the engine lands: it reads compiled ``knative/`` manifests, starts each
Knative Service as a real ``functions-framework`` process with the Service's environment (as
the engine's function host would), and delivers events as a Knative broker would: binary mode,
``Prefer: reply``, every matching Trigger (``filters`` exact dialect) gets its own delivery,
2xx + CloudEvent body = reply (re-published), retry on 404/408/409/429/5xx/transport errors with
exponential backoff, dead letters to the Broker's ``deadLetterSink`` with ``knativeerror*``
extensions. Switching a test to the real engine means replacing ``MiniBroker`` by the engine
fixture that publishes to the broker ingress and reads the job tracker.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from radflow.engine.ports import free_port, wait_for_port
from radflow.sdk import events
from radflow.sdk.events import EventType, Ext
from radflow.sdk.manifest import InstanceRef, StudyManifest
from radflow.sdk.settings import StoreSettings
from radflow.sdk.storage import Keys, ObjectStore

REPO = Path(__file__).resolve().parents[1]


def seed_study(
    store: ObjectStore, pipeline: str, *, series: int = 2, instances: int = 3, tag: str = ""
) -> events.JobRequested:
    """Write fake instance objects and a StudyManifest; return the job request pointing at them."""
    study_uid = f"1.2.826.0.1.3680043.10.1{tag or uuid.uuid4().int % 10**9}"
    study_id = events.deterministic_id("study", study_uid)
    group_id = events.deterministic_id("group", study_uid)
    refs = []
    for s in range(series):
        series_uid = f"{study_uid}.{s + 1}"
        for i in range(instances):
            sop = f"{series_uid}.{i + 1}"
            key = Keys.instance(study_id, series_uid, sop)
            data = f"instance {sop}".encode()
            store.put_bytes(key, data)
            refs.append(
                InstanceRef(
                    sop_instance_uid=sop,
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
                    series_instance_uid=series_uid,
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    key=key,
                    size=len(data),
                    sha256="0" * 64,
                )
            )
    manifest = StudyManifest(
        study_id=study_id,
        study_instance_uid=study_uid,
        group_id=group_id,
        called_ae="RADFLOW",
        instances=refs,
    )
    manifest_key = Keys.manifest(study_id, group_id)
    store.put_bytes(manifest_key, manifest.model_dump_json().encode())
    job_id = events.deterministic_id(group_id, pipeline, "0")
    return events.JobRequested(
        job_id=job_id,
        pipeline=pipeline,
        study_id=study_id,
        group_id=group_id,
        manifest_key=manifest_key,
        instance_count=len(refs),
        called_ae="RADFLOW",
    )


def study_event(
    store: ObjectStore, req: events.JobRequested, *, traceparent: str | None = None
) -> events.CloudEvent:
    ext = {
        Ext.JOB: req.job_id,
        Ext.PIPELINE: req.pipeline,
        Ext.DATAREF: store.uri(req.manifest_key),
    }
    if traceparent:
        ext[Ext.TRACEPARENT] = traceparent
    return events.make_event(
        EventType.STUDY_RECEIVED,
        "/dicom-adapter/RADFLOW",
        req,
        id=events.deterministic_id(req.job_id, "requested"),
        subject=req.study_id,
        extensions=ext,
    )


def store_env(settings: StoreSettings) -> dict[str, str]:
    return {
        "RADFLOW_S3_ENDPOINT_URL": settings.endpoint_url or "",
        "RADFLOW_S3_BUCKET": settings.bucket,
        "RADFLOW_S3_ACCESS_KEY_ID": settings.access_key_id.get_secret_value(),
        "RADFLOW_S3_SECRET_ACCESS_KEY": settings.secret_access_key.get_secret_value(),
    }


# ---------------------------------------------------------------------------- manifests


def load_manifests(folder: Path) -> list[dict[str, Any]]:
    docs = []
    for path in sorted(folder.rglob("*.yaml")):
        if "overlays" in path.parts:
            continue
        docs += [
            d
            for d in yaml.safe_load_all(path.read_text())
            if d and d.get("kind") != "Kustomization"
        ]
    return docs


def service_env(svc: dict[str, Any]) -> dict[str, str]:
    container = svc["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container.get("env", [])}


def trigger_matches(trigger: dict[str, Any], attrs: dict[str, Any]) -> bool:
    """Knative ``filters`` (exact dialect only, all entries ANDed) or no filter (match all)."""
    for entry in trigger["spec"].get("filters") or []:
        for name, value in entry.get("exact", {}).items():
            if str(attrs.get(name, "")) != value:
                return False
    return True


# ---------------------------------------------------------------------------- function processes


@dataclass
class FunctionProcess:
    name: str
    env: dict[str, str]
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            **self.env,
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
        }
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from functions_framework._cli import _cli; _cli()"],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        if not wait_for_port("127.0.0.1", self.port, timeout):
            raise TimeoutError(
                f"function {self.name} did not listen on {self.port}; see {self.log}"
            )

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Delivery:
    trigger: str
    event_id: str
    event_type: str
    attempt: int
    status: int


@dataclass
class MiniBroker:
    """A stand-in for the engine's broker + function host (see the module docstring)."""

    knative_dir: Path
    extra_env: dict[str, str]
    log_dir: Path
    duplicates: int = 1
    retry: int = 8
    backoff_delay: float = 0.25
    timeout: float = 60.0
    functions: dict[str, FunctionProcess] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)
    published: list[events.CloudEvent] = field(default_factory=list)
    dead_letters: list[events.CloudEvent] = field(default_factory=list)
    #: called with (service name, event) before each delivery attempt (tests kill processes here)
    before_delivery: Callable[[str, events.CloudEvent, int], None] | None = None
    _pool: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(max_workers=32)
    )
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pending: int = 0
    _idle: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        docs = load_manifests(self.knative_dir)
        self.services = {
            d["metadata"]["name"]: d
            for d in docs
            if d["kind"] == "Service" and d["apiVersion"].startswith("serving")
        }
        self.triggers = [d for d in docs if d["kind"] == "Trigger"]
        broker = next(d for d in docs if d["kind"] == "Broker")
        self.dls = broker["spec"]["delivery"]["deadLetterSink"]["ref"]["name"]

    def start(self) -> None:
        for name, svc in sorted(self.services.items()):
            fp = FunctionProcess(
                name, {**service_env(svc), **self.extra_env}, log=self.log_dir / f"{name}.log"
            )
            fp.start()
            self.functions[name] = fp
        for fp in self.functions.values():
            fp.wait_ready()

    def restart(self, name: str) -> None:
        fp = self.functions[name]
        fp.kill()
        fp.start()
        fp.wait_ready()

    def stop(self) -> None:
        for fp in self.functions.values():  # all at once: gunicorn's graceful stop takes ~1 s each
            if fp.proc and fp.proc.poll() is None:
                os.killpg(fp.proc.pid, signal.SIGTERM)
        for fp in self.functions.values():
            fp.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- delivery

    def publish(self, event: events.CloudEvent) -> None:
        with self._lock:
            self.published.append(event)
        attrs = events.attributes(event)
        for trig in self.triggers:
            if trigger_matches(trig, attrs):
                target = trig["spec"]["subscriber"]["ref"]["name"]
                for _ in range(self.duplicates):
                    self._submit(trig["metadata"]["name"], target, event)

    def _submit(self, trigger: str, target: str, event: events.CloudEvent) -> None:
        with self._idle:
            self._pending += 1
        self._pool.submit(self._deliver, trigger, target, event)

    def _post(self, url: str, event: events.CloudEvent) -> tuple[int, dict[str, str], bytes]:
        headers, body = events.to_binary(event)
        req = urllib.request.Request(
            url, data=body, headers={**headers, "Prefer": "reply"}, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return -1, {}, b""

    def _deliver(self, trigger: str, target: str, event: events.CloudEvent) -> None:
        try:
            status, headers, body = -1, {}, b""
            for attempt in range(self.retry + 1):
                if attempt:
                    time.sleep(self.backoff_delay * 2 ** (attempt - 1))
                if self.before_delivery:
                    self.before_delivery(target, event, attempt)
                status, headers, body = self._post(self.functions[target].url, event)
                with self._lock:
                    self.deliveries.append(
                        Delivery(trigger, event["id"], event["type"], attempt, status)
                    )
                if 200 <= status < 300:
                    lower = {k.lower(): v for k, v in headers.items()}
                    if "ce-specversion" in lower:
                        self.publish(events.from_http(lower, body))
                    elif body:
                        status = 502  # a 2xx with a non-CloudEvent body is a failure for a broker
                        continue
                    return
                if not (status == -1 or status >= 500 or status in (404, 408, 409, 429)):
                    break
            dead = events.with_attributes(
                event,
                knativeerrordest=self.functions[target].url,
                knativeerrorcode=str(status),
                knativeerrordata=base64.b64encode(body[:700]).decode(),
            )
            with self._lock:
                self.dead_letters.append(dead)
            if target != self.dls:
                self._post(self.functions[self.dls].url, dead)
        finally:
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self._pending} deliveries still pending")
                self._idle.wait(left)

    def job_status(self, job_id: str) -> dict[str, Any]:
        with urllib.request.urlopen(
            self.functions[self.dls].url + f"jobs/{job_id}", timeout=10
        ) as resp:
            return dict(json.loads(resp.read()))


def run_log_counts(path: Path) -> dict[str, dict[str, int]]:
    """``{stage: {"start": n, "end": n}}`` from the example operators' RUN_LOG lines."""
    counts: dict[str, dict[str, int]] = {}
    if not path.exists():
        return counts
    for line in path.read_text().splitlines():
        stage, what, _pid = line.split()
        counts.setdefault(stage, {"start": 0, "end": 0})[what] += 1
    return counts


# ---------------------------------------------------------------------------- the real engine


@dataclass
class EngineDriver:
    """The same interface as :class:`MiniBroker`, backed by the engine's BrokerRuntime + FunctionHost.

    Runs both on an asyncio loop in a background thread; events are POSTed to the broker's
    ingress like the DICOM adapter does.
    """

    knative_dir: Path
    extra_env: dict[str, str]
    state_dir: Path
    published: list[events.CloudEvent] = field(default_factory=list)

    def __post_init__(self) -> None:
        import asyncio

        docs = load_manifests(self.knative_dir)
        self._services = [
            d for d in docs if d["kind"] == "Service" and d["apiVersion"].startswith("serving")
        ]
        self._brokers = [d for d in docs if d["kind"] == "Broker"]
        self._triggers = [d for d in docs if d["kind"] == "Trigger"]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="engine-loop", daemon=True
        )

    def _run(self, coro: Any, timeout: float = 120) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> None:
        from radflow.engine.broker import BrokerRuntime
        from radflow.engine.host import FunctionHost

        self._thread.start()
        self.host = FunctionHost(
            services=self._services,
            workdir=REPO,
            state_dir=self.state_dir / "host",
            base_env={**os.environ, **self.extra_env},
        )
        self._run(self.host.start())

        def resolve(dest: dict[str, Any], namespace: str) -> str:
            ref = dest["ref"]
            return self.host.url(ref["name"], ref.get("namespace") or namespace)

        self.broker = BrokerRuntime(
            brokers=self._brokers,
            triggers=self._triggers,
            state_dir=self.state_dir / "broker",
            resolve=resolve,
        )
        self._run(self.broker.start())

    def publish(self, event: events.CloudEvent) -> None:
        self.published.append(event)
        headers, body = events.to_binary(event)
        req = urllib.request.Request(
            self.broker.ingress_url("default", "radflow"), data=body, headers=headers, method="POST"
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 202, resp.status

    def wait_idle(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        quiet = 0
        while time.monotonic() < deadline:
            quiet = quiet + 1 if self.broker.pending == 0 else 0
            if quiet >= 5:  # idle for 0.5 s: replies are re-enqueued before the delivery settles
                return
            time.sleep(0.1)
        raise TimeoutError(f"{self.broker.pending} deliveries still pending")

    def job_status(self, job_id: str) -> dict[str, Any]:
        with urllib.request.urlopen(
            self.host.url("job-tracker") + f"/jobs/{job_id}", timeout=30
        ) as resp:
            return dict(json.loads(resp.read()))

    def stop(self) -> None:
        try:
            self._run(self.broker.stop())
            self._run(self.host.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
