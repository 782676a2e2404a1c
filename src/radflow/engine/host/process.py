"""One supervised child process: spawn into its own session, log to a file, stop without orphans.

Every child gets its own session (``start_new_session``), so stopping signals the whole process
group: a functions-framework app is a gunicorn master plus a forked worker, and both must go.
stdout and stderr are appended to the function's log file, which several instances share.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import os
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from radflow.engine.children import die_with_parent


def log_line(log_path: Path, text: str) -> None:
    """Append one line from the host itself (``[host] …``) to a function's log file."""
    stamp = _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as fh:
        fh.write(f"{stamp} [radflow host] {text}\n")


class ManagedProcess:
    """A child process in its own process group; :meth:`stop` is idempotent."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        log_path: Path,
        registry: PidRegistry | None = None,
    ) -> None:
        self.registry = registry
        self.argv = list(argv)
        self.env = dict(env)
        self.cwd = cwd
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at = 0.0  # wall clock, for status()
        self.started_mono = 0.0
        self.exit_code: int | None = None
        self._group_reaped = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # O_APPEND: several instances of one function write to the same file without clobbering
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self.started_mono = time.monotonic()
            self.started_at = time.time()
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                cwd=str(self.cwd),
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        finally:
            os.close(fd)
        if self.registry is not None:
            self.registry.add(self.proc.pid)

    async def wait(self) -> int:
        """The leader's exit code, once it exits; whatever it left in its group is killed right
        then."""
        assert self.proc is not None
        code = await self.proc.wait()
        self._reap_group()
        return code

    def _reap_group(self) -> None:
        # right after the leader exits, so a recycled pid can never be hit by a late signal
        if self.proc is not None and not self._group_reaped:
            self._signal_group(signal.SIGKILL)
            self._group_reaped = True
            self.exit_code = self.proc.returncode
            if self.registry is not None:
                self.registry.remove(self.proc.pid)

    def _signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)  # pgid == pid: start_new_session made it the leader
        except (ProcessLookupError, PermissionError):
            pass

    async def stop(self, grace_s: float) -> int | None:
        """SIGTERM the group, wait up to ``grace_s``, then SIGKILL whatever is left of the group."""
        if self.proc is None:
            return None
        if self._group_reaped:
            return self.exit_code
        if self.proc.returncode is None:
            self._signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self.proc.wait()), grace_s)
            except TimeoutError:
                self._signal_group(signal.SIGKILL)
                await self.proc.wait()
        # the leader may be gone while a forked worker lingers: the group still exists then
        self._reap_group()
        return self.exit_code


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot): tells a recycled pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


class PidRegistry:
    """Process groups this engine started, one file each, so a later start can clean up after a
    crash.

    ``stop()`` leaves nothing behind, but an engine killed with SIGKILL (OOM killer, ``kill -9``)
    never runs it; its children live on in their own sessions. The next start kills those
    groups, after checking the recorded start time so a recycled pid is never hit.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def add(self, pid: int) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / str(pid)).write_text(_start_time(pid) or "")

    def remove(self, pid: int) -> None:
        (self.directory / str(pid)).unlink(missing_ok=True)

    def reap_stale(self) -> list[int]:
        """SIGKILL the groups left by a previous run that did not stop cleanly; return their
        pids."""
        killed: list[int] = []
        if not self.directory.is_dir():
            return killed
        for entry in self.directory.iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            recorded = entry.read_text().strip()
            if recorded and _start_time(pid) == recorded:
                try:
                    os.killpg(pid, signal.SIGKILL)
                    killed.append(pid)
                except (ProcessLookupError, PermissionError):
                    pass
            entry.unlink(missing_ok=True)
        return killed
