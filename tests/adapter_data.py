"""Synthetic DICOM studies for the adapter's tests and benchmark (no PHI: generated values).

``make_study`` writes Part 10 MR instances (a few series, tiny pixels by default) and returns
what a test needs to check the outcome: the study UID and every SOP Instance UID.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage, generate_uid

__all__ = ["Study", "make_instance", "make_study", "settled", "wait_settled"]


@dataclass
class Study:
    study_uid: str
    files: list[Path] = field(default_factory=list)
    sop_uids: list[str] = field(default_factory=list)
    series_uids: list[str] = field(default_factory=list)


def make_instance(
    path: Path,
    *,
    study_uid: str,
    series_uid: str,
    sop_uid: str | None = None,
    index: int = 0,
    size: int = 16,
    transfer_syntax: str = ExplicitVRLittleEndian,
    patient_id: str = "SYNTH-0001",
) -> str:
    """Write one MR instance at ``path``; returns its SOP Instance UID."""
    sop_uid = sop_uid or generate_uid()
    ds = Dataset()
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "MR"
    ds.PatientName = "Synthetic^Patient"
    ds.PatientID = patient_id
    ds.StudyDate = "20260101"
    ds.SeriesNumber = 1
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [0.0, 0.0, float(index)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [1.0, 1.0]
    ds.SliceThickness = 1.0
    ds.Rows = size
    ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    rng = np.random.default_rng(index)
    ds.PixelData = rng.integers(0, 4096, (size, size), dtype=np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(
        path,
        enforce_file_format=True,
        implicit_vr=transfer_syntax == ImplicitVRLittleEndian,
        little_endian=True,
    )
    return sop_uid


def make_study(
    folder: Path,
    *,
    series: int = 2,
    per_series: int = 3,
    size: int = 16,
    study_uid: str | None = None,
) -> Study:
    """``series`` x ``per_series`` MR instances of one study under ``folder``."""
    study = Study(study_uid=study_uid or generate_uid())
    n = 0
    for s in range(series):
        series_uid = generate_uid()
        study.series_uids.append(series_uid)
        for i in range(per_series):
            path = folder / f"s{s}_i{i}.dcm"
            study.sop_uids.append(
                make_instance(
                    path, study_uid=study.study_uid, series_uid=series_uid, index=n, size=size
                )
            )
            study.files.append(path)
            n += 1
    return study


def config_yaml(
    port: int, *, timeout: float = 0, reject_unknown: bool = False, extra_ae: str = ""
) -> str:
    return f"""
dicom:
  scp:
    port: {port}
    ae-titles:
      - ae-title: RADFLOW
        timeout: {timeout}
      - ae-title: BRAIN
        timeout: {timeout}
{extra_ae}
    max-associations: 8
    reject-unknown-sources: {str(reject_unknown).lower()}
    sources:
      - host-ip: 127.0.0.1
        ae-title: STORESCU
      - host-ip: 127.0.0.1
        ae-title: PYSCU
  scu:
    ae-title: RADFLOWSCU
    destinations:
      - name: MYPACS
        host-ip: 127.0.0.1
        port: 11113
        ae-title: PACS
pipeline-mappings:
  - name: seg
    clara-ae-title: RADFLOW
    pipeline-id: brain-seg
  - name: brain1
    clara-ae-title: BRAIN
    pipeline-id: brain-seg
  - name: brain2
    clara-ae-title: BRAIN
    pipeline-id: brain-report
"""


def wait_counter(adapter: Any, name: str, expected: int, timeout: float = 10.0) -> int:
    """The adapter's SCP counter ``name`` once it reaches ``expected`` (or its value at timeout).

    Receiver processes report their counters when an association ends, a moment after the
    peer saw the release or rejection.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = adapter.scp_counters().get(name, 0)
        if value >= expected or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def settled(status: dict[str, Any]) -> bool:
    """True when the adapter status (``Adapter.status()``, ``GET /health/status``) shows nothing
    in progress: no association open, no instance row left (uploaded-and-emitted rows are deleted
    with the emission, aborted ones when their leftovers are cleaned) and no event waiting in the
    outbox. An acknowledged C-STORE has its association committed as open, so once a sender has
    seen its acks the adapter is settled only after it fully processed that association: from
    then on no event can come without new input.
    """
    spool, outbox = status["spool"], status["outbox"]
    return spool["open_associations"] == 0 and spool["indexed"] == 0 and not outbox.get("pending")


def wait_settled(status: Callable[[], dict[str, Any]], timeout: float = 20.0) -> dict[str, Any]:
    """Poll ``status()`` until :func:`settled`; fail with the last status after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        now = status()
        if settled(now):
            return now
        if time.monotonic() > deadline:
            raise AssertionError(f"adapter not settled after {timeout} s: {now}")
        time.sleep(0.05)
