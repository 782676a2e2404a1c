"""Host side of the optional pre-warmed fork server (``zygote.py``).

With ``FunctionHost(prewarm=[...modules])`` functions-framework instances are forked from one
interpreter that already imported the framework and those modules, instead of being spawned
from scratch. The instance is still a fresh process in its own session with its own env, log
and port; what changes is that the preloaded modules were imported under the zygote's env.
Any other container (``command`` given) is always spawned normally.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from radflow.engine.children import die_with_parent
from radflow.engine.host.process import PidRegistry

log = logging.getLogger(__name__)
#: What radflow's operators import at module level (botocore via sdk.storage, SimpleITK via
#: imaging.volume, ...). ``radflow.sdk.runtime`` (served by every operator's entry point:
#: cloudevents, urllib3, pydantic models) is another 0.24 s per cold start on the 2-core VM
#: when left to the forked child.
IMAGING_STACK = (
    "pydicom",
    "pynetdicom",
    "SimpleITK",
    "highdicom",
    "numpy",
    "botocore",
    "radflow.sdk.runtime",
)
ZYGOTE_SCRIPT = Path(__file__).with_name("zygote.py")


class Zygote:
    """The fork server process and the bookkeeping of the children it forked for us."""

    def __init__(
        self,
        python: str,
        preload: Sequence[str],
        env: Mapping[str, str],
        cwd: Path,
        registry: PidRegistry | None = None,
    ) -> None:
        self.registry = registry
        self.python = python
        self.preload = list(preload)
        self.env = dict(env)
        self.cwd = cwd
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()
        self.failed_imports: list[str] = []
        self._ids = itertools.count(1)
        self._spawns: dict[int, asyncio.Future[int]] = {}
        self._exits: dict[int, asyncio.Future[int]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None and self.ready.is_set()

    async def start(self) -> None:
        """Launch it; :attr:`ready` is set once its imports are done (it is not awaited here)."""
        self.proc = await asyncio.create_subprocess_exec(
            self.python,
            str(ZYGOTE_SCRIPT),
            *self.preload,
            cwd=str(self.cwd),
            env=self.env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=None,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        if self.registry is not None:
            self.registry.add(self.proc.pid)
        self._reader = asyncio.create_task(self._read(), name="zygote reader")

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            doc = json.loads(line)
            if doc.get("ready"):
                self.failed_imports = list(doc.get("failed") or [])
                if self.failed_imports:
                    log.warning("prewarm: could not preload %s", "; ".join(self.failed_imports))
                self.ready.set()
            elif "exit" in doc:
                self._exit_future(int(doc["exit"])).set_result(int(doc["code"]))
            elif "id" in doc:
                fut = self._spawns.pop(int(doc["id"]))
                if "pid" in doc:
                    fut.set_result(int(doc["pid"]))
                else:
                    fut.set_exception(OSError(f"zygote could not fork: {doc.get('error')}"))
        # the zygote is gone: nobody can report exits any more; treat its children as gone too
        self.ready.clear()
        for fut in self._spawns.values():
            if not fut.done():
                fut.set_exception(OSError("zygote exited"))
        for pid, fut in self._exits.items():
            if not fut.done():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                fut.set_result(-signal.SIGKILL)

    def _exit_future(self, pid: int) -> asyncio.Future[int]:
        if pid not in self._exits:
            self._exits[pid] = asyncio.get_running_loop().create_future()
        return self._exits[pid]

    async def fork(
        self, argv: Sequence[str], env: Mapping[str, str], cwd: Path, log_path: Path
    ) -> int:
        assert self.proc is not None and self.proc.stdin is not None
        ident = next(self._ids)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._spawns[ident] = fut
        req = {
            "id": ident,
            "argv": list(argv),
            "env": dict(env),
            "cwd": str(cwd),
            "log": str(log_path),
        }
        async with self._lock:
            self.proc.stdin.write(json.dumps(req).encode() + b"\n")
            await self.proc.stdin.drain()
        pid = await fut
        self._exit_future(pid)
        return pid

    async def wait_exit(self, pid: int) -> int:
        return await asyncio.shield(self._exit_future(pid))

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 2.0)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self.registry is not None:
            self.registry.remove(self.proc.pid)
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


class ForkedProcess:
    """Same surface as :class:`~radflow.engine.host.process.ManagedProcess`, forked by a
    :class:`Zygote`."""

    def __init__(
        self,
        zygote: Zygote,
        ff_args: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        log_path: Path,
        registry: PidRegistry | None = None,
    ) -> None:
        self.registry = registry
        self.zygote = zygote
        self.ff_args = list(ff_args)
        self.argv = ["<prewarmed>", "functions-framework", *self.ff_args]
        self.env = dict(env)
        self.cwd = cwd
        self.log_path = log_path
        self.started_at = 0.0
        self.started_mono = 0.0
        self.exit_code: int | None = None
        self._pid: int | None = None

    @property
    def pid(self) -> int | None:
        return self._pid

    async def spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.started_mono = time.monotonic()
        self.started_at = time.time()
        self._pid = await self.zygote.fork(self.ff_args, self.env, self.cwd, self.log_path)
        if self.registry is not None:
            self.registry.add(self._pid)

    async def wait(self) -> int:
        assert self._pid is not None
        code = await self.zygote.wait_exit(self._pid)
        self._reap_group()
        return code

    def _reap_group(self) -> None:
        if self.exit_code is None and self._pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._pid, signal.SIGKILL)
            self.exit_code = self.zygote._exits.pop(self._pid).result()
            if self.registry is not None:
                self.registry.remove(self._pid)

    async def stop(self, grace_s: float) -> int | None:
        if self._pid is None:
            return None
        if self.exit_code is not None:
            return self.exit_code
        exited = self.zygote._exit_future(self._pid)
        if not exited.done():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(exited), grace_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self._pid, signal.SIGKILL)
                await exited
        self._reap_group()
        return self.exit_code


def ff_args_of(argv: Sequence[str], python: str) -> list[str] | None:
    """The functions-framework CLI args if ``argv`` is ``<python> -m functions_framework ...``."""
    if (
        len(argv) >= 3
        and argv[0] == python
        and argv[1] == "-m"
        and argv[2] == "functions_framework"
    ):
        return list(argv[3:])
    return None


def zygote_env(base: Mapping[str, Any]) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", **{k: str(v) for k, v in base.items()}}
