"""``dicom._volume_header``: the pydicom-free header read of series -> volume, against pydicom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from radflow.demo.study import make_study
from radflow.imaging import dicom

SHAPE = (6, 40, 36)


@pytest.mark.parametrize("implicit", [False, True])
def test_quick_header_equals_pydicom_for_native_planes(tmp_path: Path, implicit: bool) -> None:
    study = make_study(
        tmp_path / "in",
        SHAPE,
        seed=21,
        oblique=True,
        rescale=(0.5, 3.0),
        decoys=False,
        other_series=False,
    )
    files = list(study.target.files)
    if implicit:
        for f in files:
            ds = pydicom.dcmread(f)
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
            ds.save_as(f, implicit_vr=True, little_endian=True, enforce_file_format=True)
    for f in files:
        data = f.read_bytes()
        quick = dicom._volume_header(data)
        assert quick is not None, "native single-plane files take the quick path"
        header, offset = quick
        full = pydicom.dcmread(f)
        assert data[offset : offset + 4] == b"\xe0\x7f\x10\x00"
        for keyword in dicom.VOLUME_KEYWORDS:
            assert header.get(keyword) == full.get(keyword), keyword
        assert str(header.file_meta.TransferSyntaxUID) == str(full.file_meta.TransferSyntaxUID)
    quick_volume = dicom.volume_from_bytes([f.read_bytes() for f in files])
    reference = dicom.series_to_volume([pydicom.dcmread(f) for f in files])
    np.testing.assert_array_equal(quick_volume.array, reference.array)
    assert quick_volume.plan == reference.plan == dicom.read_series_volume(files).plan


@pytest.mark.parametrize("kind", ["enhanced", "rle", "truncated"])
def test_anything_else_is_left_to_pydicom(tmp_path: Path, kind: str) -> None:
    study = make_study(
        tmp_path / "in",
        SHAPE,
        seed=22,
        decoys=False,
        other_series=False,
        enhanced=kind == "enhanced",
        compression="rle" if kind == "rle" else None,
    )
    data = study.target.files[0].read_bytes()
    if kind == "truncated":
        data = data[:400]  # ends inside the header
    assert dicom._volume_header(data) is None
    if kind != "truncated":
        volume = dicom.volume_from_bytes([f.read_bytes() for f in study.target.files])
        np.testing.assert_array_equal(volume.array, study.target_values)
