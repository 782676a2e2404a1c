"""RT Structure Set objects (PS3.3 A.19) from label masks, with pydicom.

Contours are extracted slice by slice with scikit-image's marching squares at level 0.5 on the
zero-padded binary slice, so each contour is closed and runs half-way between inside and outside
pixel centres (on the pixel edges). Every connected component gives an outer contour and every
hole an inner one; all are CLOSED_PLANAR items of the same ROI, to be read with the even-odd
rule (a point inside an odd number of contours is inside the ROI), as most planning systems and
``rt-utils``-style readers do. Points are in patient coordinates (LPS mm) on the plane of the
source image they reference.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian
from skimage.measure import find_contours

from radflow.imaging.dicom import RawDataElement, SlicePlan, new_uid, raw_element
from radflow.imaging.seg import NOT_FOR_CLINICAL_USE, PALETTE, OutputRevision, Provenance
from radflow.sdk.errors import InvalidInput

CONTOUR_DATA = Tag(0x3006, 0x0050)
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
#: Referenced SOP Class for RTReferencedStudySequence (Detached Study Management, retired but
#: still what PS3.3 C.8.8.5 examples and TPS software use)
STUDY_COMPONENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"
#: Copied from the source so the object files into the same patient and study.
PATIENT_STUDY_KEYWORDS = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
)


@dataclass(frozen=True)
class RoiSpec:
    number: int  #: label value in the mask, also the ROINumber
    name: str
    color: tuple[int, int, int]


def roi_specs(labels: Sequence[str]) -> list[RoiSpec]:
    return [
        RoiSpec(n, name[:64], PALETTE[(n - 1) % len(PALETTE)])
        for n, name in enumerate(labels, start=1)
    ]


def _drop_collinear(contour: np.ndarray) -> np.ndarray:
    """Remove points lying on the straight line through their neighbours (exact, no tolerance)."""
    prev = contour - np.roll(contour, 1, axis=0)
    nxt = np.roll(contour, -1, axis=0) - contour
    cross = prev[:, 0] * nxt[:, 1] - prev[:, 1] * nxt[:, 0]
    return contour[np.abs(cross) > 1e-9]


def slice_contours(binary: np.ndarray) -> list[np.ndarray]:
    """Closed contours of one 2D binary slice as (N, 2) (row, column) float arrays.

    The slice is cropped to its bounding box (plus one pixel of padding) before marching squares;
    the repeated end point is dropped (CLOSED_PLANAR closes implicitly) and so are collinear
    points, which marching squares emits every half pixel along straight edges.
    """
    rows = np.flatnonzero(binary.any(axis=1))
    cols = np.flatnonzero(binary.any(axis=0))
    if not len(rows):
        return []
    r0, c0 = rows[0], cols[0]
    crop = binary[r0 : rows[-1] + 1, c0 : cols[-1] + 1]
    padded = np.pad(crop.astype(np.float32), 1)
    out = []
    for contour in find_contours(padded, 0.5):
        if np.allclose(contour[0], contour[-1]):
            contour = contour[:-1]
        contour = _drop_collinear(contour) + (r0 - 1.0, c0 - 1.0)
        if len(contour) >= 3:
            out.append(contour)
    return out


def contour_to_patient(
    contour: np.ndarray, position: Sequence[float], plan: SlicePlan, pixel_spacing: Sequence[float]
) -> np.ndarray:
    """(row, column) pixel coordinates on a plane at ``position`` -> (N, 3) LPS millimetres."""
    row_sp, col_sp = pixel_spacing
    return (
        np.asarray(position, float)
        + np.outer(contour[:, 1] * col_sp, plan.row_cosine)
        + np.outer(contour[:, 0] * row_sp, plan.col_cosine)
    )


def _contour_data(points: np.ndarray) -> RawDataElement:
    """ContourData as an already-encoded DS element.

    DS values are at most 16 characters; 4 decimals (0.1 um) is far below any pixel size.
    Handing pydicom the encoded bytes skips its per-value DSfloat conversion and validation,
    which otherwise dominates writing large structure sets (the values are ours and valid).
    """
    value = "\\".join(f"{v:.4f}" for v in points.ravel()).encode("ascii")
    if len(value) % 2:
        value += b" "
    return raw_element(CONTOUR_DATA, "DS", value)


def _image_ref(header: Dataset, frame: int | None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = header.SOPClassUID
    item.ReferencedSOPInstanceUID = header.SOPInstanceUID
    if frame is not None:
        item.ReferencedFrameNumber = frame + 1
    return item


def build_rtstruct(
    headers: Sequence[Dataset],
    plan: SlicePlan,
    mask: np.ndarray,
    rois: Sequence[RoiSpec],
    provenance: Provenance,
    *,
    output: OutputRevision,
    series_number: int,
) -> Dataset:
    """An RT Structure Set over the source series ``headers`` from a mask on ``plan``'s planes.

    ``mask[k]`` lies on ``plan.slices[k]``; ``headers`` is the series' instance list that
    ``plan.slices[k].instance`` indexes. Empty ROIs are kept (listed, without contours): a
    "no finding" result is still a valid object.
    """
    if mask.shape != plan.shape:
        raise InvalidInput(f"mask shape {mask.shape} differs from the source grid {plan.shape}")
    occupied = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    present = set(np.flatnonzero(np.bincount(mask[occupied].ravel(), minlength=1)).tolist()) - {0}
    unknown = sorted(v for v in present if v > len(rois))
    if unknown:
        raise InvalidInput(
            f"mask holds label values {unknown} but only {len(rois)} ROI names are given",
            code="unlabelled_mask_values",
        )
    first = headers[0]
    entropy = (
        *output.uid_entropy(str(first.StudyInstanceUID)),
        str(first.SeriesInstanceUID),
        provenance.operator,
        provenance.model_name,
        provenance.model_version,
        *(r.name for r in rois),
    )
    now = dt.datetime.now(dt.UTC)
    ds = Dataset()
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in first:
            setattr(ds, keyword, first.data_element(keyword).value)  # type: ignore[union-attr]
        elif keyword not in ("SpecificCharacterSet", "StudyDescription"):
            setattr(ds, keyword, "")
    ds.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.SOPInstanceUID = new_uid(*entropy, "rtstruct-instance", root=provenance.uid_root)
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = new_uid(*entropy, "rtstruct-series", root=provenance.uid_root)
    ds.SeriesNumber = series_number
    ds.SeriesDescription = output.describe(provenance.model_name, "RTSTRUCT")
    ds.OperatorsName = ""
    ds.Manufacturer = provenance.manufacturer
    ds.ManufacturerModelName = provenance.model_name[:64]
    ds.SoftwareVersions = list(provenance.software_versions)
    ds.DeviceSerialNumber = f"{provenance.operator}-{provenance.operator_version}"[:64]
    ds.InstanceNumber = 1
    ds.StructureSetLabel = "AI_CONTOURS"
    ds.StructureSetName = provenance.model_name[:64]
    ds.StructureSetDescription = output.note()
    ds.StructureSetDate = ds.InstanceCreationDate
    ds.StructureSetTime = ds.InstanceCreationTime

    for_uid = str(first.FrameOfReferenceUID)
    # Frame of Reference module (PS3.3 A.19.3 since 2021): the source's frame
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    contour_images = DicomSequence([_image_ref(headers[r.instance], r.frame) for r in plan.slices])
    series_ref = Dataset()
    series_ref.SeriesInstanceUID = first.SeriesInstanceUID
    series_ref.ContourImageSequence = contour_images
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = STUDY_COMPONENT_SOP_CLASS
    study_ref.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study_ref.RTReferencedSeriesSequence = DicomSequence([series_ref])
    for_ref = Dataset()
    for_ref.FrameOfReferenceUID = for_uid
    for_ref.RTReferencedStudySequence = DicomSequence([study_ref])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([for_ref])

    roi_items: list[Dataset] = []
    contour_items: list[Dataset] = []
    observations: list[Dataset] = []
    for roi in rois:
        item = Dataset()
        item.ROINumber = roi.number
        item.ReferencedFrameOfReferenceUID = for_uid
        item.ROIName = roi.name
        item.ROIDescription = NOT_FOR_CLINICAL_USE
        item.ROIGenerationAlgorithm = "AUTOMATIC"
        item.ROIGenerationDescription = f"{provenance.model_name} {provenance.model_version}"[:64]
        roi_items.append(item)
        contours: list[Dataset] = []
        for k in occupied:
            ref = plan.slices[int(k)]
            for polygon in slice_contours(mask[k] == roi.number):
                points = contour_to_patient(polygon, ref.position, plan, ref.pixel_spacing)
                c = Dataset()
                c.ContourImageSequence = DicomSequence(
                    [_image_ref(headers[ref.instance], ref.frame)]
                )
                c.ContourGeometricType = "CLOSED_PLANAR"
                c.NumberOfContourPoints = len(points)
                c.ContourNumber = len(contours) + 1
                c[CONTOUR_DATA] = _contour_data(points)
                contours.append(c)
        roi_contour = Dataset()
        roi_contour.ROIDisplayColor = list(roi.color)
        roi_contour.ReferencedROINumber = roi.number
        if contours:
            roi_contour.ContourSequence = DicomSequence(contours)
        contour_items.append(roi_contour)
        obs = Dataset()
        obs.ObservationNumber = roi.number
        obs.ReferencedROINumber = roi.number
        obs.RTROIInterpretedType = ""
        obs.ROIInterpreter = ""
        observations.append(obs)
    ds.StructureSetROISequence = DicomSequence(roi_items)
    ds.ROIContourSequence = DicomSequence(contour_items)
    ds.RTROIObservationsSequence = DicomSequence(observations)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def rasterize(ds: Dataset, roi_number: int, plan: SlicePlan) -> np.ndarray:
    """Fill an ROI's contours back onto ``plan``'s grid with the even-odd rule (tests, QA)."""
    from skimage.draw import polygon2mask

    out = np.zeros(plan.shape, bool)
    normal = np.asarray(plan.normal)
    dists = np.asarray(plan.distances)
    origin = np.asarray(plan.origin)
    row_sp, col_sp = plan.slices[0].pixel_spacing
    for item in ds.ROIContourSequence:
        if int(item.ReferencedROINumber) != roi_number:
            continue
        for contour in item.get("ContourSequence", []):
            points = np.asarray([float(v) for v in contour.ContourData]).reshape(-1, 3)
            k = int(np.argmin(np.abs(dists - points[0] @ normal)))
            rel = points - origin
            rc = np.column_stack(
                [
                    rel @ np.asarray(plan.col_cosine) / row_sp,
                    rel @ np.asarray(plan.row_cosine) / col_sp,
                ]
            )
            out[k] ^= polygon2mask(plan.shape[1:], rc)
    return out
