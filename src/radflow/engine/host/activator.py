"""One Knative Revision on this machine: its activator port, its process pool and its autoscaler.

The activator is always in the request path (Knative takes it out once there is burst capacity;
locally there is nothing to gain by doing so). A request that finds no instance with a free slot
waits in a bounded FIFO queue; the revision spawns processes up to ``max-scale`` while queued
requests exceed the slots of the instances already starting, holds the requests until a process
answers HTTP, then proxies them unchanged. The whole request, hold included, is bounded by
``timeoutSeconds`` (504). Idle processes beyond ``min-scale`` are stopped after the stable window
(plus the retention period for the last one).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from radflow.engine import metrics
from radflow.engine.host.prewarm import ForkedProcess, Zygote, ff_args_of
from radflow.engine.host.process import ManagedProcess, PidRegistry, log_line
from radflow.engine.host.spec import ServiceSpec, container_argv, knative_env
from radflow.engine.ports import free_port
from radflow.sdk.errors import ConfigError

log = logging.getLogger(__name__)

#: RFC 9110 §7.6.1 connection-specific fields, plus the ones the proxy recomputes itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
#: Stop grace: Knative waits ``timeoutSeconds``; locally we cap it so ``radflow down`` stays quick.
GRACE_CAP_S = 10.0
#: Knative's activator queue depth per revision (``pkg/activator/net/throttler.go``).
DEFAULT_MAX_QUEUE = 10_000
#: Local stand-in for Knative's "unlimited" max-scale (annotation 0 or absent).
DEFAULT_MAX_SCALE = 2


@dataclass(frozen=True)
class ServiceLaunch:
    """What a service launcher gets to decide how one instance of an embedded Service starts."""

    spec: ServiceSpec
    env: dict[str, str]  # the environment Knative would give the container (PORT included)
    port: int  # the port this instance must serve HTTP on
    host: str
    workdir: Path
    log_path: Path
    python: str


#: A service launcher returns the argv and environment of one instance's process.
ServiceLauncher = Callable[[ServiceLaunch], tuple[Sequence[str], Mapping[str, str]]]
_SERVICE_LAUNCHERS: dict[str, ServiceLauncher] = {}


def register_service_launcher(kind: str, launcher: ServiceLauncher) -> None:
    """Make Knative Services annotated ``radflow.dev/embedded: <kind>`` start through
    ``launcher`` (the image has no local twin, e.g. NVIDIA's Triton): the revision keeps every
    other Knative semantic (activator hold, scale from/to zero, probes, timeouts)."""
    _SERVICE_LAUNCHERS[kind] = launcher


def service_launcher(kind: str) -> ServiceLauncher | None:
    return _SERVICE_LAUNCHERS.get(kind)


def registered_service_launchers() -> list[str]:
    return sorted(_SERVICE_LAUNCHERS)


class QueueFull(Exception):
    """The activator queue is at its bound: answer 503 like Knative's throttler."""


class StartupFailed(Exception):
    """The only process starting for this revision exited before it was ready."""


@dataclass(eq=False)
class Instance:
    process: ManagedProcess | ForkedProcess
    port: int
    in_flight: int = 0
    ready: bool = False
    stopping: bool = False
    last_active: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None


class Revision:
    """The serving state of one Knative Service: activator socket, instances, queue and scaler."""

    def __init__(
        self,
        spec: ServiceSpec,
        *,
        workdir: Path,
        log_path: Path,
        python: str,
        base_env: Mapping[str, str],
        host: str,
        session: aiohttp.ClientSession,
        idle_override_s: float | None = None,
        default_max_scale: int = DEFAULT_MAX_SCALE,
        max_queue: int = DEFAULT_MAX_QUEUE,
        grace_cap_s: float = GRACE_CAP_S,
        zygote: Zygote | None = None,
        registry: PidRegistry | None = None,
        port: int = 0,
        bound_env: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        self.spec = spec
        #: env a SinkBinding injects (``K_SINK``), read when an instance starts
        self.bound_env = bound_env
        self.requested_port = port
        self.registry = registry
        self.zygote = zygote
        self.workdir = workdir
        self.log_path = log_path
        self.python = python
        self.base_env = dict(base_env)
        self.host = host
        self.session = session
        self.idle_override_s = idle_override_s
        self.max_scale = spec.max_scale or max(default_max_scale, spec.min_scale, 1)
        self.max_queue = max_queue
        self.grace_s = min(spec.timeout_s, grace_cap_s)
        self.instances: list[Instance] = []
        self.waiters: collections.deque[asyncio.Future[Instance]] = collections.deque()
        self.cold_starts = 0
        self.last_cold_start_s: float | None = None
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._scaler: asyncio.Task[None] | None = None
        self._closing = False
        self._min_failures = 0
        self._min_retry_at = 0.0
        self._labels = {"function": spec.name}
        self._background: set[asyncio.Task[None]] = set()

    # --- lifecycle --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Bind the activator port (race-free: the socket is bound here) and honour min/initial
        scale."""
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        # auto_decompress=False: a gzip request body must reach the function as sent,
        # Content-Encoding and all
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=1.0, auto_decompress=False
        )
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.requested_port))
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"Service {self.spec.namespace}/{self.spec.name}: "
                f"activator port {self.requested_port} on {self.host} "
                f"is not free ({exc.strerror}); pick another or leave it to the host"
            ) from None
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock, backlog=1024).start()
        for _ in range(max(self.spec.min_scale, self.spec.initial_scale or 0)):
            self._spawn(reason="min-scale" if self.spec.min_scale else "initial-scale")
        self._scaler = asyncio.create_task(self._scale_loop(), name=f"scaler {self.spec.name}")

    async def stop(self) -> None:
        """Refuse new work, SIGTERM every instance, give them the grace period, then SIGKILL."""
        self._closing = True
        if self._scaler:
            self._scaler.cancel()
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(QueueFull("shutting down"))
        await asyncio.gather(
            *(self._stop_instance(i, "host stopping") for i in list(self.instances))
        )
        tasks = [i.task for i in self.instances if i.task] + list(self._background)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._runner:
            await self._runner.cleanup()
        metrics.INSTANCES.labels(**self._labels).set(0)

    def status(self) -> dict[str, object]:
        live = [i for i in self.instances if not i.stopping]
        if self._closing:
            state = "stopped"
        elif not live:
            state = "scaled-to-zero"
        elif any(i.ready for i in live):
            state = "ready"
        else:
            state = "starting"
        return {
            "name": self.spec.name,
            "namespace": self.spec.namespace,
            "url": self.url,
            "state": state,
            "instances": [
                {
                    "pid": i.process.pid,
                    "port": i.port,
                    "in_flight": i.in_flight,
                    "ready": i.ready,
                    "started_at": i.process.started_at,
                }
                for i in self.instances
            ],
            "queued": sum(1 for f in self.waiters if not f.done()),
            "cold_starts": self.cold_starts,
            "last_cold_start_s": self.last_cold_start_s,
            "container_concurrency": self.spec.container_concurrency,
            "min_scale": self.spec.min_scale,
            "max_scale": self.max_scale,
            "timeout_s": self.spec.timeout_s,
            "log": str(self.log_path),
        }

    # --- instances --------------------------------------------------------------------------------

    def _live(self) -> list[Instance]:
        return [i for i in self.instances if not i.stopping]

    def _spawn(self, reason: str) -> Instance:
        port = free_port(self.host)
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "HOST": self.host,
            **self.base_env,
            **self.spec.env,
            **(self.bound_env() if self.bound_env is not None else {}),
        }
        env.update(knative_env(self.spec, port))
        launcher = service_launcher(self.spec.embedded) if self.spec.embedded else None
        if launcher is not None:
            launched, launched_env = launcher(
                ServiceLaunch(
                    self.spec, env, port, self.host, self.workdir, self.log_path, self.python
                )
            )
            argv, env = [str(a) for a in launched], dict(launched_env)
        else:
            argv = container_argv(
                self.spec.container,
                env,
                self.python,
                self.host,
                f"Service {self.spec.namespace}/{self.spec.name}",
            )
        ff_args = ff_args_of(argv, self.python) if launcher is None else None
        process: ManagedProcess | ForkedProcess
        if ff_args is not None and self.zygote is not None and self.zygote.alive:
            process = ForkedProcess(
                self.zygote,
                ff_args,
                env=env,
                cwd=self.workdir,
                log_path=self.log_path,
                registry=self.registry,
            )
        else:
            process = ManagedProcess(
                argv, env=env, cwd=self.workdir, log_path=self.log_path, registry=self.registry
            )
        inst = Instance(process, port)
        self.instances.append(inst)
        metrics.INSTANCES.labels(**self._labels).set(len(self.instances))
        inst.task = asyncio.create_task(self._run(inst, reason), name=f"{self.spec.name}:{port}")
        return inst

    async def _run(self, inst: Instance, reason: str) -> None:
        """Spawn, wait for readiness, then watch the process until it exits (crash or stop)."""
        proc = inst.process
        try:
            await proc.spawn()
        except OSError as exc:
            log_line(self.log_path, f"cannot start {proc.argv[0]!r}: {exc}")
            self._remove(inst, startup_error=f"cannot start {proc.argv[0]!r}: {exc}")
            return
        log_line(
            self.log_path,
            f"started pid {proc.pid} on port {inst.port} ({reason}): {' '.join(proc.argv)}",
        )
        exited = asyncio.create_task(proc.wait())
        ready = await self._probe(inst, exited)
        if ready:
            seconds = time.monotonic() - proc.started_mono
            inst.ready = True
            inst.last_active = time.monotonic()
            self.cold_starts += 1
            self.last_cold_start_s = seconds
            self._min_failures = 0
            metrics.COLD_STARTS.labels(**self._labels).inc()
            metrics.COLD_START_SECONDS.labels(**self._labels).observe(seconds)
            log_line(self.log_path, f"pid {proc.pid} ready after {seconds:.3f}s")
            self._dispatch()
        elif not exited.done():
            if not inst.stopping:  # the progress deadline passed without an HTTP answer
                log_line(
                    self.log_path,
                    f"pid {proc.pid} not ready after {self.spec.progress_deadline_s}s; stopping it",
                )
            # also when stop() came while it was being spawned (it had no pid to signal then)
            await proc.stop(self.grace_s)
        code = await exited
        if inst.stopping:
            log_line(self.log_path, f"pid {proc.pid} stopped (exit code {code})")
            self._remove(inst)
            return
        what = "exited" if ready else "exited before it was ready"
        log_line(
            self.log_path,
            f"pid {proc.pid} {what} with code {code}; the next request starts a new process",
        )
        log.warning("function %s: pid %s %s with code %s", self.spec.name, proc.pid, what, code)
        self._remove(
            inst,
            startup_error=None if ready else f"process exited with code {code} before it was ready",
        )

    async def _probe(self, inst: Instance, exited: asyncio.Task[int]) -> bool:
        """Ready = the port accepts and answers HTTP (any status): the probe never reaches user code
        for functions-framework apps (``/robots.txt`` is answered 404 by the framework itself).
        A container that declares an HTTP startup/readiness probe is ready when that path answers
        2xx/3xx, as the kubelet decides (Triton answers ``/v2/health/ready`` 400 until its models
        are loaded)."""
        declared = self.spec.readiness_path
        url = f"http://{self.host}:{inst.port}{declared or '/robots.txt'}"
        deadline = inst.process.started_mono + self.spec.progress_deadline_s
        delay = 0.005
        while not exited.done() and not inst.stopping and time.monotonic() < deadline:
            try:
                async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=2.0)) as resp:
                    await resp.read()
                    if not declared or 200 <= resp.status < 400:
                        return True
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass
            await asyncio.sleep(delay)
            delay = min(
                delay * 1.5, 0.01
            )  # a refused connect costs ~0.1 ms; a late probe costs latency
        return False

    def _remove(self, inst: Instance, startup_error: str | None = None) -> None:
        if inst in self.instances:
            self.instances.remove(inst)
        metrics.INSTANCES.labels(**self._labels).set(len(self.instances))
        if startup_error and not self._live():
            # nothing else can serve the queued requests: fail them now instead of at their timeout
            self._min_failures += 1
            self._min_retry_at = time.monotonic() + min(10.0 * 2 ** (self._min_failures - 1), 300.0)
            while self.waiters:
                fut = self.waiters.popleft()
                if not fut.done():
                    fut.set_exception(StartupFailed(startup_error))
        self._dispatch()

    async def _stop_instance(self, inst: Instance, why: str) -> None:
        inst.stopping = True
        log_line(self.log_path, f"stopping pid {inst.process.pid} ({why})")
        await inst.process.stop(self.grace_s)

    # --- request routing --------------------------------------------------------------------------

    def _free_instance(self) -> Instance | None:
        """First fit: fill earlier instances first so surplus ones go idle and scale down."""
        limit = self.spec.slot_limit
        for inst in self.instances:
            if inst.ready and not inst.stopping and inst.in_flight < limit:
                return inst
        return None

    def _dispatch(self) -> None:
        """Hand free slots to queued requests in FIFO order, then scale up for the rest."""
        while self.waiters:
            head = self.waiters[0]
            if head.done():
                self.waiters.popleft()
                continue
            inst = self._free_instance()
            if inst is None:
                break
            self.waiters.popleft()
            inst.in_flight += 1
            head.set_result(inst)
        pending = sum(1 for f in self.waiters if not f.done())
        if not pending or self._closing:
            return
        starting = [i for i in self._live() if not i.ready]
        spare = len(starting) * self.spec.slot_limit
        while pending > spare and len(self._live()) < self.max_scale:
            self._spawn(reason="scale from zero" if not self._live() else "scale up")
            spare += self.spec.slot_limit

    async def _acquire(self) -> Instance:
        if self._closing:
            raise QueueFull("the host is shutting down")
        inst = self._free_instance()
        if inst is not None and not any(not f.done() for f in self.waiters):
            inst.in_flight += 1
            return inst
        if sum(1 for f in self.waiters if not f.done()) >= self.max_queue:
            raise QueueFull(f"{self.max_queue} requests already queued")
        fut: asyncio.Future[Instance] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        self._dispatch()
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._release(fut.result())  # got a slot just as the deadline hit
            raise

    def _release(self, inst: Instance) -> None:
        inst.in_flight -= 1
        inst.last_active = time.monotonic()
        self._dispatch()

    async def _scale_loop(self) -> None:
        """Scale to zero (and down) after the idle window; keep ``min-scale`` processes alive."""
        spec = self.spec
        threshold_last = spec.window_s + spec.scale_down_delay_s + spec.retention_s
        threshold_other = spec.window_s + spec.scale_down_delay_s
        if self.idle_override_s is not None:
            threshold_last = threshold_other = self.idle_override_s
        tick = max(0.05, min(1.0, threshold_other / 4))
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            live = self._live()
            if len(live) < spec.min_scale and now >= self._min_retry_at:
                for _ in range(spec.min_scale - len(live)):
                    self._spawn(reason="min-scale")
                continue
            if any(not f.done() for f in self.waiters):
                continue
            for inst in list(live):
                if len(live) <= spec.min_scale:
                    break
                threshold = threshold_last if len(live) == 1 else threshold_other
                if inst.ready and inst.in_flight == 0 and now - inst.last_active >= threshold:
                    live.remove(inst)
                    inst.stopping = True  # before yielding: no request may be routed to it any more
                    task = asyncio.create_task(
                        self._stop_instance(inst, f"idle for {now - inst.last_active:.1f}s")
                    )
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)

    # --- the activator ----------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        code = 500
        response: web.StreamResponse | None = None
        try:
            async with asyncio.timeout(self.spec.timeout_s):
                try:
                    inst = await self._acquire()
                except QueueFull as exc:
                    code = 503
                    return _error(
                        503, f"function {self.spec.name}: activator queue full ({exc}); retry later"
                    )
                except StartupFailed as exc:
                    code = 502
                    return _error(502, f"function {self.spec.name}: {exc}; see {self.log_path}")
                try:
                    response = web.StreamResponse()
                    code = await self._proxy(request, inst, response)
                    return response
                finally:
                    self._release(inst)
        except TimeoutError:
            if response is not None and response.prepared:
                code = 504
                if request.transport is not None:
                    request.transport.close()  # headers already went out: all we can do is cut it
                return response
            code = 504
            return _error(
                504,
                f"function {self.spec.name}: no response within "
                f"timeoutSeconds={self.spec.timeout_s:g}",
            )
        finally:
            metrics.INVOCATIONS.labels(function=self.spec.name, code=str(code)).inc()
            metrics.DURATION.labels(**self._labels).observe(time.monotonic() - started)

    async def _proxy(
        self, request: web.Request, inst: Instance, response: web.StreamResponse
    ) -> int:
        """Forward one request to ``inst``; stream both bodies; pass status and headers through."""
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        if request.headers.get("Transfer-Encoding", "").lower() == "chunked":
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        url = f"http://{self.host}:{inst.port}{request.rel_url}"
        try:
            async with self.session.request(
                request.method,
                url,
                headers=headers,
                data=request.content if request.body_exists else None,
                allow_redirects=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            ) as upstream:
                response.set_status(upstream.status, upstream.reason)
                for key, value in upstream.headers.items():
                    if key.lower() not in HOP_BY_HOP:
                        response.headers.add(key, value)
                await response.prepare(request)
                async for chunk in upstream.content.iter_chunked(1 << 16):
                    await response.write(chunk)
                await response.write_eof()
                return upstream.status
        except (aiohttp.ClientError, OSError) as exc:
            if response.prepared:
                if request.transport is not None:
                    request.transport.close()
                return 502
            log_line(
                self.log_path,
                f"request to pid {inst.process.pid} failed: {type(exc).__name__}: {exc}",
            )
            response.set_status(502)
            response.content_type = "text/plain"
            body = (
                f"function {self.spec.name}: instance pid {inst.process.pid} failed mid-request "
                f"({type(exc).__name__}); the next request starts a new process; "
                f"see {self.log_path}\n"
            ).encode()
            response.content_length = len(body)
            await response.prepare(request)
            await response.write(body)
            await response.write_eof()
            return 502


def _error(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", content_type="text/plain")
