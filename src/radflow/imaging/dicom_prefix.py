"""Where a DICOM Part 10 file's header ends, read from a prefix of its bytes, without pydicom.

Series selection needs every instance's header but only the selected series' pixels, so the
runtime can stage a study as the first few KB of each object (an HTTP Range GET) and fetch the
rest of the chosen files later. It must know whether a prefix already holds the whole header:
:func:`pixel_data_offset` walks the element stream (file meta, then the data set in its transfer
syntax, skipping values and nested sequences of defined or undefined length) up to the top-level
pixel data element. It never guesses: anything it cannot walk for certain (no ``DICM`` preamble,
deflated or big-endian data sets, a malformed sequence) answers ``None``, and the caller fetches
the whole object, which is what staging did before.

Kept free of pydicom (and numpy) because the function runtime imports it in every operator,
including the light ones whose cold start must stay short.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from radflow.sdk.staging import NeedMoreBytes

_UNDEFINED = 0xFFFFFFFF
#: explicit-VR value representations whose length is a 4-byte field (PS3.5 7.1.2)
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_IMPLICIT_LE = "1.2.840.10008.1.2"
#: data sets a prefix walk cannot read: deflated (compressed stream) and big endian (retired)
_UNWALKABLE = frozenset({"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"})
_ITEM, _ITEM_END, _SEQUENCE_END = 0xE000, 0xE00D, 0xE0DD
#: the pixel data elements: Float (0008), Double Float (0009) and Pixel Data (0010)
_PIXEL_GROUP, _FIRST_PIXEL_ELEMENT = 0x7FE0, 0x0008


@dataclass(frozen=True)
class Element:
    """One top-level data element: tag, VR (``None`` in implicit VR) and where its value is."""

    tag: int
    vr: str | None
    start: int
    length: int


class _Unwalkable(Exception):
    """Not something this walker reads with certainty."""


def pixel_data_offset(prefix: bytes) -> int | None:
    """Offset of the top-level pixel data element in a Part 10 file starting with ``prefix``.

    Returns the offset when the prefix holds the whole header and the pixel data element's own
    tag, VR and length (so a header parser stops cleanly there). Returns ``None`` when the bytes
    cannot be walked with certainty; the caller must then use the whole file. Raises
    :class:`NeedMoreBytes` when the prefix ends first: a file without pixel data (an SR, say)
    raises it until the prefix is the whole file.
    """
    try:
        pos, explicit = _file_meta(prefix)
        return _data_set(prefix, pos, explicit)
    except _Unwalkable:
        return None


def _need(buf: bytes, end: int) -> None:
    if end > len(buf):
        raise NeedMoreBytes


def _file_meta(buf: bytes) -> tuple[int, bool]:
    """Skip the preamble and the (always explicit VR little endian) group 0002."""
    _need(buf, 132)
    if buf[128:132] != b"DICM":
        raise _Unwalkable
    pos, syntax = 132, None
    while True:
        _need(buf, pos + 8)
        group, element = struct.unpack_from("<HH", buf, pos)
        if group != 0x0002:
            break
        start, length = _explicit_header(buf, pos)
        if length == _UNDEFINED:
            raise _Unwalkable
        if element == 0x0010:
            _need(buf, start + length)
            syntax = buf[start : start + length].rstrip(b"\0 ").decode("ascii", "replace")
        pos = start + length
    if syntax is None or syntax in _UNWALKABLE:
        raise _Unwalkable
    return pos, syntax != _IMPLICIT_LE


def _explicit_header(buf: bytes, pos: int) -> tuple[int, int]:
    """(value start, value length) of the explicit-VR element at ``pos``."""
    vr = buf[pos + 4 : pos + 6]
    if not (len(vr) == 2 and vr.isalpha() and vr.isupper()):
        raise _Unwalkable
    if vr in _LONG_VRS:
        _need(buf, pos + 12)
        return pos + 12, struct.unpack_from("<I", buf, pos + 8)[0]
    return pos + 8, struct.unpack_from("<H", buf, pos + 6)[0]


def _data_set(buf: bytes, pos: int, explicit: bool) -> int:
    """Walk top-level elements to the pixel data element; return its offset."""
    while True:
        _need(buf, pos + 8)
        group, element = struct.unpack_from("<HH", buf, pos)
        if group == _PIXEL_GROUP and element >= _FIRST_PIXEL_ELEMENT:
            _need(buf, pos + (12 if explicit else 8))  # its header too, so parsers stop cleanly
            return pos
        if group == 0xFFFE:
            raise _Unwalkable  # an item tag outside a sequence
        pos = _element_end(buf, pos, explicit)


def _element_end(buf: bytes, pos: int, explicit: bool) -> int:
    """Offset just past the (non-delimiter) element at ``pos``, nested sequences included."""
    if explicit:
        vr = buf[pos + 4 : pos + 6]
        start, length = _explicit_header(buf, pos)
    else:
        vr, start, length = b"", pos + 8, struct.unpack_from("<I", buf, pos + 4)[0]
    if length != _UNDEFINED:
        return start + length
    if explicit and vr not in (b"SQ", b"UN"):
        raise _Unwalkable
    # an undefined-length SQ, or UN holding an implicit-VR sequence (PS3.5 6.2.2)
    return _sequence_end(buf, start, explicit and vr == b"SQ")


def _sequence_end(buf: bytes, pos: int, explicit: bool) -> int:
    while True:
        _need(buf, pos + 8)
        group, element, length = struct.unpack_from("<HHI", buf, pos)
        if group != 0xFFFE:
            raise _Unwalkable
        if element == _SEQUENCE_END:
            return pos + 8
        if element != _ITEM:
            raise _Unwalkable
        if length != _UNDEFINED:
            pos += 8 + length
            continue
        pos += 8
        while True:  # an undefined-length item: elements up to the item delimiter
            _need(buf, pos + 8)
            group, element = struct.unpack_from("<HH", buf, pos)
            if group == 0xFFFE:
                if element != _ITEM_END:
                    raise _Unwalkable
                pos += 8
                break
            pos = _element_end(buf, pos, explicit)


def top_level_elements(data: bytes) -> tuple[str, Iterator[Element]] | None:
    """The transfer syntax and the top-level elements before the pixel data, or ``None``.

    For callers that read a few attributes of many files (volume assembly): each element's
    value is located, never decoded. Sequences are skipped as a whole (``length`` = their
    encoded length). The last element yielded is the pixel data element when the data reaches
    it, with ``start`` = the offset of its tag and ``length`` = -1. ``None`` when the file meta
    cannot be read with certainty; the iterator raises ``ValueError`` for a data set it cannot
    walk (as :func:`pixel_data_offset` answers ``None``) and :class:`NeedMoreBytes` if the data
    ends inside an element.
    """
    try:
        pos, explicit = _file_meta(data)
    except (_Unwalkable, NeedMoreBytes):
        return None
    syntax = _syntax(data)

    def walk(pos: int) -> Iterator[Element]:
        while pos + 8 <= len(data):
            group, element = struct.unpack_from("<HH", data, pos)
            if group == _PIXEL_GROUP and element >= _FIRST_PIXEL_ELEMENT:
                yield Element((group << 16) | element, None, pos, -1)
                return
            if group == 0xFFFE:
                raise ValueError("an item tag outside a sequence")
            try:
                end = _element_end(data, pos, explicit)
            except _Unwalkable:
                raise ValueError("a data set this walker cannot read with certainty") from None
            _need(data, end)
            if explicit:
                vr = data[pos + 4 : pos + 6].decode("ascii")
                start = pos + (12 if data[pos + 4 : pos + 6] in _LONG_VRS else 8)
            else:
                vr, start = None, pos + 8
            yield Element((group << 16) | element, vr, start, end - start)
            pos = end

    return syntax, walk(pos)


def _syntax(buf: bytes) -> str:
    pos = 132
    while True:
        group, element = struct.unpack_from("<HH", buf, pos)
        start, length = _explicit_header(buf, pos)
        if (group, element) == (0x0002, 0x0010):
            return buf[start : start + length].rstrip(b"\0 ").decode("ascii", "replace")
        pos = start + length
