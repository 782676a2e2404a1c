"""WorkloadRunner: always-on Deployments (DICOM adapter, Triton) with SinkBinding env injection.

A Deployment keeps one local process running and restarts it with kubelet-like backoff when it
exits (10 s doubling to 5 min, reset after 10 min of clean running). A Deployment that is the
subject of a SinkBinding gets ``K_SINK`` and ``K_CE_OVERRIDES`` exactly as Knative injects them.
A Deployment annotated ``radflow.dev/embedded: <kind>`` has no local image to run; a launcher
registered for that kind (:func:`register_launcher`) says what to start instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from radflow.engine.host.functions import log_file
from radflow.engine.host.process import ManagedProcess, PidRegistry, log_line
from radflow.engine.host.spec import (
    DeploymentSpec,
    binding_for,
    container_argv,
    parse_deployment,
    sink_env,
)
from radflow.sdk.errors import ConfigError

log = logging.getLogger(__name__)

#: kubelet's CrashLoopBackOff: 10 s, doubling, capped at 5 min, reset after 10 min of running.
BACKOFF_INITIAL_S = 10.0
BACKOFF_CAP_S = 300.0
BACKOFF_RESET_S = 600.0
GRACE_CAP_S = 10.0


@dataclass(frozen=True)
class LaunchContext:
    """What a launcher gets to decide how an embedded workload starts."""

    deployment: DeploymentSpec
    env: dict[str, str]  # the full environment the workload should see (K_SINK included)
    workdir: Path
    state_dir: Path
    log_path: Path
    python: str


@runtime_checkable
class EmbeddedWorkload(Protocol):
    """A workload a launcher runs itself (instead of returning an argv for the runner to spawn)."""

    @property
    def pid(self) -> int | None: ...

    async def start(self) -> None: ...

    async def wait(self) -> int:
        """Return the exit code when the workload ends on its own (the runner then restarts it)."""
        ...

    async def stop(self, grace_s: float) -> None: ...


#: A launcher returns either the command line to supervise or an :class:`EmbeddedWorkload`.
Launcher = Callable[[LaunchContext], "Sequence[str] | EmbeddedWorkload"]
_LAUNCHERS: dict[str, Launcher] = {}


def register_launcher(kind: str, factory: Launcher) -> None:
    """Make ``radflow.dev/embedded: <kind>`` Deployments start through ``factory``."""
    _LAUNCHERS[kind] = factory


def registered_launchers() -> list[str]:
    return sorted(_LAUNCHERS)


class _ProcessWorkload:
    """A plain supervised process (the default for a Deployment's container)."""

    def __init__(self, process: ManagedProcess) -> None:
        self.process = process

    @property
    def pid(self) -> int | None:
        return self.process.pid

    async def start(self) -> None:
        await self.process.spawn()

    async def wait(self) -> int:
        return await self.process.wait()

    async def stop(self, grace_s: float) -> None:
        await self.process.stop(grace_s)


class _Supervised:
    """The restart loop of one Deployment."""

    def __init__(self, runner: WorkloadRunner, spec: DeploymentSpec, env: dict[str, str]) -> None:
        self.runner = runner
        self.spec = spec
        self.env = env
        self.log_path = log_file(runner.state_dir, spec.name, spec.namespace)
        self.workload: EmbeddedWorkload | _ProcessWorkload | None = None
        self.state = "pending"
        self.restarts = 0
        self.started_at: float | None = None
        self.last_exit_code: int | None = None
        self.stopping = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        grace = (
            (spec.raw.get("spec") or {})
            .get("template", {})
            .get("spec", {})
            .get("terminationGracePeriodSeconds", 30)
        )
        self.grace_s = min(float(grace), runner.grace_cap_s)

    def _make(self) -> EmbeddedWorkload | _ProcessWorkload:
        kind = self.spec.embedded_kind
        where = f"Deployment {self.spec.namespace}/{self.spec.name}"
        if kind is not None:
            made = _LAUNCHERS[kind](
                LaunchContext(
                    self.spec,
                    dict(self.env),
                    self.runner.workdir,
                    self.runner.state_dir,
                    self.log_path,
                    self.runner.python,
                )
            )
            if isinstance(made, EmbeddedWorkload):
                return made
            argv = [str(a) for a in made]
        else:
            argv = container_argv(
                self.spec.container, self.env, self.runner.python, "127.0.0.1", where
            )
        process = ManagedProcess(
            argv,
            env=self.env,
            cwd=self.runner.workdir,
            log_path=self.log_path,
            registry=self.runner.registry,
        )
        return _ProcessWorkload(process)

    async def run(self) -> None:
        backoff = self.runner.backoff_initial_s
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                self.workload = self._make()
                await self.workload.start()
            except (
                Exception
            ) as exc:  # a bad launcher or a missing executable: report, back off, retry
                log_line(self.log_path, f"cannot start: {type(exc).__name__}: {exc}")
                log.error("Deployment %s: cannot start: %s", self.spec.name, exc)
                self.workload = None
                code = 127
            else:
                if self.stopping.is_set():  # stop() came while it was starting
                    await self.workload.stop(self.grace_s)
                    break
                self.state = "running"
                self.started_at = time.time()
                log_line(
                    self.log_path, f"started pid {self.workload.pid} (restart {self.restarts})"
                )
                code = await self.workload.wait()
            self.last_exit_code = code
            if self.stopping.is_set():
                break
            if time.monotonic() - started >= BACKOFF_RESET_S:
                backoff = self.runner.backoff_initial_s
            self.restarts += 1
            self.state = "backoff"
            log_line(
                self.log_path,
                f"exited with code {code}; restarting in {backoff:g}s (CrashLoopBackOff)",
            )
            try:
                await asyncio.wait_for(self.stopping.wait(), backoff)
            except TimeoutError:
                pass
            backoff = min(backoff * 2, self.runner.backoff_cap_s)
        self.state = "stopped"

    async def stop(self) -> None:
        self.stopping.set()
        if self.workload is not None:
            log_line(self.log_path, f"stopping pid {self.workload.pid}")
            await self.workload.stop(self.grace_s)
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)


class WorkloadRunner:
    """Keeps Deployments running as local processes; SinkBinding subjects get
    K_SINK/K_CE_OVERRIDES."""

    def __init__(
        self,
        *,
        deployments: list[dict[str, Any]],
        sinkbindings: list[dict[str, Any]],
        resolve_sink: Callable[[dict[str, Any], str], str],
        workdir: Path,
        state_dir: Path,
        python: str = sys.executable,
        base_env: Mapping[str, str] | None = None,
        env_overrides: Mapping[str, Mapping[str, str]] | None = None,
        backoff_initial_s: float = BACKOFF_INITIAL_S,
        backoff_cap_s: float = BACKOFF_CAP_S,
        grace_cap_s: float = GRACE_CAP_S,
    ) -> None:
        self.workdir = Path(workdir)
        self.state_dir = Path(state_dir)
        self.python = python
        self.base_env = dict(base_env or {})
        self.env_overrides = {k: dict(v) for k, v in (env_overrides or {}).items()}
        self.backoff_initial_s = backoff_initial_s
        self.backoff_cap_s = backoff_cap_s
        self.grace_cap_s = grace_cap_s
        self.specs = [parse_deployment(d) for d in deployments]
        self.sinkbindings = list(sinkbindings)
        self.resolve_sink = resolve_sink
        self._supervised: list[_Supervised] = []
        self.registry = PidRegistry(self.state_dir / "run" / "workloads")

    def binding_for(self, spec: DeploymentSpec) -> Mapping[str, Any] | None:
        return binding_for(self.sinkbindings, spec)

    def environment(self, spec: DeploymentSpec) -> dict[str, str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.base_env, **spec.env}
        binding = self.binding_for(spec)
        if binding is not None:
            env.update(sink_env(binding, lambda sink: self.resolve_sink(sink, spec.namespace)))
        env.update(self.env_overrides.get(spec.name, {}))
        return env

    async def start(self) -> None:
        """Validate everything first (unknown launcher kinds, bindings), then start each
        Deployment."""
        stale = self.registry.reap_stale()
        if stale:
            log.warning(
                "killed %d workload process group(s) left by an engine "
                "that did not stop cleanly: %s",
                len(stale),
                stale,
            )
        planned: list[_Supervised] = []
        for spec in self.specs:
            kind = spec.embedded_kind
            if kind is not None and kind not in _LAUNCHERS:
                known = ", ".join(registered_launchers()) or "none registered"
                raise ConfigError(
                    f"Deployment {spec.namespace}/{spec.name}: radflow.dev/embedded: {kind!r} "
                    "has no local launcher "
                    f"(known: {known}); install the extra that provides it or remove the annotation"
                )
            env = self.environment(spec)
            if kind is None:
                container_argv(
                    spec.container,
                    env,
                    self.python,
                    "127.0.0.1",
                    f"Deployment {spec.namespace}/{spec.name}",
                )
            planned.append(_Supervised(self, spec, env))
        for sup in planned:
            self._supervised.append(sup)
            if sup.spec.replicas == 0:
                sup.state = "scaled-to-zero"
                continue
            sup.task = asyncio.create_task(sup.run(), name=f"deployment {sup.spec.name}")

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self._supervised), return_exceptions=True)

    def environments(self) -> list[tuple[DeploymentSpec, dict[str, str]]]:
        """Each started Deployment with the environment its process got."""
        return [(s.spec, dict(s.env)) for s in self._supervised]

    def status(self) -> list[dict[str, Any]]:
        return [
            {
                "name": s.spec.name,
                "namespace": s.spec.namespace,
                "kind": s.spec.embedded_kind or "process",
                "state": s.state,
                "pid": s.workload.pid if s.workload is not None and s.state == "running" else None,
                "restarts": s.restarts,
                "started_at": s.started_at,
                "last_exit_code": s.last_exit_code,
                "sink": s.env.get("K_SINK"),
                "log": str(s.log_path),
            }
            for s in self._supervised
        ]
