"""Synthesise a multi-series brain MR study as DICOM files, with its ground truth.

The study looks like what a PACS sends for a brain tumour work-up: a 3-plane localizer, T1,
a "T1c ref" decoy, the T1c target, a "T1c 3x3" reformat decoy and FLAIR, all in one
FrameOfReference, with shuffled InstanceNumbers (so nothing may sort by them). Options produce
the geometry traps users hit: oblique planes, sagittal planes, reversed acquisition order,
non-square pixels, rescale slope/intercept, compressed (RLE, JPEG-LS, JPEG 2000) or enhanced
multi-frame targets. Every name and identifier in the headers is synthetic.

The ground truth is returned in radflow's volume convention (see ``imaging/dicom.py``): voxel
(z, y, x) lies at ``origin + x*col_spacing*row_cosine + y*row_spacing*col_cosine +
z*slice_step*normal`` with ``normal = row_cosine x col_cosine`` (positions ascending).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from radflow.demo.phantom import brain_phantom
from radflow.imaging.volume import Geometry

ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
DEMO_UID_ROOT = "1.2.826.0.1.3680043.8.498.78."  # synthetic studies only
COMPRESSIONS = {"rle": RLELossless, "jpeg-ls": JPEGLSLossless, "jpeg2000": JPEG2000Lossless}


@dataclass(frozen=True)
class SeriesInfo:
    name: str  #: short key: localizer, t1, t1c_ref, t1c, t1c_3x3, flair
    series_instance_uid: str
    series_description: str
    series_number: int
    files: tuple[Path, ...]


@dataclass(frozen=True)
class SyntheticStudy:
    """Files of the study, per-series info and the target (T1c) ground truth."""

    root: Path
    study_instance_uid: str
    frame_of_reference_uid: str
    series: dict[str, SeriesInfo]
    label: np.ndarray  #: (z, y, x) uint8 tumour mask in the target's volume geometry
    target_values: np.ndarray  #: (z, y, x) T1c in modality units (after rescale)
    geometry: Geometry  #: the target's volume geometry (LPS)
    files: tuple[Path, ...] = field(default=())

    @property
    def target(self) -> SeriesInfo:
        return self.series["t1c"]


def _rotation(oblique: bool, plane: str) -> tuple[np.ndarray, np.ndarray]:
    """Row and column cosines for the requested plane (LPS)."""
    if plane == "axial":
        row, col = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    elif plane == "sagittal":
        row, col = np.array([0, 1.0, 0]), np.array([0, 0, -1.0])
    elif plane == "coronal":
        row, col = np.array([1.0, 0, 0]), np.array([0, 0, -1.0])
    else:
        raise ValueError(f"plane must be axial, sagittal or coronal, not {plane!r}")
    if oblique:
        a, b = np.deg2rad(17.0), np.deg2rad(-11.0)
        rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
        rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
        row, col = rz @ rx @ row, rz @ rx @ col
    return row, col


def _ds_str(v: float) -> str:
    return f"{v:.6f}".rstrip("0").rstrip(".") if abs(v) > 1e-9 else "0"


class _Writer:
    def __init__(self, root: Path, rng: np.random.Generator, study_uid: str, for_uid: str) -> None:
        self.root, self.rng, self.study_uid, self.for_uid = root, rng, study_uid, for_uid
        self.when = dt.datetime(2026, 3, 14, 9, 26, 53)

    def base(
        self, series_uid: str, number: int, description: str, image_type: list[str]
    ) -> Dataset:
        ds = Dataset()
        ds.PatientName = "Phantom^Brain"
        ds.PatientID = "RF-SYNTH-0001"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyInstanceUID = self.study_uid
        ds.StudyDate = self.when.strftime("%Y%m%d")
        ds.StudyTime = self.when.strftime("%H%M%S")
        ds.StudyDescription = "Brain MRI w/wo contrast (synthetic)"
        ds.StudyID = "1"
        ds.AccessionNumber = "SYN0001"
        ds.ReferringPhysicianName = ""
        ds.Modality = "MR"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = number
        ds.SeriesDescription = description
        ds.Manufacturer = "radflow-demo"
        ds.FrameOfReferenceUID = self.for_uid
        ds.PositionReferenceIndicator = ""
        ds.ImageType = image_type
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.EchoTime = 12
        ds.RepetitionTime = 500
        ds.EchoTrainLength = 1
        ds.MagneticFieldStrength = 3
        ds.PatientPosition = "HFS"
        ds.BodyPartExamined = "BRAIN"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.ContentDate = ds.StudyDate
        ds.ContentTime = ds.StudyTime
        return ds

    def save(self, ds: Dataset, folder: str, syntax: str, pixels: np.ndarray) -> Path:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        if syntax != ExplicitVRLittleEndian:
            ds.compress(syntax, np.ascontiguousarray(pixels), generate_instance_uid=False)
        path = self.root / folder / f"{self.rng.integers(1 << 62):x}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        return path


def _stored(values: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    return np.clip(np.round((values - intercept) / slope), 0, 65535).astype(np.uint16)


def make_study(
    root: Path,
    shape: tuple[int, int, int] = (32, 64, 64),
    *,
    seed: int = 0,
    pixel_spacing: tuple[float, float] = (0.9, 0.9),
    slice_step: float = 3.0,
    plane: str = "axial",
    oblique: bool = False,
    reverse: bool = False,
    shuffle: bool = True,
    compression: str | None = None,
    enhanced: bool = False,
    rescale: tuple[float, float] = (1.0, 0.0),
    decoys: bool = True,
    other_series: bool = True,
    phantom_factor: int = 1,
) -> SyntheticStudy:
    """Write a synthetic study under ``root`` and return its files and ground truth.

    Parameters
    ----------
    shape:
        (slices, rows, columns) of the T1/T1c/FLAIR series.
    pixel_spacing:
        DICOM order: (spacing between rows, spacing between columns), mm.
    plane, oblique:
        Slice plane of the volume series; ``oblique`` tilts it by 17 and -11 degrees.
    reverse:
        Acquire (number) slices from the end of the normal to its start.
    shuffle:
        Shuffle InstanceNumbers within each series.
    compression:
        ``"rle"``, ``"jpeg-ls"`` or ``"jpeg2000"`` (lossless) for the T1c target.
    enhanced:
        Write the T1c target as one Enhanced MR (multi-frame) instance.
    rescale:
        (RescaleSlope, RescaleIntercept) written on the T1c target.
    decoys, other_series:
        Include the "T1c ref"/"T1c 3x3" decoys; the localizer, T1 and FLAIR.
    phantom_factor:
        Compute the phantom at ``shape // factor`` and upsample (fast large benchmark studies).
    """
    rng = np.random.default_rng(seed)

    def uid() -> str:
        return str(generate_uid(prefix=DEMO_UID_ROOT, entropy_srcs=[str(seed), str(rng.random())]))

    study_uid, for_uid = uid(), uid()
    w = _Writer(root, rng, study_uid, for_uid)
    small = tuple(max(1, s // phantom_factor) for s in shape)
    ph = brain_phantom(small, seed=seed)  # type: ignore[arg-type]  # tuple length

    def up(a: np.ndarray) -> np.ndarray:
        if phantom_factor == 1:
            return a
        big = a.repeat(phantom_factor, 0).repeat(phantom_factor, 1).repeat(phantom_factor, 2)
        out = np.zeros(shape, a.dtype)
        out[: big.shape[0], : big.shape[1], : big.shape[2]] = big[
            : shape[0], : shape[1], : shape[2]
        ]
        return out

    label = up(ph.label)
    row, col = _rotation(oblique, plane)
    normal = np.cross(row, col)
    nz, nrows, ncols = shape
    row_sp, col_sp = pixel_spacing
    center = np.array([2.5, -14.0, 21.0])
    origin = (
        center
        - (ncols - 1) / 2 * col_sp * row
        - (nrows - 1) / 2 * row_sp * col
        - (nz - 1) / 2 * slice_step * normal
    )
    geometry = Geometry(
        origin=(float(origin[0]), float(origin[1]), float(origin[2])),
        spacing=(col_sp, row_sp, slice_step),
        direction=tuple(float(v) for v in np.column_stack([row, col, normal]).ravel()),
    )
    series: dict[str, SeriesInfo] = {}

    def volume_series(
        name: str,
        number: int,
        desc: str,
        values: np.ndarray,
        *,
        target: bool = False,
        factor: int = 1,
    ) -> None:
        s_uid = uid()
        vals = values[:, ::factor, ::factor]
        n = vals.shape[0]
        slope, intercept = rescale if target else (1.0, 0.0)
        stored = _stored(vals, slope, intercept)
        order = np.arange(n)[::-1] if reverse else np.arange(n)
        numbers = rng.permutation(n) + 1 if shuffle else np.arange(n) + 1
        syntax = COMPRESSIONS[compression] if (target and compression) else ExplicitVRLittleEndian
        files: list[Path] = []
        itype = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        if target and enhanced:
            ds = w.base(s_uid, number, desc, itype)
            _enhanced(
                ds,
                uid(),
                stored,
                order,
                origin,
                row,
                col,
                normal,
                (row_sp * factor, col_sp * factor),
                slice_step,
                slope,
                intercept,
            )
            files.append(w.save(ds, f"series{number:03d}", syntax, stored[order]))
        else:
            for k, z in enumerate(order):
                ds = w.base(s_uid, number, desc, itype)
                ds.SOPClassUID = MRImageStorage
                ds.SOPInstanceUID = uid()
                ds.InstanceNumber = int(numbers[k])
                ds.AcquisitionNumber = 1
                ds.Rows, ds.Columns = int(vals.shape[1]), int(vals.shape[2])
                ds.PixelSpacing = [_ds_str(row_sp * factor), _ds_str(col_sp * factor)]
                ds.SliceThickness = _ds_str(slice_step)
                ds.SpacingBetweenSlices = _ds_str(slice_step)
                ds.ImageOrientationPatient = [_ds_str(v) for v in (*row, *col)]
                pos = origin + z * slice_step * normal
                ds.ImagePositionPatient = [_ds_str(v) for v in pos]
                ds.SliceLocation = _ds_str(float(pos @ normal))
                if target and rescale != (1.0, 0.0):
                    ds.RescaleSlope = _ds_str(slope)
                    ds.RescaleIntercept = _ds_str(intercept)
                    ds.RescaleType = "US"
                files.append(w.save(ds, f"series{number:03d}", syntax, stored[z]))
        series[name] = SeriesInfo(name, s_uid, desc, number, tuple(files))

    if other_series:
        _localizer(w, uid, series, shape, pixel_spacing, center)
        volume_series("t1", 2, "Ax T1 SE", up(ph.t1))
    if decoys:
        volume_series("t1c_ref", 3, "Ax T1c ref", up(ph.t1c) * 0.9)
    volume_series("t1c", 4, "Ax T1c SE", up(ph.t1c), target=True)
    if decoys:
        volume_series("t1c_3x3", 5, "T1c 3x3 reformat", up(ph.t1c), factor=2)
    if other_series:
        volume_series("flair", 6, "Ax FLAIR", up(ph.flair))
    slope, intercept = rescale
    target_values = _stored(up(ph.t1c), slope, intercept).astype(np.float64) * slope + intercept
    all_files = tuple(f for s in series.values() for f in s.files)
    return SyntheticStudy(
        root, study_uid, for_uid, series, label, target_values, geometry, all_files
    )


def _localizer(
    w: _Writer,
    uid: Callable[[], str],
    series: dict[str, SeriesInfo],
    shape: tuple[int, int, int],
    spacing: tuple[float, float],
    center: np.ndarray,
) -> None:
    """A 3-plane localizer: one axial, one coronal and one sagittal image in one series."""
    s_uid = uid()
    files = []
    n = max(shape[1], shape[2])
    for k, plane in enumerate(("axial", "coronal", "sagittal")):
        row, col = _rotation(False, plane)
        ds = w.base(s_uid, 1, "3-plane loc", ["ORIGINAL", "PRIMARY", "LOCALIZER"])
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = uid()
        ds.InstanceNumber = k + 1
        ds.Rows = ds.Columns = n
        ds.PixelSpacing = ["2", "2"]
        ds.SliceThickness = "5"
        ds.ImageOrientationPatient = [_ds_str(v) for v in (*row, *col)]
        ds.ImagePositionPatient = [_ds_str(v) for v in center - (n - 1) * (row + col)]
        img = (w.rng.random((n, n)) * 200).astype(np.uint16)
        files.append(w.save(ds, "series001", ExplicitVRLittleEndian, img))
    series["localizer"] = SeriesInfo("localizer", s_uid, "3-plane loc", 1, tuple(files))


def _enhanced(
    ds: Dataset,
    sop_uid: str,
    stored: np.ndarray,
    order: np.ndarray,
    origin: np.ndarray,
    row: np.ndarray,
    col: np.ndarray,
    normal: np.ndarray,
    spacing: tuple[float, float],
    step: float,
    slope: float,
    intercept: float,
) -> None:
    """Turn ``ds`` into an Enhanced MR image whose frames are ``stored[order]``."""
    ds.SOPClassUID = ENHANCED_MR_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns = int(stored.shape[1]), int(stored.shape[2])
    ds.NumberOfFrames = len(order)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    shared = Dataset()
    ori = Dataset()
    ori.ImageOrientationPatient = [_ds_str(v) for v in (*row, *col)]
    meas = Dataset()
    meas.PixelSpacing = [_ds_str(spacing[0]), _ds_str(spacing[1])]
    meas.SliceThickness = _ds_str(step)
    pvt = Dataset()
    pvt.RescaleSlope = _ds_str(slope)
    pvt.RescaleIntercept = _ds_str(intercept)
    pvt.RescaleType = "US"
    shared.PlaneOrientationSequence = DicomSequence([ori])
    shared.PixelMeasuresSequence = DicomSequence([meas])
    shared.PixelValueTransformationSequence = DicomSequence([pvt])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    frames = []
    for k, z in enumerate(order):
        item = Dataset()
        pos = Dataset()
        pos.ImagePositionPatient = [_ds_str(v) for v in origin + z * step * normal]
        content = Dataset()
        content.InStackPositionNumber = int(k + 1)
        content.StackID = "1"
        item.PlanePositionSequence = DicomSequence([pos])
        item.FrameContentSequence = DicomSequence([content])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
