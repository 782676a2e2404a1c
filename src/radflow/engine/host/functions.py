"""FunctionHost: Knative Services as scale-to-zero local processes, one activator port each."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from radflow.engine.host.activator import (
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_SCALE,
    GRACE_CAP_S,
    Revision,
    registered_service_launchers,
    service_launcher,
)
from radflow.engine.host.prewarm import Zygote, zygote_env
from radflow.engine.host.process import PidRegistry
from radflow.engine.host.spec import (
    ServiceSpec,
    binding_for,
    container_argv,
    parse_service,
    sink_env,
)
from radflow.sdk.errors import ConfigError

log = logging.getLogger(__name__)


def log_file(state_dir: Path, name: str, namespace: str = "default") -> Path:
    """``state_dir/logs/<name>.log`` (``<namespace>.<name>.log`` outside the default namespace)."""
    stem = name if namespace == "default" else f"{namespace}.{name}"
    return state_dir / "logs" / f"{stem}.log"


class FunctionHost:
    """Runs Knative Services with Serving semantics: activator, scale from/to zero, concurrency,
    timeouts.

    Manifests are validated in the constructor (:class:`ConfigError` names the service and field),
    so ``radflow up`` fails before anything is started.
    """

    def __init__(
        self,
        *,
        services: list[dict[str, Any]],
        workdir: Path,
        state_dir: Path,
        python: str = sys.executable,
        base_env: Mapping[str, str] | None = None,
        idle_override_s: float | None = None,
        host: str = "127.0.0.1",
        default_max_scale: int = DEFAULT_MAX_SCALE,
        max_queue: int = DEFAULT_MAX_QUEUE,
        grace_cap_s: float = GRACE_CAP_S,
        prewarm: Sequence[str] | None = None,
        activator_ports: Mapping[str, int] | None = None,
        sinkbindings: Sequence[Mapping[str, Any]] = (),
        resolve_sink: Callable[[dict[str, Any], str], str] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.state_dir = Path(state_dir)
        self.python = python
        self.base_env = dict(base_env or {})
        self.idle_override_s = idle_override_s
        self.host = host
        self._options: dict[str, Any] = {
            "default_max_scale": default_max_scale,
            "max_queue": max_queue,
            "grace_cap_s": grace_cap_s,
        }
        self.specs = [parse_service(m) for m in services]
        seen: set[tuple[str, str]] = set()
        for spec in self.specs:
            key = (spec.namespace, spec.name)
            if key in seen:
                raise ConfigError(f"Service {spec.namespace}/{spec.name} is defined twice")
            seen.add(key)
            if spec.embedded is not None:
                if service_launcher(spec.embedded) is None:
                    known = ", ".join(registered_service_launchers()) or "none registered"
                    raise ConfigError(
                        f"Service {spec.namespace}/{spec.name}: radflow.dev/embedded: "
                        f"{spec.embedded!r} has no local launcher (known: {known}); install the "
                        "extra that provides it or remove the annotation"
                    )
                continue
            # refuse a container the host cannot map now, not at the first request
            container_argv(
                spec.container,
                {**spec.env, "PORT": "0"},
                python,
                host,
                f"Service {spec.namespace}/{spec.name}",
            )
        # a SinkBinding whose subject is a Knative Service gives its Revision K_SINK, resolved
        # when an instance starts (the Broker it names may start after the host)
        self.resolve_sink = resolve_sink
        self._bindings = {
            (spec.namespace, spec.name): binding_for(sinkbindings, spec) for spec in self.specs
        }
        for (namespace, name), binding in self._bindings.items():
            if binding is not None and resolve_sink is None:
                raise ConfigError(
                    f"Service {namespace}/{name} is the subject of a SinkBinding, "
                    "but the host was given no way to resolve its sink"
                )
        self._revisions: dict[tuple[str, str], Revision] = {}
        self._session: aiohttp.ClientSession | None = None
        self.prewarm = None if prewarm is None else list(prewarm)
        # fixed activator ports, keyed "<name>" or "<namespace>/<name>"; others get a free port
        self.activator_ports = dict(activator_ports or {})
        self._zygote: Zygote | None = None
        self.registry = PidRegistry(self.state_dir / "run" / "functions")

    async def start(self) -> None:
        """Bind one activator port per service; spawn only what min-scale / initial-scale ask
        for."""
        # one connection per proxied request: a reused keep-alive connection that gunicorn closes
        # at the same moment would turn into a spurious 502, and loopback connects cost ~0.1 ms
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True, limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
        )
        stale = self.registry.reap_stale()
        if stale:
            log.warning(
                "killed %d function process group(s) left by an engine "
                "that did not stop cleanly: %s",
                len(stale),
                stale,
            )
        try:
            if self.prewarm is not None:
                # forks functions-framework instances from an interpreter with these modules
                # imported; until it is ready (about the cost of one full import) instances are
                # spawned normally
                self._zygote = Zygote(
                    self.python,
                    self.prewarm,
                    zygote_env(self.base_env),
                    self.workdir,
                    self.registry,
                )
                await self._zygote.start()
            for spec in self.specs:
                revision = Revision(
                    spec,
                    workdir=self.workdir,
                    log_path=log_file(self.state_dir, spec.name, spec.namespace),
                    python=self.python,
                    base_env=self.base_env,
                    host=self.host,
                    session=self._session,
                    idle_override_s=self.idle_override_s,
                    zygote=self._zygote,
                    registry=self.registry,
                    port=self.activator_ports.get(
                        f"{spec.namespace}/{spec.name}", self.activator_ports.get(spec.name, 0)
                    ),
                    bound_env=self._bound_env(spec),
                    **self._options,
                )
                self._revisions[(spec.namespace, spec.name)] = revision
                await revision.start()
        except BaseException:
            await self.stop()
            raise

    def _bound_env(self, spec: ServiceSpec) -> Callable[[], dict[str, str]] | None:
        binding, resolve = self._bindings.get((spec.namespace, spec.name)), self.resolve_sink
        if binding is None or resolve is None:
            return None
        return lambda: sink_env(binding, lambda sink: resolve(sink, spec.namespace))

    async def stop(self) -> None:
        """SIGTERM every process, wait the grace period, SIGKILL the rest; close the activator
        ports."""
        await asyncio.gather(*(r.stop() for r in self._revisions.values()), return_exceptions=True)
        if self._zygote is not None:
            await self._zygote.stop()
            self._zygote = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, name: str, namespace: str = "default") -> str:
        """The activator URL of a service (what a Trigger's subscriber resolves to)."""
        try:
            return self._revisions[(namespace, name)].url
        except KeyError:
            known = ", ".join(f"{ns}/{n}" for ns, n in self._revisions) or "none started"
            raise ConfigError(
                f"no Knative Service {namespace}/{name} in this host (known: {known})"
            ) from None

    def status(self) -> list[dict[str, Any]]:
        return [r.status() for r in self._revisions.values()]

    async def wait_prewarmed(self, timeout: float = 60.0) -> bool:
        """Wait until the fork server (``prewarm``) has imported its modules; False if it is off or
        failed."""
        if self._zygote is None:
            return False
        try:
            await asyncio.wait_for(self._zygote.ready.wait(), timeout)
        except TimeoutError:
            return False
        return self._zygote.alive

    def log_path(self, name: str, namespace: str = "default") -> Path:
        return log_file(self.state_dir, name, namespace)
