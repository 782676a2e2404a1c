"""Helpers for the export tests: DICOM files to send and a real pynetdicom storage SCP.

A uniquely named module (not conftest) so that ``from scu_peers import ...`` cannot collide
with another folder's conftest."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import RTStructureSetStorage, SegmentationStorage

from radflow.engine.ports import free_port

SEG = str(SegmentationStorage)
RTSTRUCT = str(RTStructureSetStorage)


def make_instance(
    path: Path, sop_class: str, nbytes: int = 4096, *, implicit: bool = False, seed: int = 0
) -> str:
    """A synthetic DICOM Part 10 file of ``sop_class`` with ``nbytes`` of pixel-like payload.

    Only transport matters to the SCU, so the body is a minimal dataset plus an OB payload.
    """
    uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SEG" if sop_class == SEG else "RTSTRUCT"
    ds.PatientID = "PHANTOM"
    payload = (
        np.random.default_rng(seed)
        .integers(0, 255, nbytes + (nbytes % 2), dtype=np.uint8)
        .tobytes()
    )
    ds.add_new(0x00091010, "OB", payload)  # private payload: any size, never decoded
    ds.add_new(0x00090010, "LO", "RADFLOW TEST")
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
    return uid


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset of a Part 10 file, without preamble and file meta."""
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


@dataclass
class PynetdicomSCP:
    """A real pynetdicom storage SCP on loopback that keeps what it receives in memory."""

    port: int = field(default_factory=free_port)
    ae_title: str = "TESTSCP"
    #: SOP Instance UIDs answered with this status instead of success
    reject: dict[str, int] = field(default_factory=dict)
    received: dict[str, bytes] = field(default_factory=dict)
    associations: int = 0
    server: object = None

    def _on_store(self, event: evt.Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        if uid in self.reject:
            return self.reject[uid]
        self.received[uid] = event.request.DataSet.getvalue()
        return 0x0000

    def _on_established(self, event: evt.Event) -> None:
        self.associations += 1

    def start(self) -> PynetdicomSCP:
        ae = AE(ae_title=self.ae_title)
        for uid in (SEG, RTSTRUCT):
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        ae.maximum_pdu_size = 131072
        self.server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[
                (evt.EVT_C_STORE, self._on_store),
                (evt.EVT_ESTABLISHED, self._on_established),
            ],
        )
        return self

    def start_later(self, delay: float) -> threading.Timer:
        timer = threading.Timer(delay, self.start)
        timer.start()
        return timer

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()  # type: ignore[attr-defined]


@dataclass
class StoreSCP:
    """dcmtk ``storescp`` writing what it receives, bit-preserving, into ``folder``."""

    folder: Path
    port: int
    ae_title: str = "STORESCP"
