"""A fast structural check of a received DICOM Part 10 file, without decoding it.

Why not ``pydicom.dcmread``: the hot path needs four UIDs and the certainty that the dataset is
complete (a truncated or garbage body must be refused *before* it is acknowledged). pydicom
skips over values it does not decode, so it cannot tell a truncated Pixel Data from a whole
one, and decoding everything costs more than the rest of the handler. This walker reads the
element headers (PS3.5 section 7.1: explicit/implicit VR, defined/undefined lengths,
sequences, encapsulated pixel data) and checks that every value fits inside the file.

Deflated transfer syntaxes are the exception: their body is a zlib stream, so their values are
read with pydicom and completeness is not checked.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from radflow.sdk.errors import InvalidInput

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1")

SOP_CLASS = 0x00080016
SOP_INSTANCE = 0x00080018
STUDY_INSTANCE = 0x0020000D
SERIES_INSTANCE = 0x0020000E
TRANSFER_SYNTAX = 0x00020010

_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_MAX_DEPTH = 32


class NotDicom(InvalidInput):
    """The file is not a complete DICOM Part 10 dataset; the message names the offset and rule."""

    code = "invalid_dicom"


@dataclass(frozen=True)
class Header:
    transfer_syntax: str
    values: dict[int, str]  # wanted top-level tag -> value as text (trailing NUL/space removed)
    size: int


class _Walker:
    def __init__(
        self, data: memoryview, implicit: bool, little: bool, wanted: frozenset[int]
    ) -> None:
        self.d = data
        self.implicit = implicit
        self.e = "<" if little else ">"
        self.wanted = wanted
        self.values: dict[int, str] = {}

    def _tag(self, pos: int) -> int:
        if pos + 4 > len(self.d):
            raise NotDicom(f"truncated: element header at byte {pos} runs past the end of the file")
        g, e = struct.unpack_from(self.e + "HH", self.d, pos)
        return (g << 16) | e

    def element(self, pos: int, depth: int, top: bool) -> int:
        """Check one element at ``pos``; returns the position after it."""
        tag = self._tag(pos)
        if self.implicit:
            if pos + 8 > len(self.d):
                raise NotDicom(
                    f"truncated: element ({tag >> 16:04X},{tag & 0xFFFF:04X}) header at byte {pos}"
                )
            (length,) = struct.unpack_from(self.e + "I", self.d, pos + 4)
            vr = b"SQ" if length == _UNDEFINED else b"??"
            pos += 8
        else:
            if pos + 8 > len(self.d):
                raise NotDicom(
                    f"truncated: element ({tag >> 16:04X},{tag & 0xFFFF:04X}) header at byte {pos}"
                )
            vr = bytes(self.d[pos + 4 : pos + 6])
            if vr in _LONG_VRS:
                if pos + 12 > len(self.d):
                    raise NotDicom(
                        f"truncated: element ({tag >> 16:04X},{tag & 0xFFFF:04X}) header at byte {pos}"
                    )
                (length,) = struct.unpack_from(self.e + "I", self.d, pos + 8)
                pos += 12
            elif vr.isalpha() and vr.isupper():
                (length,) = struct.unpack_from(self.e + "H", self.d, pos + 6)
                pos += 8
            else:
                raise NotDicom(
                    f"invalid VR at byte {pos + 4} for element ({tag >> 16:04X},{tag & 0xFFFF:04X})"
                )
        if length == _UNDEFINED:
            if depth > _MAX_DEPTH:
                raise NotDicom(f"sequences nested deeper than {_MAX_DEPTH} at byte {pos}")
            if vr == b"UN":  # PS3.5 6.2.2: UN of undefined length holds implicit VR LE items
                saved, self.implicit = self.implicit, True
                try:
                    return self._undefined(pos, depth, encapsulated=False)
                finally:
                    self.implicit = saved
            return self._undefined(pos, depth, encapsulated=(vr != b"SQ"))
        end = pos + length
        if end > len(self.d):
            raise NotDicom(
                f"truncated: element ({tag >> 16:04X},{tag & 0xFFFF:04X}) declares {length} bytes at byte {pos},"
                f" the file ends at {len(self.d)}"
            )
        if top and tag in self.wanted:
            self.values[tag] = (
                bytes(self.d[pos:end]).decode("ascii", "replace").rstrip("\x00 ").strip()
            )
        return end

    def _undefined(self, pos: int, depth: int, encapsulated: bool) -> int:
        """Items up to the sequence delimiter; items of undefined length hold elements."""
        while True:
            tag = self._tag(pos)
            if pos + 8 > len(self.d):
                raise NotDicom(f"truncated: item header at byte {pos}")
            (length,) = struct.unpack_from(self.e + "I", self.d, pos + 4)
            pos += 8
            if tag == _SEQ_END:
                return pos
            if tag != _ITEM:
                raise NotDicom(f"expected an item or sequence delimiter at byte {pos - 8}")
            if length == _UNDEFINED:
                if encapsulated:
                    raise NotDicom(f"encapsulated fragment of undefined length at byte {pos - 8}")
                while self._tag(pos) != _ITEM_END:
                    pos = self.element(pos, depth + 1, top=False)
                pos += 8
                if pos > len(self.d):
                    raise NotDicom("truncated: item delimiter runs past the end of the file")
            else:
                pos += length
                if pos > len(self.d):
                    raise NotDicom(
                        f"truncated: item of {length} bytes runs past the end of the file"
                    )


def inspect_bytes(data: bytes | memoryview, wanted: frozenset[int]) -> Header:
    """Check ``data`` (a Part 10 file) and return the ``wanted`` top-level values."""
    d = memoryview(data)
    if len(d) < 132 or bytes(d[128:132]) != b"DICM":
        raise NotDicom("not a DICOM Part 10 file: no 'DICM' prefix at byte 128")
    meta = _Walker(d, implicit=False, little=True, wanted=frozenset({TRANSFER_SYNTAX}))
    pos = 132
    while pos + 4 <= len(d) and struct.unpack_from("<H", d, pos)[0] == 0x0002:
        pos = meta.element(pos, 0, top=True)
    ts = meta.values.get(TRANSFER_SYNTAX, "")
    if not ts:
        raise NotDicom("file meta information has no (0002,0010) Transfer Syntax UID")
    if ts in DEFLATED:
        return _inspect_deflated(data, ts, wanted)
    walker = _Walker(
        d, implicit=(ts == IMPLICIT_VR_LE), little=(ts != EXPLICIT_VR_BE), wanted=wanted
    )
    while pos < len(d):
        pos = walker.element(pos, 0, top=True)
    return Header(transfer_syntax=ts, values=walker.values, size=len(d))


def _inspect_deflated(data: bytes | memoryview, ts: str, wanted: frozenset[int]) -> Header:
    import io

    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(bytes(data)), stop_before_pixels=True)
    except Exception as exc:
        raise NotDicom(f"deflated dataset cannot be read: {type(exc).__name__}") from None
    values = {}
    for tag in wanted:
        if tag in ds:
            values[tag] = str(ds[tag].value).rstrip("\x00 ").strip()
    return Header(transfer_syntax=ts, values=values, size=len(data))


def inspect_file(path: Path, wanted: frozenset[int]) -> Header:
    with open(path, "rb") as fh:
        return inspect_bytes(fh.read(), wanted)
