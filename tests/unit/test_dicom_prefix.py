"""shared/dicom_prefix.py: where a header ends, checked against pydicom on its own test files."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from radflow.imaging.dicom_prefix import pixel_data_offset
from radflow.sdk.staging import NeedMoreBytes

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _pydicom_offset(data: bytes) -> int | None:
    buffer = io.BytesIO(data)
    pydicom.dcmread(buffer, stop_before_pixels=True)
    offset = buffer.tell()
    return (
        offset
        if data[offset : offset + 4]
        in (b"\xe0\x7f\x10\x00", b"\xe0\x7f\x08\x00", b"\xe0\x7f\x09\x00")
        else None
    )


def _files() -> list[Path]:
    if not TEST_FILES.is_dir():
        return []
    return sorted(p for p in TEST_FILES.rglob("*.dcm") if p.is_file())


@pytest.mark.skipif(not _files(), reason="pydicom's bundled test files are not installed")
def test_agrees_with_pydicom_on_every_walkable_test_file() -> None:
    walked = 0
    for path in _files():
        data = path.read_bytes()
        try:
            offset = pixel_data_offset(data)
        except NeedMoreBytes:
            continue  # no pixel data in the whole file
        if offset is None:
            continue  # not walkable with certainty: the caller takes the whole file
        assert offset == _pydicom_offset(data), path.name
        for cut in (offset, offset - 1, 140):  # any shorter prefix asks for more, never guesses
            with pytest.raises(NeedMoreBytes):
                pixel_data_offset(data[:cut])
        walked += 1
    assert walked >= 50


def _file(syntax: str, **extra: object) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.SOPInstanceUID = "1.2.3.4"
    item = Dataset()
    item.CodeValue = "X"
    inner = Dataset()
    inner.CodeMeaning = "deep"
    item.ConceptCodeSequence = Sequence([inner])
    ds.ProcedureCodeSequence = Sequence([item, item])
    for key, value in extra.items():
        setattr(ds, key, value)
    ds.Rows, ds.Columns, ds.BitsAllocated = 2, 2, 16
    ds.PixelData = b"\0" * 8
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_nested_sequences_in_both_little_endian_syntaxes(syntax: str) -> None:
    data = _file(syntax)
    assert (
        pixel_data_offset(data)
        == _pydicom_offset(data)
        == len(data) - 8 - (12 if syntax == ExplicitVRLittleEndian else 8)
    )


def test_what_it_cannot_walk_is_none_not_a_guess() -> None:
    data = _file(ExplicitVRLittleEndian)
    assert pixel_data_offset(b"\0" * 128 + b"NOPE" + data[132:]) is None  # no DICM preamble
    assert pixel_data_offset(_file(DeflatedExplicitVRLittleEndian)) is None  # a compressed stream
    with pytest.raises(NeedMoreBytes):
        pixel_data_offset(data[:100])
