"""imaging/dicom_walk.py, the one DICOM walker: each edge case once, against pydicom where it can.

Three callers share the walk: the adapter's completeness check (``inspect_bytes``, whole files),
header-first staging (``pixel_data_offset``, prefixes) and fast volume headers
(``top_level_elements``). pydicom writes defined lengths only, so the undefined-length
structures (sequences, items, UN sequences, fragments, deep nesting) are encoded here by hand and
pydicom reads them back as the oracle.
"""

from __future__ import annotations

import io
import random
import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from adapter_data import make_instance
from radflow.imaging.dicom_walk import (
    MAX_DEPTH,
    PIXEL_DATA,
    SERIES_INSTANCE,
    SOP_INSTANCE,
    STUDY_INSTANCE,
    NotDicom,
    element_header,
    inspect_bytes,
    pixel_data_offset,
    top_level_elements,
)
from radflow.sdk.staging import NeedMoreBytes

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
WANTED = frozenset({SOP_INSTANCE, STUDY_INSTANCE, SERIES_INSTANCE, 0x00100020})
PIXEL_TAGS = (b"\xe0\x7f\x10\x00", b"\xe0\x7f\x08\x00", b"\xe0\x7f\x09\x00")
UNDEFINED = 0xFFFFFFFF

# --------------------------------------------------------------------------- encoding by hand


def _el(group: int, element: int, vr: bytes, value: bytes, implicit: bool = False) -> bytes:
    if implicit:
        return struct.pack("<HHI", group, element, len(value)) + value
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2sHI", group, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _delimited(group: int, element: int, vr: bytes, items: list[bytes], implicit: bool) -> bytes:
    """An undefined-length value whose items are of undefined length too."""
    if implicit:
        head = struct.pack("<HHI", group, element, UNDEFINED)
    else:
        head = struct.pack("<HH2sHI", group, element, vr, 0, UNDEFINED)
    item, item_end = struct.pack("<HHI", 0xFFFE, 0xE000, UNDEFINED), b"\xfe\xff\x0d\xe0\0\0\0\0"
    return head + b"".join(item + i + item_end for i in items) + b"\xfe\xff\xdd\xe0\0\0\0\0"


def _nested(depth: int, implicit: bool) -> bytes:
    inner = _el(0x0008, 0x0104, b"LO", b"deep", implicit)
    for _ in range(depth):
        content = _el(0x0008, 0x0100, b"SH", b"X ", implicit) + inner
        inner = _delimited(0x0040, 0xA168, b"SQ", [content], implicit)
    return inner


def _part10(body: bytes, syntax: str = ExplicitVRLittleEndian, pixels: bool = True) -> bytes:
    implicit = syntax == ImplicitVRLittleEndian
    uid = syntax.encode() + b"\0" * (len(syntax) % 2)
    meta = _el(0x0002, 0x0001, b"OB", b"\0\1") + _el(0x0002, 0x0010, b"UI", uid)
    meta = _el(0x0002, 0x0000, b"UL", struct.pack("<I", len(meta))) + meta
    data = _el(0x0008, 0x0018, b"UI", b"1.2.3.4\0", implicit) + body
    if pixels:
        data += _el(0x7FE0, 0x0010, b"OW", b"\0" * 8, implicit)
    return b"\0" * 128 + b"DICM" + meta + data


def _pydicom(syntax: str, **extra: object) -> bytes:
    """A small image written by pydicom (defined lengths), nested sequences included."""
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


def _pydicom_offset(data: bytes) -> int | None:
    buffer = io.BytesIO(data)
    pydicom.dcmread(buffer, stop_before_pixels=True)
    offset = buffer.tell()
    return offset if data[offset : offset + 4] in PIXEL_TAGS else None


def _elements(data: bytes) -> list[tuple[int, str | None, int, int]]:
    found = top_level_elements(data)
    assert found is not None
    return [(e.tag, e.vr, e.start, e.length) for e in found[1]]


# --------------------------------------------------------------------------- pydicom's files

#: pydicom test files the adapter refuses, and the rule each breaks
REFUSED = {
    "ExplVR_BigEndNoMeta.dcm": "no 'DICM' prefix",
    "ExplVR_LitEndNoMeta.dcm": "no 'DICM' prefix",
    "no_meta.dcm": "no 'DICM' prefix",
    "rtstruct.dcm": "no 'DICM' prefix",
    "meta_missing_tsyntax.dcm": r"no \(0002,0010\) Transfer Syntax UID",
    "MR_truncated.dcm": r"truncated: element \(7FE0,0010\) declares 8192 bytes",
    "rtplan_truncated.dcm": r"truncated: element \(300A,00B0\) declares",
    "SC_rgb_jpeg.dcm": r"invalid VR at byte 360",  # implicit VR data labelled explicit
}


def _test_files() -> list[Path]:
    files = sorted(p for p in TEST_FILES.rglob("*.dcm") if p.is_file())
    assert len(files) > 50, f"pydicom's bundled test files are missing from {TEST_FILES}"
    return files


def test_agrees_with_pydicom_on_its_test_files() -> None:
    """Where the header ends and where each element's value is, as pydicom's reader sees it."""
    walked = 0
    for path in _test_files():
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
        raw = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)._dict
        *elements, pixels = _elements(data)
        assert pixels[0] >> 16 == 0x7FE0 and pixels[2:] == (offset, -1), path.name
        assert [tag for tag, *_ in elements] == list(raw), path.name
        for tag, _vr, start, length in elements:
            elem = raw[tag]  # still raw, or a sequence pydicom read eagerly
            if isinstance(elem, RawDataElement):
                assert (start, length) == (elem.value_tell, elem.length), (path.name, hex(tag))
            else:
                assert start == elem.file_tell, (path.name, hex(tag))
        walked += 1
    assert walked >= 50


def test_adapter_verdicts_on_pydicoms_test_files() -> None:
    """Every complete file is accepted with pydicom's UIDs; the others name the rule."""
    for path in _test_files():
        data = path.read_bytes()
        if path.name in REFUSED:
            with pytest.raises(NotDicom, match=REFUSED[path.name]):
                inspect_bytes(data, WANTED)
            continue
        header = inspect_bytes(data, WANTED)
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        expected = str(ds.get("SOPInstanceUID", "")).rstrip("\0 ")
        assert header.values.get(SOP_INSTANCE, "") == expected, path.name
        assert header.transfer_syntax == str(ds.file_meta.TransferSyntaxUID), path.name


# --------------------------------------------------------------------------- syntaxes


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_reads_uids_and_refuses_every_truncation(tmp_path: Path, ts: str) -> None:
    study, series = generate_uid(), generate_uid()
    sop = make_instance(
        tmp_path / "a.dcm", study_uid=study, series_uid=series, size=32, transfer_syntax=ts
    )
    blob = (tmp_path / "a.dcm").read_bytes()
    h = inspect_bytes(blob, WANTED)
    assert (h.values[STUDY_INSTANCE], h.values[SOP_INSTANCE], h.transfer_syntax) == (
        study,
        sop,
        ts,
    )
    assert h.size == len(blob)
    for cut in (1, 7, 500, len(blob) - 300):
        with pytest.raises(NotDicom, match="truncated|invalid VR|header"):
            inspect_bytes(blob[:-cut], WANTED)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_nested_sequences_in_both_little_endian_syntaxes(syntax: str) -> None:
    data = _pydicom(syntax)
    header = 12 if syntax == ExplicitVRLittleEndian else 8
    offset = pixel_data_offset(data)
    assert offset == _pydicom_offset(data) == len(data) - 8 - header
    assert pixel_data_offset(data[: offset + header]) == offset  # its own header is enough
    with pytest.raises(NeedMoreBytes):  # ... and needed, so that parsers stop cleanly
        pixel_data_offset(data[: offset + header - 1])


def test_big_endian_is_walked_by_the_adapter_and_refused_by_a_certain_walk(
    tmp_path: Path,
) -> None:
    from pydicom import dcmread
    from pydicom.filewriter import dcmwrite

    study, series = generate_uid(), generate_uid()
    make_instance(tmp_path / "a.dcm", study_uid=study, series_uid=series)
    ds = dcmread(tmp_path / "a.dcm")
    del ds.PixelData  # byte swapping of OW is irrelevant to the walk
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    ds.preamble = b"\0" * 128
    dcmwrite(tmp_path / "b.dcm", ds, implicit_vr=False, little_endian=False, force_encoding=True)
    data = (tmp_path / "b.dcm").read_bytes()
    assert inspect_bytes(data, WANTED).values[SERIES_INSTANCE] == series
    assert pixel_data_offset(data) is None
    assert top_level_elements(data) is None


def test_deflated_is_read_by_pydicom_for_the_adapter_and_refused_by_a_certain_walk() -> None:
    data = _pydicom(DeflatedExplicitVRLittleEndian)
    header = inspect_bytes(data, WANTED)
    assert header.values[SOP_INSTANCE] == "1.2.3.4"
    assert header.transfer_syntax == DeflatedExplicitVRLittleEndian
    assert pixel_data_offset(data) is None
    with pytest.raises(NotDicom, match="deflated dataset cannot be read"):
        inspect_bytes(data[:-40] + b"\xff" * 40, WANTED)


def test_deflated_image_frame_compression_is_an_ordinary_data_set() -> None:
    """1.2.840.10008.1.2.8.1 deflates frames, not the data set: it is walked and checked."""
    fragment = struct.pack("<HHI", 0xFFFE, 0xE000, 4) + b"abcd"
    offsets = struct.pack("<HHI", 0xFFFE, 0xE000, 0)
    pixels = _delimited(0x7FE0, 0x0010, b"OB", [], False)[:-8] + offsets + fragment
    data = _part10(pixels + b"\xfe\xff\xdd\xe0\0\0\0\0", "1.2.840.10008.1.2.8.1", pixels=False)
    assert inspect_bytes(data, WANTED).transfer_syntax == "1.2.840.10008.1.2.8.1"
    assert pixel_data_offset(data) == data.index(pixels)
    with pytest.raises(NotDicom, match="truncated: item of 4 bytes runs past the end"):
        inspect_bytes(data[:-10], WANTED)


# --------------------------------------------------------------------------- structure


@pytest.mark.parametrize("implicit", [False, True])
def test_undefined_length_sequences_and_items(implicit: bool) -> None:
    syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    sequence = _nested(3, implicit)
    data = _part10(sequence + _el(0x0010, 0x0020, b"LO", b"PID1", implicit), syntax)
    offset = pixel_data_offset(data)
    assert offset == _pydicom_offset(data) == len(data) - 8 - (8 if implicit else 12)
    values = inspect_bytes(data, WANTED | {0x0040A168}).values
    assert values == {SOP_INSTANCE: "1.2.3.4", 0x00100020: "PID1"}  # no text for a sequence
    (_, _, start, length) = _elements(data)[1]
    assert (start, length) == (
        data.index(sequence) + (8 if implicit else 12),
        len(sequence) - (8 if implicit else 12),
    )
    seq_start = data.index(sequence)
    for cut in range(seq_start + 1, seq_start + len(sequence)):  # every byte of them counts
        with pytest.raises(NotDicom, match="truncated"):
            inspect_bytes(data[:cut], WANTED)
        with pytest.raises(NeedMoreBytes):
            pixel_data_offset(data[:cut])


def test_un_of_undefined_length_holds_implicit_vr_items() -> None:
    """PS3.5 6.2.2: in an explicit VR data set, UN of undefined length is an implicit VR SQ."""
    item = _el(0x0008, 0x0100, b"SH", b"X ", implicit=True)
    data = _part10(_delimited(0x0040, 0xA168, b"UN", [item], implicit=False))
    assert pixel_data_offset(data) == _pydicom_offset(data) == len(data) - 20
    inspect_bytes(data, WANTED)


def test_nesting_deeper_than_the_bound_is_refused() -> None:
    ok, deep = _part10(_nested(MAX_DEPTH + 1, False)), _part10(_nested(MAX_DEPTH + 2, False))
    assert pixel_data_offset(ok) == _pydicom_offset(ok)
    inspect_bytes(ok, WANTED)
    assert pixel_data_offset(deep) is None
    with pytest.raises(NotDicom, match=f"sequences nested deeper than {MAX_DEPTH}"):
        inspect_bytes(deep, WANTED)


def test_fragments_outside_the_pixel_data() -> None:
    """Undefined length on a non-sequence value: the adapter walks its fragments (A.4); pydicom
    finds its end by searching for the delimiter, so a certain walk does not guess."""
    fragment = struct.pack("<HHI", 0xFFFE, 0xE000, 4) + b"abcd"
    value = _delimited(0x0009, 0x1010, b"OB", [], False)[:-8] + fragment + b"\xfe\xff\xdd\xe0"
    data = _part10(value + b"\0\0\0\0")
    inspect_bytes(data, WANTED)
    assert pixel_data_offset(data) is None
    unbounded = _part10(_delimited(0x0009, 0x1010, b"OB", [b""], False))
    with pytest.raises(NotDicom, match="encapsulated fragment of undefined length at byte"):
        inspect_bytes(unbounded, WANTED)


def test_what_a_certain_walk_cannot_read_is_none_not_a_guess() -> None:
    data = _pydicom(ExplicitVRLittleEndian)
    assert pixel_data_offset(b"\0" * 128 + b"NOPE" + data[132:]) is None  # no DICM preamble
    assert pixel_data_offset(_part10(b"", syntax="")) is None  # no transfer syntax
    stray = struct.pack("<HHI", 0xFFFE, 0xE000, 0)
    assert pixel_data_offset(_part10(stray)) is None  # an item tag outside a sequence
    in_item = _delimited(0x0040, 0xA168, b"SQ", [stray], implicit=True)
    assert pixel_data_offset(_part10(in_item, ImplicitVRLittleEndian)) is None
    with pytest.raises(NeedMoreBytes):
        pixel_data_offset(data[:100])
    found = top_level_elements(_part10(stray))
    assert found is not None
    with pytest.raises(ValueError, match="an item tag outside a sequence at byte"):
        list(found[1])


def test_a_file_without_pixel_data_asks_for_more_until_the_end() -> None:
    data = _part10(_nested(2, False), pixels=False)
    for cut in (len(data), len(data) - 1, 200):
        with pytest.raises(NeedMoreBytes):
            pixel_data_offset(data[:cut])
    assert inspect_bytes(data, WANTED).values[SOP_INSTANCE] == "1.2.3.4"


def test_garbage_and_missing_prefix() -> None:
    garbage = random.Random(9).randbytes(2000)
    with pytest.raises(NotDicom, match="no 'DICM' prefix at byte 128"):
        inspect_bytes(garbage, WANTED)
    with pytest.raises(NotDicom, match=r"no \(0002,0010\) Transfer Syntax UID"):
        inspect_bytes(b"\0" * 128 + b"DICM" + garbage, WANTED)
    data = _pydicom(ExplicitVRLittleEndian)
    body = data.index(b"\x08\x00\x18\x00")  # the first data set element
    with pytest.raises(NotDicom, match=f"invalid VR at byte {body + 4}"):
        inspect_bytes(data[:body] + b"\x08\x00\x18\x00\x01\x02" + data[body + 6 :], WANTED)


def test_element_header_for_readers_that_seek() -> None:
    explicit = _el(0x7FE0, 0x0010, b"OW", b"\0" * 8)
    implicit = _el(0x7FE0, 0x0010, b"", b"\0" * 8, implicit=True)
    assert element_header(explicit, implicit=False) == (PIXEL_DATA, 12, 8)
    assert element_header(implicit, implicit=True) == (PIXEL_DATA, 8, 8)
    with pytest.raises(NeedMoreBytes):
        element_header(explicit[:10], implicit=False)
    with pytest.raises(ValueError, match="invalid VR at byte 4"):
        element_header(b"\xe0\x7f\x10\x00ow\0\0\0\0\0\0", implicit=False)
