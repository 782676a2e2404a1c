"""The structural DICOM check refuses truncated and garbage files (pure, files in tmp_path)."""

from __future__ import annotations

import os

import pytest
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from adapter_data import make_instance
from radflow.adapter.dicomfile import (
    SERIES_INSTANCE,
    SOP_INSTANCE,
    STUDY_INSTANCE,
    NotDicom,
    inspect_bytes,
)

WANTED = frozenset({SOP_INSTANCE, STUDY_INSTANCE, SERIES_INSTANCE, 0x00100020})


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_reads_uids_and_detects_truncation(tmp_path, ts):
    study, series = generate_uid(), generate_uid()
    sop = make_instance(
        tmp_path / "a.dcm", study_uid=study, series_uid=series, size=32, transfer_syntax=ts
    )
    blob = (tmp_path / "a.dcm").read_bytes()
    h = inspect_bytes(blob, WANTED)
    assert (
        h.values[STUDY_INSTANCE] == study
        and h.values[SOP_INSTANCE] == sop
        and h.transfer_syntax == ts
    )
    for cut in (1, 7, 500, len(blob) - 300):
        with pytest.raises(NotDicom, match="truncated|invalid VR|header"):
            inspect_bytes(blob[:-cut], WANTED)


def test_garbage_and_missing_prefix(tmp_path):
    with pytest.raises(NotDicom, match="DICM"):
        inspect_bytes(os.urandom(1000), WANTED)
    with pytest.raises(NotDicom):
        inspect_bytes(b"\0" * 128 + b"DICM" + os.urandom(2000), WANTED)


def test_big_endian_is_walked(tmp_path):
    from pydicom import dcmread
    from pydicom.filewriter import dcmwrite

    study, series = generate_uid(), generate_uid()
    make_instance(tmp_path / "a.dcm", study_uid=study, series_uid=series)
    ds = dcmread(tmp_path / "a.dcm")
    del ds.PixelData  # byte swapping of OW is irrelevant to the walk
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    ds.preamble = b"\0" * 128
    dcmwrite(tmp_path / "b.dcm", ds, implicit_vr=False, little_endian=False, force_encoding=True)
    assert (
        inspect_bytes((tmp_path / "b.dcm").read_bytes(), WANTED).values[SERIES_INSTANCE] == series
    )
