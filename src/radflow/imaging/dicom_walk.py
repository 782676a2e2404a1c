"""The one walker of DICOM Part 10 bytes: element headers, lengths and nesting, never values.

Three callers need the structure of a Part 10 file without decoding it, and all three are hot:

* the adapter, before it acknowledges a C-STORE (:func:`inspect_bytes`, :func:`inspect_file`):
  is the data set *complete* (every value fits inside the file; a truncated or garbage body is
  refused before it is acked), and what are its four UIDs and its grouping tag. pydicom skips
  values it does not decode, so it cannot tell a truncated Pixel Data from a whole one, and
  decoding everything costs more than the rest of the handler;
* header-first staging (:func:`pixel_data_offset`, the ``sdk.staging.HeaderEnd`` contract):
  does a prefix of an object already hold the whole header;
* fast volume headers (:func:`top_level_elements`, used by ``imaging.dicom``): where are the
  top-level elements before the pixel data.

Keeping the walk in one place means a DICOM edge case is fixed once. The walk follows PS3.5 7.1
(explicit and implicit VR, 2- and 4-byte lengths, defined and undefined lengths), 7.5 (sequences,
items and their delimiters; UN of undefined length holds implicit VR items, 6.2.2) and A.4
(encapsulated pixel data: items of defined length up to the sequence delimiter), after the file
meta group (always explicit VR little endian, PS3.10 7.1).

Two modes share the walk and differ only where their callers' needs differ:

* *complete* (the adapter): the bytes are the whole file; anything that does not fit is
  :class:`NotDicom`, naming the byte offset and the rule. Explicit VR big endian is walked;
  deflated data sets (a zlib stream) are read with pydicom and their completeness is not checked.
* *certain* (staging and volume headers): the bytes may be a prefix; running out is
  :class:`~radflow.sdk.staging.NeedMoreBytes`, and anything pydicom might read differently from
  this walk (no ``DICM`` or no transfer syntax, deflated or big-endian data sets, an undefined
  length on a value that is not a sequence, an item tag outside a sequence or inside an item,
  sequences nested deeper than :data:`MAX_DEPTH`) is "not walkable": the caller reads the whole
  object with pydicom.

Kept free of pydicom (imported only for deflated data sets) and numpy, so the adapter's receiver
processes load it cheaply and its loops stay plain ``struct`` reads.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from radflow.sdk.errors import InvalidInput
from radflow.sdk.staging import NeedMoreBytes

# --------------------------------------------------------------------------- tables

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
#: data sets stored as a zlib stream (PS3.5 A.5; pydicom's ``UID.is_deflated``): the adapter
#: reads them with pydicom (completeness unchecked). Deflated Image Frame Compression
#: (1.2.840.10008.1.2.8.1) compresses frames only; its data set is walked like any other.
DEFLATED = frozenset({"1.2.840.10008.1.2.1.99"})
#: data sets a walk in *certain* mode refuses: deflated and big endian (retired)
_NOT_CERTAIN = DEFLATED | {EXPLICIT_VR_BE}

TRANSFER_SYNTAX = 0x00020010
SOP_CLASS = 0x00080016
SOP_INSTANCE = 0x00080018
STUDY_INSTANCE = 0x0020000D
SERIES_INSTANCE = 0x0020000E
PIXEL_DATA = 0x7FE00010
#: the pixel data elements start at Float Pixel Data (7FE0,0008); Double Float (0009) and
#: Pixel Data (0010) follow. A walk in *certain* mode stops at the first of group 7FE0 >= 0008.
_PIXEL_GROUP, _FIRST_PIXEL_ELEMENT = 0x7FE0, 0x0008

#: explicit-VR value representations whose length is a 4-byte field (PS3.5 7.1.2)
LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
UNDEFINED = 0xFFFFFFFF
_DELIMITER_GROUP = 0xFFFE
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
#: undefined-length sequences nested deeper than this are refused (a bound on recursion)
MAX_DEPTH = 32

_PREAMBLE = 128
_DICM = b"DICM"
_META_START = _PREAMBLE + 4

_STRUCTS = {
    order: (
        struct.Struct(order + "HH"),  # tag
        struct.Struct(order + "HHI"),  # tag + 4-byte length (implicit VR, items)
        struct.Struct(order + "HH2sH"),  # tag + VR + 2-byte length (explicit VR)
        struct.Struct(order + "I"),  # the 4-byte length of a long explicit VR
    )
    for order in "<>"
}
_U16 = struct.Struct("<H")


class NotDicom(InvalidInput):
    """The file is not a complete DICOM Part 10 dataset; the message names the offset and rule."""

    code = "invalid_dicom"


class _Truncated(NeedMoreBytes):
    """The bytes end inside an element (a prefix: fetch more; a whole file: truncated)."""


class _Unwalkable(ValueError):
    """A rule of PS3.5 is broken, or (certain mode) the bytes are not walkable with certainty."""


@dataclass(frozen=True)
class Header:
    """What the adapter needs from a received file (:func:`inspect_bytes`)."""

    transfer_syntax: str
    values: dict[int, str]  # wanted top-level tag -> value as text (trailing NUL/space removed)
    size: int


class Element(NamedTuple):
    """One top-level data element: tag, VR (``None`` in implicit VR) and where its value is."""

    tag: int
    vr: str | None
    start: int
    length: int


def _name(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _text(value: bytes | memoryview) -> str:
    """A short text value as the adapter stores it: ASCII, trailing NUL/space padding removed."""
    return bytes(value).decode("ascii", "replace").rstrip("\x00 ").strip()


# --------------------------------------------------------------------------- the walk


class _Walker:
    """Element headers and the extent of values, nested sequences included, over ``data``."""

    __slots__ = ("d", "n", "implicit", "certain", "_tag", "_tag_len", "_explicit", "_long")

    def __init__(self, data: bytes | memoryview, *, implicit: bool, little: bool, certain: bool):
        self.d = data
        self.n = len(data)
        self.implicit = implicit
        self.certain = certain
        self._tag, self._tag_len, self._explicit, self._long = _STRUCTS["<" if little else ">"]

    def tag(self, pos: int) -> int:
        if pos + 4 > self.n:
            raise _Truncated(
                f"truncated: element header at byte {pos} runs past the end of the file"
            )
        group, element = self._tag.unpack_from(self.d, pos)
        return (group << 16) | element

    def header(self, pos: int) -> tuple[int, bytes | None, int, int]:
        """(tag, VR or None in implicit VR, value offset, value length) of the element at pos."""
        if pos + 8 > self.n:
            raise _Truncated(f"truncated: element {_name(self.tag(pos))} header at byte {pos}")
        if self.implicit:
            group, element, length = self._tag_len.unpack_from(self.d, pos)
            return (group << 16) | element, None, pos + 8, length
        group, element, vr, length = self._explicit.unpack_from(self.d, pos)
        if vr in LONG_VRS:
            if pos + 12 > self.n:
                raise _Truncated(
                    f"truncated: element {_name((group << 16) | element)} header at byte {pos}"
                )
            return (group << 16) | element, vr, pos + 12, self._long.unpack_from(self.d, pos + 8)[0]
        if not (vr.isalpha() and vr.isupper()):
            raise _Unwalkable(
                f"invalid VR at byte {pos + 4} for element {_name((group << 16) | element)}"
            )
        return (group << 16) | element, vr, pos + 8, length

    def end(self, tag: int, vr: bytes | None, start: int, length: int, depth: int) -> int:
        """The offset just past an element whose header :meth:`header` read."""
        if length != UNDEFINED:
            end = start + length
            if end > self.n:
                raise _Truncated(
                    f"truncated: element {_name(tag)} declares {length} bytes at byte {start},"
                    f" the file ends at {self.n}"
                )
            return end
        if depth > MAX_DEPTH:
            raise _Unwalkable(f"sequences nested deeper than {MAX_DEPTH} at byte {start}")
        if vr is None or vr == b"SQ":
            return self._items(start, depth, encapsulated=False)
        if vr == b"UN":  # PS3.5 6.2.2: UN of undefined length holds implicit VR LE items
            saved, self.implicit = self.implicit, True
            try:
                return self._items(start, depth, encapsulated=False)
            finally:
                self.implicit = saved
        if self.certain:  # pydicom finds the end by searching for the delimiter: may differ
            raise _Unwalkable(f"undefined length on a {vr!r} value at byte {start}")
        return self._items(start, depth, encapsulated=True)  # encapsulated fragments (A.4)

    def skip(self, pos: int, depth: int) -> int:
        """The offset just past the element at ``pos``."""
        tag, vr, start, length = self.header(pos)
        return self.end(tag, vr, start, length, depth)

    def _items(self, pos: int, depth: int, encapsulated: bool) -> int:
        """Items up to the sequence delimiter; items of undefined length hold elements."""
        n = self.n
        while True:
            if pos + 8 > n:
                self.tag(pos)
                raise _Truncated(f"truncated: item header at byte {pos}")
            group, element, length = self._tag_len.unpack_from(self.d, pos)
            tag = (group << 16) | element
            pos += 8
            if tag == SEQUENCE_END:
                return pos
            if tag != ITEM:
                raise _Unwalkable(f"expected an item or sequence delimiter at byte {pos - 8}")
            if length != UNDEFINED:
                pos += length
                if pos > n:
                    raise _Truncated(
                        f"truncated: item of {length} bytes runs past the end of the file"
                    )
                continue
            if encapsulated:
                raise _Unwalkable(f"encapsulated fragment of undefined length at byte {pos - 8}")
            while (tag := self.tag(pos)) != ITEM_END:
                if self.certain and tag >> 16 == _DELIMITER_GROUP:
                    raise _Unwalkable(f"item tag {_name(tag)} inside an item at byte {pos}")
                pos = self.skip(pos, depth + 1)
            pos += 8
            if pos > n:
                raise _Truncated("truncated: item delimiter runs past the end of the file")

    def top_level(self, pos: int) -> Iterator[tuple[int, bytes | None, int, int, int]]:
        """(tag, VR, value offset, value length, end) of each top-level element from ``pos``.

        ``length`` is as encoded (:data:`UNDEFINED` for a delimited sequence), ``end`` the
        offset just past the element. A whole file ends at its last byte; in certain mode the
        walk stops at the pixel data element (yielded with ``end`` -1 once its own header is
        there) and running out of bytes before it raises :class:`NeedMoreBytes`.
        """
        n, d, certain = self.n, self.d, self.certain
        while True:
            if not certain:
                if pos >= n:
                    return
            else:
                if pos + 8 > n:
                    raise _Truncated(f"truncated: no pixel data element before byte {n}")
                group, element = self._tag.unpack_from(d, pos)
                if group == _PIXEL_GROUP and element >= _FIRST_PIXEL_ELEMENT:
                    if pos + (8 if self.implicit else 12) > n:  # so parsers stop cleanly
                        raise _Truncated(f"truncated: pixel data header at byte {pos}")
                    yield (group << 16) | element, None, pos, -1, -1
                    return
                if group == _DELIMITER_GROUP:
                    raise _Unwalkable(f"an item tag outside a sequence at byte {pos}")
            tag, vr, start, length = self.header(pos)
            end = self.end(tag, vr, start, length, 0)
            yield tag, vr, start, length, end
            pos = end


def _file_meta(data: bytes | memoryview, certain: bool) -> tuple[int, str]:
    """Past the preamble and the file meta group: (offset of the data set, transfer syntax)."""
    if len(data) < _META_START:
        if certain:
            raise _Truncated("truncated: shorter than the preamble")
        raise _Unwalkable("not a DICOM Part 10 file: no 'DICM' prefix at byte 128")
    if bytes(data[_PREAMBLE:_META_START]) != _DICM:
        raise _Unwalkable("not a DICOM Part 10 file: no 'DICM' prefix at byte 128")
    meta = _Walker(data, implicit=False, little=True, certain=certain)
    pos, syntax, n = _META_START, "", len(data)
    while True:
        if pos + (8 if certain else 4) > n:
            if certain:
                raise _Truncated(f"truncated: file meta ends at byte {n}")
            break
        if _U16.unpack_from(data, pos)[0] != 0x0002:
            break
        tag, vr, start, length = meta.header(pos)
        if length == UNDEFINED and certain:
            raise _Unwalkable(f"file meta element {_name(tag)} of undefined length")
        end = meta.end(tag, vr, start, length, 0)
        if tag == TRANSFER_SYNTAX and length != UNDEFINED:
            syntax = _text(data[start:end])
        pos = end
    if not syntax:
        raise _Unwalkable("file meta information has no (0002,0010) Transfer Syntax UID")
    return pos, syntax


# --------------------------------------------------------------------------- the adapter


def inspect_bytes(data: bytes | memoryview, wanted: frozenset[int]) -> Header:
    """Check that ``data`` is a complete Part 10 file; return its ``wanted`` top-level values.

    Raises :class:`NotDicom` naming the byte offset and the rule broken.
    """
    try:
        pos, syntax = _file_meta(data, certain=False)
        if syntax in DEFLATED:
            return _inspect_deflated(data, syntax, wanted)
        walker = _Walker(
            data,
            implicit=syntax == IMPLICIT_VR_LE,
            little=syntax != EXPLICIT_VR_BE,
            certain=False,
        )
        values: dict[int, str] = {}
        for tag, _vr, start, length, end in walker.top_level(pos):
            if tag in wanted and length != UNDEFINED:
                values[tag] = _text(data[start:end])
    except (_Truncated, _Unwalkable) as exc:
        raise NotDicom(str(exc)) from None
    return Header(transfer_syntax=syntax, values=values, size=len(data))


def _inspect_deflated(data: bytes | memoryview, syntax: str, wanted: frozenset[int]) -> Header:
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
    return Header(transfer_syntax=syntax, values=values, size=len(data))


def inspect_file(path: Path, wanted: frozenset[int]) -> Header:
    """:func:`inspect_bytes` of the file at ``path`` (read whole: completeness is the point)."""
    with open(path, "rb") as fh:
        return inspect_bytes(fh.read(), wanted)


# --------------------------------------------------------------------------- staging, volumes


def _certain_walker(data: bytes) -> tuple[_Walker, int, str]:
    pos, syntax = _file_meta(data, certain=True)
    if syntax in _NOT_CERTAIN:
        raise _Unwalkable(f"transfer syntax {syntax} is not walked with certainty")
    walker = _Walker(data, implicit=syntax == IMPLICIT_VR_LE, little=True, certain=True)
    return walker, pos, syntax


def pixel_data_offset(prefix: bytes) -> int | None:
    """Offset of the top-level pixel data element in a Part 10 file starting with ``prefix``.

    Returns the offset when the prefix holds the whole header and the pixel data element's own
    tag, VR and length (so a header parser stops cleanly there). Returns ``None`` when the bytes
    cannot be walked with certainty; the caller must then use the whole file. Raises
    :class:`NeedMoreBytes` when the prefix ends first: a file without pixel data (an SR, say)
    raises it until the prefix is the whole file.
    """
    try:
        walker, pos, _syntax = _certain_walker(prefix)
        for _tag, _vr, start, _length, end in walker.top_level(pos):
            if end < 0:
                return start
    except _Unwalkable:
        return None
    raise AssertionError("a certain walk ends at the pixel data or raises")  # pragma: no cover


def top_level_elements(data: bytes) -> tuple[str, Iterator[Element]] | None:
    """The transfer syntax and the top-level elements before the pixel data, or ``None``.

    For callers that read a few attributes of many files (volume assembly): each element's
    value is located, never decoded. Sequences are skipped as a whole (``length`` = their
    encoded length). The last element yielded is the pixel data element when the data reaches
    it, with ``start`` = the offset of its tag and ``length`` = -1. ``None`` when the file meta
    cannot be read with certainty; the iterator raises ``ValueError`` for a data set it cannot
    walk (as :func:`pixel_data_offset` answers ``None``) and :class:`NeedMoreBytes` if the data
    ends before the pixel data element.
    """
    try:
        walker, pos, syntax = _certain_walker(data)
    except (_Unwalkable, _Truncated):
        return None

    def elements() -> Iterator[Element]:
        for tag, vr, start, _length, end in walker.top_level(pos):
            text = vr.decode("ascii") if vr is not None else None
            yield Element(tag, text, start, end - start if end >= 0 else -1)

    return syntax, elements()


def element_header(data: bytes, pos: int = 0, *, implicit: bool) -> tuple[int, int, int]:
    """(tag, value offset, value length) of the little-endian element whose tag is at ``pos``.

    For readers that seek straight to an element they located earlier (the pixel data of a
    native plane). Raises :class:`NeedMoreBytes` when ``data`` ends inside the header and
    ``ValueError`` for an invalid VR.
    """
    tag, _vr, start, length = _Walker(data, implicit=implicit, little=True, certain=True).header(
        pos
    )
    return tag, start, length
