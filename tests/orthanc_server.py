"""A real Orthanc (Debian package) on loopback for tests: launcher and a small REST client.

Shared by the adapter's Orthanc test and the end-to-end test so both start Orthanc the same
way: a generated JSON configuration in a temporary folder, free HTTP and DICOM ports, storage
in that folder, no remote access, no authentication, and ``TCP_NODELAY=1`` in its environment
(Debian's dcmtk-based Orthanc stalls ~48 ms per PDU without it). Tests skip when Orthanc is
not installed (``apt-get install orthanc``), see :data:`SKIP_REASON`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radflow.engine.ports import free_port, wait_for_port

ORTHANC = shutil.which("Orthanc") or (
    "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None
)
SKIP_REASON = "Orthanc is not installed (Debian package 'orthanc', /usr/sbin/Orthanc)"


@dataclass
class OrthancServer:
    """``start()`` runs Orthanc from ``folder``; ``modalities`` is its ``DicomModalities``."""

    folder: Path
    modalities: dict[str, list[Any]] = field(default_factory=dict)
    aet: str = "ORTHANC"
    http_port: int = 0
    dicom_port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.folder / "orthanc.log"

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def start(self, timeout: float = 30) -> OrthancServer:
        if ORTHANC is None:
            raise RuntimeError(SKIP_REASON)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.http_port = self.http_port or free_port()
        self.dicom_port = self.dicom_port or free_port()
        config = {
            "Name": "radflow-test",
            "StorageDirectory": str(self.folder / "db"),
            "IndexDirectory": str(self.folder / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "Plugins": [],
            "DicomModalities": self.modalities,
            "DicomAlwaysAllowStore": True,
            "DicomCheckCalledAet": False,
            "DicomCheckModalityHost": False,
            "DicomScuTimeout": 30,
        }
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        env = {**os.environ, "TCP_NODELAY": "1"}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [ORTHANC, str(path)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        if not (
            wait_for_port("127.0.0.1", self.http_port, timeout)
            and wait_for_port("127.0.0.1", self.dicom_port, timeout)
        ):
            self.stop()
            raise RuntimeError(
                f"Orthanc did not start listening; its log ends with:\n{self.log_tail()}"
            )
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- REST ----------------------------------------------------------------------------------

    def request(
        self, method: str, path: str, body: bytes | None = None, timeout: float = 120
    ) -> bytes:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", data=body, method=method
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.read()

    def json(self, method: str, path: str, body: Any = None) -> Any:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        return json.loads(self.request(method, path, data))

    def upload(self, files: Iterable[Path]) -> str:
        """POST every file to ``/instances``; returns the Orthanc ID of their (last) study."""
        study = ""
        for f in files:
            study = self.json("POST", "/instances", f.read_bytes())["ParentStudy"]
        return study

    def store_to(self, modality: str, resources: list[str]) -> dict[str, Any]:
        """Have Orthanc C-STORE ``resources`` to ``modality`` (synchronous REST job)."""
        return dict(
            self.json(
                "POST",
                f"/modalities/{modality}/store",
                {"Resources": resources, "Synchronous": True},
            )
        )

    def instances_of_modalities(
        self, study_id: str, modalities: set[str]
    ) -> dict[str, list[dict[str, Any]]]:
        """Instances of the study's series whose Modality is in ``modalities``, grouped by SOP
        Class UID, each with its simplified tags and Orthanc ``ID`` (cheap: skips image series)."""
        found: dict[str, list[dict[str, Any]]] = {}
        for series in self.json("GET", f"/studies/{study_id}/series"):
            if series.get("MainDicomTags", {}).get("Modality") not in modalities:
                continue
            for instance_id in series.get("Instances", []):
                tags = self.json("GET", f"/instances/{instance_id}/simplified-tags")
                found.setdefault(str(tags.get("SOPClassUID", "")), []).append(
                    {"ID": instance_id, **tags}
                )
        return found

    def wait_for_instances(
        self, study_id: str, modalities: set[str], sop_classes: set[str], timeout: float
    ) -> dict[str, list[dict[str, Any]]]:
        """Poll the study until it holds an instance of every class in ``sop_classes`` (or time runs
        out)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.instances_of_modalities(study_id, modalities)
            if sop_classes <= set(found) or time.monotonic() > deadline:
                return found
            time.sleep(1.0)
