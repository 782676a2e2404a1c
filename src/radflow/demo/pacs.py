"""A tiny local PACS for the demo: a pynetdicom Storage SCP that keeps what it receives."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from radflow.engine.ports import free_port
from radflow.imaging.dimse import NODELAY_HANDLERS


@dataclass
class Received:
    path: Path
    sop_class_uid: str
    study_instance_uid: str
    at: float


@dataclass
class LocalPacs:
    """``start()`` listens on 127.0.0.1; ``received`` fills as instances arrive."""

    folder: Path
    ae_title: str = "MYPACS"
    port: int = 0
    received: list[Received] = field(default_factory=list)
    _server: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        path = self.folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        with self._lock:
            self.received.append(
                Received(path, str(ds.SOPClassUID), str(ds.StudyInstanceUID), time.time())
            )
        return 0x0000

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        ae.maximum_pdu_size = 0
        self._server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store), *NODELAY_HANDLERS],
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()

    def wait_for(
        self, sop_classes: set[str], study_uid: str, timeout: float
    ) -> dict[str, Received]:
        """The first instance of each SOP class in ``sop_classes`` for the study, or what
        arrived."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                found = {
                    r.sop_class_uid: r for r in self.received if r.study_instance_uid == study_uid
                }
            if sop_classes <= set(found) or time.monotonic() > deadline:
                return {k: v for k, v in found.items() if k in sop_classes}
            time.sleep(0.2)


def read(path: Path) -> Any:
    return dcmread(path)
