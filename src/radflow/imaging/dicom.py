"""pydicom helpers shared by the imaging operators: headers, series, UIDs, slice geometry.

Reading is tolerant but explicit (house style §4.8): headers are read without pixel data
(``stop_before_pixels``) so a whole study can be grouped and selected before any pixel is
decoded; only the selected series' pixels are read (:func:`series_to_volume`), with
``np.frombuffer`` on native transfer syntaxes and pydicom's decoders (pylibjpeg, gdcm, RLE)
for compressed ones.

Geometry follows DICOM (PS3.3 C.7.6.2.1.1): ``ImageOrientationPatient`` holds the row direction
(along which the column index grows) then the column direction; ``PixelSpacing`` is
``[spacing between rows, spacing between columns]``, so the *row* cosine is scaled by the
*column* spacing ``PixelSpacing[1]``. Slices are ordered by ``ImagePositionPatient`` projected on
the slice normal ``row x col`` (never by InstanceNumber, SliceLocation or file name).
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections import defaultdict
from collections.abc import Iterable, MutableSequence, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.pixels import pixel_array as decode_pixels
from pydicom.tag import BaseTag, Tag
from pydicom.uid import PYDICOM_ROOT_UID, UID, generate_uid

from radflow.imaging.dicom_walk import (
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    PIXEL_DATA,
    UNDEFINED,
    element_header,
    top_level_elements,
)
from radflow.sdk.errors import InvalidInput
from radflow.sdk.staging import NeedMoreBytes

#: Root of every UID radflow creates. A sub-arc of pydicom's root, which pydicom's
#: ``generate_uid`` uses by default; a site with its own registered root passes it instead.
RADFLOW_UID_ROOT = f"{PYDICOM_ROOT_UID}77."

#: SOP classes whose instances are one frame each and carry their plane in the top level.
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"


def new_uid(*entropy: str, root: str = RADFLOW_UID_ROOT) -> str:
    """A UID under ``root``; deterministic when ``entropy`` is given.

    Outputs derive their UIDs from their inputs (e.g. source SeriesInstanceUID + operator +
    model version) so a redelivered event rewrites the same objects instead of duplicating them.
    """
    return str(generate_uid(prefix=root, entropy_srcs=list(entropy) or None))


# --------------------------------------------------------------------------- headers


@dataclass(frozen=True)
class Instance:
    """One DICOM file's header (no pixel data) and where it came from."""

    path: Path
    header: Dataset
    #: file offset of the (7FE0,0010) PixelData element when the header read stopped there
    pixel_offset: int | None = None
    #: the whole encoded instance when it came from memory (S3) rather than from ``path``
    data: bytes | None = None

    @property
    def sop_instance_uid(self) -> str:
        return str(self.header.SOPInstanceUID)

    @property
    def series_instance_uid(self) -> str:
        return str(self.header.SeriesInstanceUID)


def read_header(path: Path) -> Dataset:
    """Read one file's header, stopping before the pixel data.

    Raises InvalidInput when it is not DICOM. The message names no file: stored names are
    ``<SOPInstanceUID>.dcm`` and UIDs stay out of events and logs.
    """
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError, ValueError) as exc:
        raise InvalidInput(
            f"a source instance is not a readable DICOM file ({type(exc).__name__})"
        ) from exc


def read_file_meta(path: Path) -> FileMetaDataset:
    """The file meta group (PS3.10 7.1) of a Part 10 file, without reading its data set.

    pydicom's own errors propagate (``InvalidDicomError``, ``OSError``, ``ValueError``) so the
    caller can say why a file was unreadable.
    """
    return read_file_meta_info(path)


def raw_element(
    tag: int, vr: str | None, value: bytes, *, offset: int = 0, implicit: bool = False
) -> RawDataElement:
    """An element still encoded (little endian), as pydicom's reader stores it before use.

    pydicom converts and validates the value only when it is first read; handing it encoded
    bytes (ours, or located in a file by ``dicom_walk``) skips that work for values never read
    and, for values we encoded ourselves, the per-value validation.
    """
    return RawDataElement(Tag(tag), vr, len(value), value, offset, implicit, True)


def read_dataset(source: Path | bytes) -> FileDataset:
    """Read a whole instance (with pixel data) from a path or from bytes fetched from S3."""
    if isinstance(source, bytes):
        return pydicom.dcmread(io.BytesIO(source))
    return pydicom.dcmread(source)


#: What volume assembly reads from a header (:func:`read_series_volume` keeps only these).
VOLUME_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "InstanceNumber",
    "Rows",
    "Columns",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
    "RescaleSlope",
    "RescaleIntercept",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "NumberOfFrames",
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
)


#: Bytes read for a header parse; a longer header falls back to parsing from the file.
HEADER_CHUNK = 64 * 1024
_PIXEL_DATA_TAG = struct.pack("<HH", PIXEL_DATA >> 16, PIXEL_DATA & 0xFFFF)


def _read_header_and_offset(
    path: Path, *, force: bool = False, keywords: Sequence[str] | None = None
) -> tuple[Dataset, int | None]:
    """Header without pixel data, and the file offset of the PixelData element (or None).

    Parses from one in-memory chunk (about a third less CPU than pydicom reading the file
    element by element); when the header does not end inside the chunk it parses the file.
    """
    tags = list(keywords) if keywords else None
    with open(path, "rb") as fp:
        chunk = fp.read(HEADER_CHUNK)
        size = fp.seek(0, io.SEEK_END)
        try:
            buffer = io.BytesIO(chunk)
            header = pydicom.dcmread(
                buffer, stop_before_pixels=True, force=force, specific_tags=tags
            )
            offset = buffer.tell()
            if chunk[offset : offset + 4] == _PIXEL_DATA_TAG:
                return header, offset
            if size <= len(chunk):
                return header, None  # the whole file was parsed: no pixel data
        except (InvalidDicomError, EOFError, ValueError, TypeError, struct.error):
            if size <= len(chunk):
                raise
        fp.seek(0)
        header = pydicom.dcmread(fp, stop_before_pixels=True, force=force, specific_tags=tags)
        offset = fp.tell()
    return header, (offset if offset < size else None)


def scan_folder(folder: Path) -> tuple[list[Instance], list[str]]:
    """Headers of every DICOM file under ``folder`` (any layout), plus the names skipped.

    Files without the ``DICM`` preamble whose name does not end in ``.dcm`` are skipped
    silently; a ``.dcm`` that cannot be parsed, or a file without SOP/Series UIDs, is listed in
    the skipped names so the caller can report it.
    """
    instances: list[Instance] = []
    skipped: list[str] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            header, offset = _read_header_and_offset(path, force=path.suffix.lower() == ".dcm")
        except (InvalidDicomError, EOFError, OSError, ValueError, TypeError):
            if path.suffix.lower() == ".dcm":
                skipped.append(str(path.relative_to(folder)))
            continue
        if "SOPInstanceUID" not in header or "SeriesInstanceUID" not in header:
            skipped.append(str(path.relative_to(folder)))
            continue
        instances.append(Instance(path=path, header=header, pixel_offset=offset))
    return instances, skipped


# --------------------------------------------------------------------------- series


@dataclass
class Series:
    """The instances of one SeriesInstanceUID, in a deterministic (not geometric) order."""

    index: int  #: opaque position in the study's deterministic series order
    series_instance_uid: str
    instances: list[Instance] = field(default_factory=list)

    @property
    def first(self) -> Dataset:
        return self.instances[0].header

    def attribute(self, keyword: str) -> Any:
        """A series-level attribute: from the first instance in deterministic order."""
        return self.first.get(keyword)


def _int_or(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def group_series(instances: Iterable[Instance]) -> list[Series]:
    """Group instances by SeriesInstanceUID; order series by (SeriesNumber, UID).

    The order is deterministic whatever the storage listing order, so "first match" in
    selection always picks the same series (MONAI picks in file-system order, pitfall §2.1).
    Duplicate SOPInstanceUIDs (a resend) are kept once.
    """
    by_uid: dict[str, dict[str, Instance]] = defaultdict(dict)
    for inst in instances:
        by_uid[inst.series_instance_uid].setdefault(inst.sop_instance_uid, inst)
    keyed = []
    for uid, members in by_uid.items():
        ordered = sorted(
            members.values(),
            key=lambda i: (_int_or(i.header.get("InstanceNumber"), 0), i.sop_instance_uid),
        )
        keyed.append(((_int_or(ordered[0].header.get("SeriesNumber"), 0), uid), uid, ordered))
    keyed.sort(key=lambda item: item[0])
    return [
        Series(index=n, series_instance_uid=uid, instances=insts)
        for n, (_, uid, insts) in enumerate(keyed)
    ]


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class SliceRef:
    """One 2D plane of a series: an instance, or one frame of a multi-frame instance."""

    instance: int  #: index into the series' instance list
    frame: int | None  #: 0-based frame number for multi-frame instances, else None
    position: tuple[float, float, float]  #: ImagePositionPatient (LPS mm)
    orientation: tuple[float, ...]  #: ImageOrientationPatient (6 values)
    pixel_spacing: tuple[float, float]  #: (row spacing, column spacing)
    rows: int
    columns: int
    slope: float
    intercept: float
    thickness: float | None


@dataclass(frozen=True)
class SlicePlan:
    """The geometric order of a series' planes and the volume geometry it implies.

    ``slices[k]`` is the plane at volume index ``z = k``; ``normal`` = row x col; positions
    increase along it. ``spacing`` is (x, y, z) = (column spacing, row spacing, slice step).
    """

    slices: tuple[SliceRef, ...]
    row_cosine: tuple[float, float, float]
    col_cosine: tuple[float, float, float]
    normal: tuple[float, float, float]
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    distances: tuple[float, ...]  #: position of each slice along the normal (mm)

    @property
    def direction(self) -> tuple[float, ...]:
        """Row-major 3x3 matrix whose columns are the x, y, z axes (SimpleITK's convention)."""
        m = np.column_stack([self.row_cosine, self.col_cosine, self.normal])
        return tuple(float(v) for v in m.ravel())

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.slices), self.slices[0].rows, self.slices[0].columns)


#: Tolerances for "the same plane geometry" and "uniform slice spacing".
ORIENTATION_TOLERANCE = 1e-4
SPACING_RELATIVE_TOLERANCE = 0.01
POSITION_TOLERANCE_MM = 0.01


def _floats(value: Any, n: int, what: str, series: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"series {series}: {what} is not numeric (rule: geometry)") from exc
    if len(out) != n:
        raise InvalidInput(
            f"series {series}: {what} has {len(out)} values, expected {n} (rule: geometry)"
        )
    return out


def _ds_values(ds: Dataset, keyword: str) -> tuple[float, ...] | None:
    """A DS attribute's numbers, parsed from the raw text when pydicom has not converted it yet.

    Converting DS through pydicom validates every value with a regex; for the handful of
    geometry tags read per plane the plain ``float`` parse is several times cheaper. Returns
    None when absent or empty.
    """
    elem = ds.get_item(keyword)
    if elem is None or elem.value in (None, b"", ""):
        return None
    value = elem.value
    try:
        if isinstance(value, bytes):
            return tuple(float(v) for v in value.split(b"\\") if v.strip())
        if isinstance(value, (list, tuple, MutableSequence)):
            return tuple(float(v) for v in value)
        return (float(value),)
    except ValueError as exc:
        raise InvalidInput(f"({keyword}) is not a decimal string (rule: geometry)") from exc


def _first_item(ds: Dataset | None, seq: str) -> Dataset | None:
    if ds is None or seq not in ds or not ds[seq].value:
        return None
    item: Dataset = ds[seq].value[0]
    return item


def _frame_group(shared: Dataset | None, per_frame: Dataset | None, seq: str) -> Dataset | None:
    """A functional group macro: the per-frame item wins over the shared one (PS3.3 C.7.6.16)."""
    return _first_item(per_frame, seq) or _first_item(shared, seq)


def slice_refs(series: Series | Sequence[Dataset], name: str = "?") -> list[SliceRef]:
    """Every plane of a series, from classic per-instance tags or enhanced functional groups."""
    headers = [i.header for i in series.instances] if isinstance(series, Series) else list(series)
    if isinstance(series, Series):
        name = str(series.index)
    refs: list[SliceRef] = []
    for n, ds in enumerate(headers):
        frames = _int_or(ds.get("NumberOfFrames"), 1)
        rows, cols = _int_or(ds.get("Rows"), 0), _int_or(ds.get("Columns"), 0)
        if "PerFrameFunctionalGroupsSequence" in ds:
            shared = _first_item(ds, "SharedFunctionalGroupsSequence")
            per_frame = ds.PerFrameFunctionalGroupsSequence
            if len(per_frame) != frames:
                raise InvalidInput(
                    f"series {name}: PerFrameFunctionalGroupsSequence has {len(per_frame)} items "
                    f"for NumberOfFrames {frames} (rule: enhanced multi-frame)"
                )
            for f, item in enumerate(per_frame):
                pos = _frame_group(shared, item, "PlanePositionSequence")
                ori = _frame_group(shared, item, "PlaneOrientationSequence")
                meas = _frame_group(shared, item, "PixelMeasuresSequence")
                pvt = _frame_group(shared, item, "PixelValueTransformationSequence")
                if pos is None or ori is None or meas is None or "PixelSpacing" not in meas:
                    raise InvalidInput(
                        f"series {name}: frame {f + 1} lacks PlanePosition/PlaneOrientation/"
                        "PixelMeasures functional groups (rule: geometry)"
                    )
                refs.append(
                    SliceRef(
                        instance=n,
                        frame=f,
                        position=_floats(pos.ImagePositionPatient, 3, "ImagePositionPatient", name),  # type: ignore[arg-type]
                        orientation=_floats(
                            ori.ImageOrientationPatient, 6, "ImageOrientationPatient", name
                        ),
                        pixel_spacing=_floats(meas.PixelSpacing, 2, "PixelSpacing", name),  # type: ignore[arg-type]
                        rows=rows,
                        columns=cols,
                        slope=float(pvt.get("RescaleSlope", 1.0) or 1.0) if pvt else 1.0,
                        intercept=float(pvt.get("RescaleIntercept", 0.0) or 0.0) if pvt else 0.0,
                        thickness=float(meas.SliceThickness)
                        if meas.get("SliceThickness")
                        else None,
                    )
                )
            continue
        position = _ds_values(ds, "ImagePositionPatient")
        orientation = _ds_values(ds, "ImageOrientationPatient")
        spacing = _ds_values(ds, "PixelSpacing")
        for kw, value in (
            ("ImagePositionPatient", position),
            ("ImageOrientationPatient", orientation),
            ("PixelSpacing", spacing),
        ):
            if not value:
                raise InvalidInput(f"series {name}: an instance lacks ({kw}) (rule: geometry)")
        if frames != 1:
            raise InvalidInput(
                f"series {name}: multi-frame instance without per-frame geometry (rule: geometry)"
            )
        slope = _ds_values(ds, "RescaleSlope")
        intercept = _ds_values(ds, "RescaleIntercept")
        thickness = _ds_values(ds, "SliceThickness")
        refs.append(
            SliceRef(
                instance=n,
                frame=None,
                position=_floats(position, 3, "ImagePositionPatient", name),  # type: ignore[arg-type]
                orientation=_floats(orientation, 6, "ImageOrientationPatient", name),
                pixel_spacing=_floats(spacing, 2, "PixelSpacing", name),  # type: ignore[arg-type]
                rows=rows,
                columns=cols,
                # missing RescaleSlope/Intercept default to 1/0 (PS3.3 C.11.1.1.2)
                slope=slope[0] if slope else 1.0,
                intercept=intercept[0] if intercept else 0.0,
                thickness=thickness[0] if thickness else None,
            )
        )
    return refs


def plan_slices(
    refs: Sequence[SliceRef], name: str = "?", *, default_depth: float | None = None
) -> SlicePlan:
    """Order planes along their normal and check that they form one regular volume.

    Rejects (InvalidInput naming the series and the rule) mixed orientation, mixed size or
    pixel spacing, duplicate positions (multi-phase series), positions off the normal (gantry
    tilt / shear) and non-uniform slice spacing beyond 1 %.
    """
    if not refs:
        raise InvalidInput(f"series {name}: no image planes (rule: geometry)")
    first = refs[0]
    ori = np.array(first.orientation)
    for r in refs:
        if np.max(np.abs(np.array(r.orientation) - ori)) > ORIENTATION_TOLERANCE:
            raise InvalidInput(
                f"series {name}: mixed ImageOrientationPatient (rule: one orientation per volume)"
            )
        if (r.rows, r.columns) != (first.rows, first.columns):
            raise InvalidInput(
                f"series {name}: mixed Rows/Columns (rule: one matrix size per volume)"
            )
        if np.max(np.abs(np.array(r.pixel_spacing) - first.pixel_spacing)) > 1e-4:
            raise InvalidInput(
                f"series {name}: mixed PixelSpacing (rule: one pixel spacing per volume)"
            )
    row = ori[:3] / np.linalg.norm(ori[:3])
    col = ori[3:] / np.linalg.norm(ori[3:])
    if abs(float(row @ col)) > 1e-3:
        raise InvalidInput(
            f"series {name}: ImageOrientationPatient row/column not orthogonal (rule: geometry)"
        )
    normal = np.cross(row, col)
    positions = np.array([r.position for r in refs])
    dist = positions @ normal
    order = np.argsort(dist, kind="stable")
    dist = dist[order]
    positions = positions[order]
    if len(refs) > 1:
        steps = np.diff(dist)
        if np.min(steps) < POSITION_TOLERANCE_MM:
            raise InvalidInput(
                f"series {name}: {int(np.sum(steps < POSITION_TOLERANCE_MM))} duplicate slice"
                " positions "
                "(multi-phase or repeated acquisition; rule: one plane per position)"
            )
        median = float(np.median(steps))
        if np.max(np.abs(steps - median)) > SPACING_RELATIVE_TOLERANCE * median:
            raise InvalidInput(
                f"series {name}: non-uniform slice spacing"
                f" {float(steps.min()):.3f}..{float(steps.max()):.3f} mm "
                "(missing slices?; rule: uniform spacing within 1 %)"
            )
        offsets = positions - positions[0]
        in_plane = offsets - np.outer(offsets @ normal, normal)
        if np.max(np.linalg.norm(in_plane, axis=1)) > 0.1 * min(first.pixel_spacing):
            raise InvalidInput(
                f"series {name}: slice positions are not along the slice normal "
                "(gantry tilt or shear; rule: positions along row x column)"
            )
        depth = float((dist[-1] - dist[0]) / (len(refs) - 1))
    else:
        depth = default_depth or first.thickness or 1.0
    row_sp, col_sp = first.pixel_spacing
    return SlicePlan(
        slices=tuple(refs[i] for i in order),
        row_cosine=tuple(float(v) for v in row),  # type: ignore[arg-type]
        col_cosine=tuple(float(v) for v in col),  # type: ignore[arg-type]
        normal=tuple(float(v) for v in normal),  # type: ignore[arg-type]
        origin=tuple(float(v) for v in positions[0]),  # type: ignore[arg-type]
        spacing=(float(col_sp), float(row_sp), depth),
        distances=tuple(float(v) for v in dist),
    )


def geometry_fingerprint(plan: SlicePlan) -> str:
    """A short hash of the volume grid (orientation, origin, spacing, shape) for contracts."""
    text = repr(
        (
            np.round(plan.direction, 5).tolist(),
            np.round(plan.origin, 3).tolist(),
            np.round(plan.spacing, 4).tolist(),
            plan.shape,
        )
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def orientation_label(orientation: Sequence[float]) -> str:
    """``Axial``, ``Coronal`` or ``Sagittal``: the patient axis closest to the slice normal."""
    row = np.asarray(orientation[:3], float)
    col = np.asarray(orientation[3:6], float)
    normal = np.abs(np.cross(row, col))
    return ("Sagittal", "Coronal", "Axial")[int(np.argmax(normal))]


def to_json_model(ds: Dataset) -> dict[str, Any]:
    """The DICOM JSON model (PS3.18 F.2) of a header, bulk data left out."""
    return ds.to_json_dict(bulk_data_threshold=4096, bulk_data_element_handler=lambda _elem: "")


# --------------------------------------------------------------------------- pixels


#: Uncompressed little-endian transfer syntaxes whose PixelData is a plain C array.
NATIVE_SYNTAXES = frozenset({IMPLICIT_VR_LE, EXPLICIT_VR_LE})


@dataclass(frozen=True)
class Volume:
    """A series as a (z, y, x) array in modality units plus the plan that placed its slices."""

    array: np.ndarray
    plan: SlicePlan


def _native_dtype(ds: Dataset) -> np.dtype[Any] | None:
    """The numpy dtype of PixelData when ``np.frombuffer`` can read it as is, else None."""
    if "PixelData" not in ds:
        return None
    return _native_dtype_from_header(ds)


def _native_dtype_from_header(ds: Dataset) -> np.dtype[Any] | None:
    """The dtype of native pixel data from the header alone (None: needs a decoder)."""
    syntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    bits = _int_or(ds.get("BitsAllocated"), 0)
    signed = _int_or(ds.get("PixelRepresentation"), 0) == 1
    if (
        syntax not in NATIVE_SYNTAXES
        or _int_or(ds.get("SamplesPerPixel"), 1) != 1
        or bits not in (8, 16, 32)
        # signed data with unused high bits needs sign extension: leave that to pydicom
        or (signed and _int_or(ds.get("BitsStored"), bits) != bits)
    ):
        return None
    return np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")


def instance_frames(ds: Dataset) -> np.ndarray:
    """All frames of one instance as stored values, (frames, rows, columns).

    Native syntaxes take the zero-copy ``np.frombuffer`` path (2-3x faster than
    ``pixel_array``, performance-baselines G6); compressed ones go through pydicom's decoders
    (pylibjpeg, gdcm, its own RLE).
    """
    frames = _int_or(ds.get("NumberOfFrames"), 1)
    rows, cols = int(ds.Rows), int(ds.Columns)
    if _int_or(ds.get("SamplesPerPixel"), 1) != 1:
        raise InvalidInput(
            f"SamplesPerPixel {ds.SamplesPerPixel}: only greyscale images form volumes"
        )
    dtype = _native_dtype(ds)
    if dtype is not None:
        count = frames * rows * cols
        data = np.frombuffer(ds.PixelData, dtype=dtype, count=count)
        return data.reshape(frames, rows, cols)
    try:
        # as_rgb=False: never convert colour spaces on a greyscale hot path (pydicom#2226)
        arr = decode_pixels(ds, as_rgb=False)
    except (RuntimeError, NotImplementedError, ValueError) as exc:
        syntax = ds.file_meta.get("TransferSyntaxUID", "?")
        raise InvalidInput(f"cannot decode pixel data in transfer syntax {syntax}: {exc}") from exc
    return np.asarray(arr).reshape(frames, rows, cols)


def _rescaled(stored: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray) -> np.ndarray:
    """Apply per-slice RescaleSlope/Intercept, keeping an integer dtype when that is lossless."""
    if np.all(slopes == 1) and np.all(intercepts == 0):
        return stored
    if np.all(slopes == np.round(slopes)) and np.all(intercepts == np.round(intercepts)):
        out = (
            stored.astype(np.int64) * slopes.astype(np.int64)[:, None, None]
            + intercepts.astype(np.int64)[:, None, None]
        )
        lo, hi = (int(out.min()), int(out.max())) if out.size else (0, 0)
        for dtype in (np.int16, np.uint16, np.int32):
            info = np.iinfo(dtype)
            if info.min <= lo and hi <= info.max:
                return out.astype(dtype)
        return out.astype(np.float64)
    return (
        stored.astype(np.float32) * slopes.astype(np.float32)[:, None, None]
        + intercepts.astype(np.float32)[:, None, None]
    )


def _pixel_value_start(head: bytes, implicit: bool, nbytes: int) -> int | None:
    """Where the value starts in ``head`` (a PixelData element's header), or None.

    None when the element there is not (7FE0,0010) with a defined length of at least ``nbytes``
    (the caller then reads the instance with pydicom).
    """
    try:
        tag, start, length = element_header(head, 0, implicit=implicit)
    except (NeedMoreBytes, ValueError):
        return None
    if tag != PIXEL_DATA or length == UNDEFINED or length < nbytes:
        return None
    return start


def _read_native_plane(inst: Instance, explicit_vr: bool, out: np.ndarray) -> bool:
    """Read one uncompressed plane straight into ``out`` (no intermediate bytes object)."""
    offset = inst.pixel_offset or 0
    if inst.data is not None:
        start = _pixel_value_start(inst.data[offset : offset + 12], not explicit_vr, out.nbytes)
        if start is None or len(inst.data) < offset + start + out.nbytes:
            return False
        out[...] = np.frombuffer(
            inst.data, dtype=out.dtype, count=out.size, offset=offset + start
        ).reshape(out.shape)
        return True
    with open(inst.path, "rb") as fp:
        fp.seek(offset)
        head = fp.read(12 if explicit_vr else 8)
        if _pixel_value_start(head, not explicit_vr, out.nbytes) != len(head):
            return False
        return fp.readinto(out.data.cast("B")) == out.nbytes


def instances_to_volume(instances: Sequence[Instance], name: str = "?") -> Volume:
    """Assemble a series from files whose headers are already read (:func:`scan_folder`).

    Fast path for single-frame native little-endian files: pixel bytes are read from disk
    straight into the volume array at each plane's geometric index, so a file is parsed once
    (header) and its pixels copied once. Anything else (compressed, multi-frame, odd layouts)
    goes through :func:`series_to_volume` with full datasets.
    """
    headers = [i.header for i in instances]
    first = headers[0]
    dtype = _native_dtype_from_header(first)
    fast = dtype is not None and all(
        i.pixel_offset is not None
        and _int_or(i.header.get("NumberOfFrames"), 1) == 1
        and _native_dtype_from_header(i.header) == dtype
        for i in instances
    )
    if not fast:
        return series_to_volume(
            [read_dataset(i.data if i.data is not None else i.path) for i in instances], name
        )
    assert dtype is not None
    plan = plan_slices(slice_refs(headers, name), name)
    stored = np.empty(plan.shape, dtype=dtype)
    explicit = str(first.file_meta.TransferSyntaxUID) != IMPLICIT_VR_LE
    for z, ref in enumerate(plan.slices):
        inst = instances[ref.instance]
        if not _read_native_plane(inst, explicit, stored[z]):
            stored[z] = instance_frames(
                read_dataset(inst.data if inst.data is not None else inst.path)
            )[0]
    slopes = np.array([r.slope for r in plan.slices])
    intercepts = np.array([r.intercept for r in plan.slices])
    return Volume(array=_rescaled(stored, slopes, intercepts), plan=plan)


_VOLUME_TAGS = frozenset(int(tag_for_keyword(k) or 0) for k in VOLUME_KEYWORDS)
#: enhanced multi-frame geometry lives in these sequences: left to pydicom's full parser
_GROUP_SEQUENCES = frozenset(
    int(tag_for_keyword(k) or 0)
    for k in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")
)
_FILE_META: dict[str, FileMetaDataset] = {}


def _volume_header(data: bytes) -> tuple[Dataset, int] | None:
    """The :data:`VOLUME_KEYWORDS` of a native single-plane instance and its PixelData offset.

    What pydicom's ``dcmread(specific_tags=...)`` returns for such files, at a fraction of its
    cost: ``dicom_walk`` locates the elements, the wanted ones go into the data set as raw
    (undecoded) elements, exactly as pydicom's own reader stores them. ``None`` (the caller
    uses pydicom) for anything else: compressed or big-endian syntaxes, functional-group
    sequences, data sets the walker cannot read, or ``data`` ending before the pixel data.
    """
    found = top_level_elements(data)
    if found is None or found[0] not in NATIVE_SYNTAXES:
        return None
    syntax, elements = found
    implicit = syntax == IMPLICIT_VR_LE
    raw: dict[BaseTag, DataElement | RawDataElement] = {}
    try:
        for el in elements:
            if el.length < 0:
                meta = _FILE_META.get(syntax)
                if meta is None:
                    meta = _FILE_META[syntax] = FileMetaDataset()
                    meta.TransferSyntaxUID = UID(syntax)
                ds = Dataset(raw)
                ds.file_meta = meta
                ds.set_original_encoding(implicit, True)
                return ds, el.start
            if el.tag in _VOLUME_TAGS:
                if el.tag in _GROUP_SEQUENCES:
                    return None
                elem = raw_element(
                    el.tag,
                    el.vr,
                    data[el.start : el.start + el.length],
                    offset=el.start,
                    implicit=implicit,
                )
                raw[elem.tag] = elem
    except (NeedMoreBytes, ValueError):
        return None
    return None


def read_series_volume(paths: Sequence[Path], name: str = "?") -> Volume:
    """Series -> volume from local files (header read once, pixels read into place)."""
    instances = []
    for path in paths:
        with open(path, "rb") as fp:
            quick = _volume_header(fp.read(HEADER_CHUNK))
        if quick is None:
            # only the attributes geometry and pixel layout need: ~20 % less pydicom parsing
            header, offset = _read_header_and_offset(path, keywords=VOLUME_KEYWORDS)
        else:
            header, offset = quick
        instances.append(Instance(path, header, offset))
    return instances_to_volume(instances, name)


def volume_from_bytes(blobs: Iterable[bytes], name: str = "?") -> Volume:
    """Series -> volume from encoded instances in memory (e.g. fetched from S3).

    ``blobs`` may be an iterator that is still fetching (``ObjectStore.iter_objects``): each
    header is parsed as its instance arrives, overlapping the parse with the transfers.
    """
    instances = []
    for n, blob in enumerate(blobs):
        quick = _volume_header(blob)
        if quick is not None:
            instances.append(Instance(Path(f"instance-{n}"), quick[0], quick[1], blob))
            continue
        buffer = io.BytesIO(blob)
        header = pydicom.dcmread(
            buffer, stop_before_pixels=True, specific_tags=list(VOLUME_KEYWORDS)
        )
        offset = buffer.tell()
        instances.append(
            Instance(Path(f"instance-{n}"), header, offset if offset < len(blob) else None, blob)
        )
    return instances_to_volume(instances, name)


def series_to_volume(datasets: Sequence[Dataset], name: str = "?") -> Volume:
    """Assemble full instances of one series (any order) into a geometrically ordered volume.

    ``datasets`` must include pixel data. Rescale slope/intercept are applied per plane (they
    may differ between slices); values stay integer when the rescale is integral.
    """
    refs = slice_refs(datasets, name)
    plan = plan_slices(refs, name)
    n, rows, cols = plan.shape
    cache: dict[int, np.ndarray] = {}
    stored: np.ndarray | None = None
    for z, ref in enumerate(plan.slices):
        frames = cache.get(ref.instance)
        if frames is None:
            frames = instance_frames(datasets[ref.instance])
            if _int_or(datasets[ref.instance].get("NumberOfFrames"), 1) > 1:
                cache[ref.instance] = frames
        if stored is None:
            stored = np.empty((n, rows, cols), dtype=frames.dtype)
        stored[z] = frames[ref.frame or 0]
    assert stored is not None
    slopes = np.array([r.slope for r in plan.slices])
    intercepts = np.array([r.intercept for r in plan.slices])
    return Volume(array=_rescaled(stored, slopes, intercepts), plan=plan)


def match_grid(
    plan: SlicePlan,
    origin: Sequence[float],
    spacing: Sequence[float],
    direction: Sequence[float],
    shape_zyx: Sequence[int],
) -> list[int]:
    """For each z of a volume (e.g. a mask NIfTI), the index of the plan slice it lies on.

    Nothing is resampled: the volume must share the plan's in-plane grid (rows, columns,
    row/column directions, pixel spacing, in-plane origin) and each of its slices must lie on a
    source plane (within 10 % of the slice step). A mask stored with a flipped z axis still maps.
    Raises InvalidInput saying which property differs.
    """
    d = np.asarray(direction, float).reshape(3, 3)
    if tuple(shape_zyx[1:]) != plan.shape[1:]:
        raise InvalidInput(
            f"mask in-plane size {tuple(shape_zyx[1:])} differs from the source {plan.shape[1:]}"
            " (rule: same grid)"
        )
    if not (
        np.allclose(d[:, 0], plan.row_cosine, atol=1e-3)
        and np.allclose(d[:, 1], plan.col_cosine, atol=1e-3)
    ):
        raise InvalidInput(
            "mask row/column directions differ from the source series (rule: same grid, LPS)"
        )
    if not np.allclose(spacing[:2], plan.spacing[:2], rtol=1e-3):
        raise InvalidInput(
            f"mask pixel spacing {tuple(spacing[:2])} differs from the source {plan.spacing[:2]}"
            " (rule: same grid)"
        )
    normal = np.asarray(plan.normal)
    start = np.asarray(plan.origin)
    dists = np.asarray(plan.distances)
    tolerance = 0.1 * (plan.spacing[2] or 1.0)
    in_plane_tolerance = 0.1 * min(plan.spacing[:2])
    mapping: list[int] = []
    for z in range(int(shape_zyx[0])):
        p = np.asarray(origin, float) + z * float(spacing[2]) * d[:, 2]
        offset = p - start
        if np.linalg.norm(offset - (offset @ normal) * normal) > in_plane_tolerance:
            raise InvalidInput(
                f"mask slice {z} is shifted in-plane from the source planes (rule: same grid)"
            )
        k = int(np.argmin(np.abs(dists - p @ normal)))
        if abs(dists[k] - p @ normal) > tolerance:
            raise InvalidInput(f"mask slice {z} lies on no source plane (rule: same grid)")
        mapping.append(k)
    if len(set(mapping)) != len(mapping):
        raise InvalidInput("several mask slices map to one source plane (rule: same grid)")
    return mapping
