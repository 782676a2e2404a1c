"""Test helpers for pipelines: seeded studies, job events, and the real engine driving them.

Pipeline tests run compiled ``knative/`` manifests through the engine's own
:class:`~radflow.engine.broker.BrokerRuntime` and :class:`~radflow.engine.host.FunctionHost`
(:class:`PipelineEngine`), so Trigger filters, retries, replies and dead letters are the
engine's, not a test double's. What a test needs to see or provoke is added the way an operator
of a cluster would: an extra Trigger (a tap recording every event, a twin of every Trigger to
duplicate deliveries), or an edited Service env (a short claim lease).
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import signal
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from aiohttp import web

from radflow.engine import metrics
from radflow.engine.broker import BrokerRuntime
from radflow.engine.compiler import compile_pipelines, write_files
from radflow.engine.host import FunctionHost
from radflow.engine.manifests import load_manifests
from radflow.sdk import events
from radflow.sdk.events import EventType, Ext
from radflow.sdk.manifest import InstanceRef, StudyManifest
from radflow.sdk.settings import StoreSettings
from radflow.sdk.storage import Keys, ObjectStore

REPO = Path(__file__).resolve().parents[1]
FAN_IN_EXAMPLE = REPO / "pipelines/examples/fan-in-example.yaml"
T = TypeVar("T")


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


def compile_to(pipeline: dict[str, Any] | Path, out: Path) -> Path:
    """Compile one pipeline (a file, or a pipeline document a test edited) into ``out``.

    The one place pipeline tests turn a pipeline into Knative manifests (``radflow pipeline
    compile``), so a change of the compiled shape is absorbed here.
    """
    if isinstance(pipeline, Path):
        src = pipeline
    else:
        src = out.parent / f"{pipeline['name']}.yaml"
        src.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    write_files(compile_pipelines([src], out, root=REPO))
    return out


def fan_in_example() -> dict[str, Any]:
    """``pipelines/examples/fan-in-example.yaml`` as a document a test may edit."""
    return dict(yaml.safe_load(FAN_IN_EXAMPLE.read_text()))


def set_env(service: dict[str, Any], env: dict[str, str]) -> None:
    """Set ``env`` in a Knative Service's container, as editing its manifest would."""
    container = service["spec"]["template"]["spec"]["containers"][0]
    items = [e for e in container.get("env", []) if e["name"] not in env]
    container["env"] = items + [{"name": k, "value": v} for k, v in env.items()]


def run_log_counts(path: Path) -> dict[str, dict[str, int]]:
    """``{stage: {"start": n, "end": n}}`` from the example operators' RUN_LOG lines."""
    counts: dict[str, dict[str, int]] = {}
    if not path.exists():
        return counts
    for line in path.read_text().splitlines():
        stage, what, _pid = line.split()
        counts.setdefault(stage, {"start": 0, "end": 0})[what] += 1
    return counts


def metric_total(name: str, **match: Callable[[str], bool]) -> float:
    """Sum of the engine's metric samples ``name`` whose labels pass every ``match`` test."""
    total = 0.0
    for family in metrics.REGISTRY.collect():
        for sample in family.samples:
            if sample.name == name and all(
                test(sample.labels.get(label, "")) for label, test in match.items()
            ):
                total += sample.value
    return total


# ---------------------------------------------------------------------------- the real engine


class Tap:
    """An HTTP subscriber that records every event a Trigger delivers to it (answers 202)."""

    def __init__(self) -> None:
        self.events: list[events.CloudEvent] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        async def record(request: web.Request) -> web.Response:
            headers = {k.lower(): v for k, v in request.headers.items()}
            self.events.append(events.from_http(headers, await request.read()))
            return web.Response(status=202)

        app = web.Application()
        app.router.add_post("/", record)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class PipelineEngine:
    """Compiled manifests run by the engine's BrokerRuntime + FunctionHost on a background loop.

    Events are POSTed to the broker's ingress as the DICOM adapter does. Options, each a change
    a cluster operator could make to the manifests:

    - ``service_env``: set in every Knative Service's env (a Service's env wins over the host's
      ``base_env``, as on Knative, so this is how a test shortens the claim lease);
    - ``twin_triggers``: a second Trigger beside every Trigger, so every event is delivered twice
      to every subscriber (independent deliveries, as Knative does for two Triggers);
    - ``trigger_delivery``: ``{service: delivery}`` set on the Triggers of that Service (a
      Trigger's delivery replaces the Broker's wholesale, so the Broker's dead-letter sink is
      kept in it), e.g. a short per-attempt timeout and one retry so a slow stage is
      dead-lettered within seconds;
    - a tap Trigger without filters records every event that enters the broker (:attr:`seen`).
    """

    def __init__(
        self,
        knative_dir: Path,
        state_dir: Path,
        *,
        base_env: dict[str, str],
        service_env: dict[str, str] | None = None,
        twin_triggers: bool = False,
        trigger_delivery: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        manifests = load_manifests(knative_dir)  # as the engine reads them
        # operators only: a model server (radflow.dev/embedded: triton) needs the engine's
        # launcher and object store; these tests give triton-infer in-process ONNX Runtime
        self._services = [
            copy.deepcopy(svc)
            for svc in manifests.services
            if "radflow.dev/embedded" not in (svc["metadata"].get("annotations") or {})
        ]
        for svc in self._services:
            set_env(svc, service_env or {})
        self._brokers = manifests.brokers
        self._triggers = copy.deepcopy(manifests.triggers)
        broker_delivery = self._brokers[0]["spec"].get("delivery", {})
        for t in self._triggers:
            override = (trigger_delivery or {}).get(t["spec"]["subscriber"]["ref"]["name"])
            if override is not None:
                own = t["spec"].get("delivery") or broker_delivery
                t["spec"]["delivery"] = {**copy.deepcopy(own), **override}
        if twin_triggers:
            twins = copy.deepcopy(self._triggers)
            for t in twins:
                t["metadata"]["name"] += "-twin"
            self._triggers += twins
        self.base_env = base_env
        self.state_dir = state_dir
        self.tap = Tap()
        # the compiled SinkBinding gives the job tracker ``K_SINK`` (the Broker), as Knative does
        self._sinkbindings = manifests.sinkbindings
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self._broker_port = int(sock.getsockname()[1])
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="engine-loop", daemon=True
        )
        self._started = False

    # -- running things on the engine's loop

    def _run(self, coro: Any, timeout: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _call(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the engine's loop, between two of its steps (a consistent view)."""

        async def call() -> T:
            return fn()

        return self._run(call())  # type: ignore[no-any-return]

    # -- lifecycle

    def start(self) -> PipelineEngine:
        self._thread.start()
        self._started = True
        self._run(self.tap.start())

        def resolve(dest: dict[str, Any], namespace: str) -> str:
            ref = dest["ref"]
            ns = ref.get("namespace") or namespace
            if ref["kind"] == "Broker":
                return f"http://127.0.0.1:{self._broker_port}/{ns}/{ref['name']}"
            return self.host.url(ref["name"], ns)

        self.host = FunctionHost(
            services=self._services,
            workdir=REPO,
            state_dir=self.state_dir / "host",
            base_env={**os.environ, **self.base_env},
            sinkbindings=self._sinkbindings,
            resolve_sink=resolve,
        )
        self._run(self.host.start())

        broker = self._brokers[0]["metadata"]
        tap_trigger = {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Trigger",
            "metadata": {"name": "test-tap", "namespace": broker.get("namespace", "default")},
            "spec": {"broker": broker["name"], "subscriber": {"uri": self.tap.url}},
        }
        self.broker = BrokerRuntime(
            brokers=self._brokers,
            triggers=[*self._triggers, tap_trigger],
            state_dir=self.state_dir / "broker",
            resolve=resolve,
            port=self._broker_port,
        )
        self._run(self.broker.start())
        self.ingress = self.broker.ingress_url(broker.get("namespace", "default"), broker["name"])
        return self

    def stop(self) -> None:
        if not self._started:
            return
        try:
            self._run(self.broker.stop())
            self._run(self.host.stop())
            self._run(self.tap.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def __enter__(self) -> PipelineEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- driving and observing

    def publish(self, event: events.CloudEvent) -> None:
        """POST ``event`` to the broker ingress; it answers 202 once the event is stored."""
        headers, body = events.to_binary(event)
        req = urllib.request.Request(self.ingress, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 202, resp.status

    def wait_idle(self, timeout: float = 120) -> None:
        """Wait until the broker has no delivery waiting or in flight.

        Checked on the engine's loop: a reply (or a dead letter) is stored and queued in the same
        step that finishes the delivery producing it, so ``pending == 0`` there means every
        event, reply and dead letter has been delivered, and nothing more will happen until the
        next publish.
        """

        async def idle() -> None:
            deadline = self._loop.time() + timeout
            while self.broker.pending:
                if self._loop.time() > deadline:
                    raise TimeoutError(f"{self.broker.pending} deliveries still pending")
                await asyncio.sleep(0.05)

        self._run(idle(), timeout + 10)

    @property
    def seen(self) -> list[events.CloudEvent]:
        """Every event that entered the broker (published ones and replies), as the tap got them."""
        return self._call(lambda: list(self.tap.events))

    def of_type(self, type_: events.EventType) -> list[events.CloudEvent]:
        return [e for e in self.seen if e["type"] == type_.value]

    def instances(self, service: str) -> list[dict[str, Any]]:
        """The running processes of a Knative Service (the function host's status)."""
        status = self._call(self.host.status)
        return next(s["instances"] for s in status if s["name"] == service)

    def kill(self, service: str) -> list[int]:
        """SIGKILL every process group of ``service`` (like an OOM kill or a lost node)."""
        pids = [int(i["pid"]) for i in self.instances(service)]
        for pid in pids:
            os.killpg(pid, signal.SIGKILL)
        return pids

    def jobs(self) -> list[dict[str, Any]]:
        """The job tracker's list (``GET /jobs``)."""
        with urllib.request.urlopen(self.host.url("job-tracker") + "/jobs", timeout=30) as resp:
            return list(json.loads(resp.read())["jobs"])

    def job_status(self, job_id: str) -> dict[str, Any]:
        with urllib.request.urlopen(
            self.host.url("job-tracker") + f"/jobs/{job_id}", timeout=30
        ) as resp:
            return dict(json.loads(resp.read()))


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
