"""DICOM Segmentation objects (PS3.3 A.51, C.8.20) with required provenance.

The only module that imports highdicom. The caller passes the source images in the mask's z
order (highdicom "makes no attempt to sort", pitfall §3.13): :func:`build_segmentation` never
resamples, the mask must already be on the source grid.

Segmentation type (:func:`choose_type`): BINARY for one or two segments (every viewer reads
it); for more, FRACTIONAL with JPEG-LS lossless frames (far smaller, still the classic SOP
class, validated by dciodvfy); LABELMAP (Label Map Segmentation Storage, DICOM 2024: one frame
per slice whatever the number of segments) only on request, since few viewers read it yet.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless

from radflow.imaging.dicom import RADFLOW_UID_ROOT, new_uid
from radflow.sdk.errors import InvalidInput

#: Shown in SeriesDescription/ContentDescription of every AI output.
NOT_FOR_CLINICAL_USE = "AI generated, not for clinical use"

# SNOMED CT concepts (CID 7150 category / CID 7151 type) for the label names we know.
_ALTERED = Code("49755003", "SCT", "Morphologically Altered Structure")
_ANATOMY = Code("91723000", "SCT", "Anatomical Structure")
_TISSUE = Code("85756007", "SCT", "Tissue")
KNOWN_LABELS: Mapping[str, tuple[Code, Code]] = {
    "tumour": (_ALTERED, Code("108369006", "SCT", "Neoplasm")),
    "tumor": (_ALTERED, Code("108369006", "SCT", "Neoplasm")),
    "neoplasm": (_ALTERED, Code("108369006", "SCT", "Neoplasm")),
    "lesion": (_ALTERED, Code("52988006", "SCT", "Lesion")),
    "edema": (_ALTERED, Code("79654002", "SCT", "Edema")),
    "oedema": (_ALTERED, Code("79654002", "SCT", "Edema")),
    "necrosis": (_ALTERED, Code("6574001", "SCT", "Necrosis")),
    "brain": (_ANATOMY, Code("12738006", "SCT", "Brain")),
}
PALETTE = [
    (255, 64, 64),
    (64, 200, 64),
    (64, 128, 255),
    (255, 200, 0),
    (200, 64, 255),
    (0, 200, 200),
]


@dataclass(frozen=True)
class Provenance:
    """Who made an output (house style §4.9): required, never defaulted by the writers."""

    operator: str  #: e.g. "seg-writer"
    operator_version: str
    model_name: str
    model_version: str
    uid_root: str = RADFLOW_UID_ROOT
    manufacturer: str = "radflow"

    @property
    def software_versions(self) -> tuple[str, str]:
        return (
            f"{self.operator} {self.operator_version}",
            f"{self.model_name} {self.model_version}",
        )


#: SeriesNumber step between revisions: revision r's outputs are numbered base + r x this
REVISION_SERIES_STEP = 10000


@dataclass(frozen=True)
class OutputRevision:
    """Which job an output belongs to: a study's pipeline run at one revision (docs/imaging.md,
    "Output UIDs and revisions").

    Output UIDs are derived from the study, the pipeline and the revision (plus the source series,
    operator, model and labels), never from a clock or a random source: a retried run of the
    same revision writes the same UIDs again (at-least-once delivery stays idempotent), and a
    revision (instances re-sent or added after the first job, ``study.revised``) gets new ones,
    so its results never overwrite, at the PACS, the results of the revision before. Revision 0
    is the first job of a study; a revision r >= 1 says so in its outputs ("rev r" in
    SeriesDescription and ContentDescription, SeriesNumber + r x :data:`REVISION_SERIES_STEP`).
    """

    pipeline: str
    revision: int

    def uid_entropy(self, study_instance_uid: str) -> tuple[str, ...]:
        return (study_instance_uid, self.pipeline, f"revision {self.revision}")

    def series_number(self, base: int) -> int:
        return base + REVISION_SERIES_STEP * self.revision

    def describe(self, model: str, kind: str, width: int = 64) -> str:
        """SeriesDescription: ``"<model> <kind> rev <r> - <not for clinical use>"`` within
        ``width`` characters (the model name is shortened, nothing else); revision 0 says no
        revision."""
        rev = f" rev {self.revision}" if self.revision else ""
        rest = f" {kind}{rev} - {NOT_FOR_CLINICAL_USE}"
        return model[: max(0, width - len(rest))] + rest

    def note(self) -> str:
        """ContentDescription / StructureSetDescription: ``"rev <r> - <not for clinical use>"``."""
        return (
            f"rev {self.revision} - {NOT_FOR_CLINICAL_USE}"
            if self.revision
            else NOT_FOR_CLINICAL_USE
        )


@dataclass(frozen=True)
class SegmentSpec:
    number: int  #: value in the label mask, 1-based
    label: str
    category: Code
    type: Code
    color: tuple[int, int, int] = field(default=(255, 64, 64))


def segment_specs(labels: Sequence[str]) -> list[SegmentSpec]:
    """Segment i+1 = ``labels[i]``; known names get their SNOMED CT codes, others "Tissue"."""
    specs = []
    for n, label in enumerate(labels, start=1):
        category, kind = KNOWN_LABELS.get(label.strip().casefold(), (_TISSUE, _TISSUE))
        specs.append(
            SegmentSpec(n, label.strip()[:64], category, kind, PALETTE[(n - 1) % len(PALETTE)])
        )
    return specs


def choose_type(requested: str, n_segments: int) -> str:
    """``auto`` -> BINARY up to 2 segments, else FRACTIONAL (JPEG-LS); or the requested type."""
    requested = requested.upper()
    if requested == "AUTO":
        return "BINARY" if n_segments <= 2 else "FRACTIONAL"
    if requested not in ("BINARY", "FRACTIONAL", "LABELMAP"):
        raise InvalidInput(
            f"segmentation type {requested!r}: use auto, binary, fractional or labelmap"
        )
    return requested


def build_segmentation(
    source_images: Sequence[Dataset],
    mask: np.ndarray,
    segments: Sequence[SegmentSpec],
    provenance: Provenance,
    *,
    output: OutputRevision,
    series_number: int,
    segmentation_type: str = "auto",
    omit_empty_frames: bool = True,
) -> Dataset:
    """A SEG over ``source_images`` from a (z, y, x) label mask (values = segment numbers).

    ``source_images`` are either one dataset per mask slice in mask z order, or a single
    multi-frame image whose frames are in mask z order. Headers without pixel data suffice.
    UIDs are derived from the study, pipeline and revision (``output``), the source series,
    model and labels: rewriting the same result of the same revision gives the same
    SeriesInstanceUID/SOPInstanceUID, another revision gets new ones (:class:`OutputRevision`).
    """
    if mask.ndim != 3:
        raise InvalidInput(f"mask must be 3D (z, y, x), got shape {mask.shape}")
    occupied = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    present = set(np.flatnonzero(np.bincount(mask[occupied].ravel(), minlength=1)).tolist()) - {0}
    unknown = sorted(v for v in present if v > len(segments))
    if unknown:
        raise InvalidInput(
            f"mask holds label values {unknown} but only {len(segments)} segment labels are named "
            "(set NVIDIA_SEG_LABELS)",
            code="unlabelled_mask_values",
        )
    seg_type = choose_type(segmentation_type, len(segments))
    first = source_images[0]
    entropy = (
        *output.uid_entropy(str(first.StudyInstanceUID)),
        str(first.SeriesInstanceUID),
        provenance.operator,
        provenance.model_name,
        provenance.model_version,
        seg_type,
        *(s.label for s in segments),
    )
    algorithm = hd.AlgorithmIdentificationSequence(
        name=provenance.model_name[:64],
        family=codes.cid7162.ArtificialIntelligence,
        version=provenance.model_version[:64],
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=s.number,
            segment_label=s.label,
            segmented_property_category=s.category,
            segmented_property_type=s.type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=new_uid(*entropy, str(s.number), "tracking", root=provenance.uid_root),
            tracking_id=s.label,
            display_color=hd.color.CIELabColor(*_lab(s.color)),
        )
        for s in segments
    ]
    # FRACTIONAL takes the label map too: highdicom scales each segment's 0/1 plane to 0..255
    # (a float (z, y, x, segments) stack would cost segments x 4 bytes per voxel)
    syntax = ExplicitVRLittleEndian if seg_type == "BINARY" else JPEGLSLossless
    sources = list(source_images)
    planes = mask
    if omit_empty_frames and len(sources) == mask.shape[0] and 0 < len(occupied) < len(sources):
        # highdicom's per-frame work scales with the source count: hand it only the planes
        # holding a segment (what omit_empty_frames keeps) and list every source afterwards
        sources = [sources[int(k)] for k in occupied]
        planes = mask[occupied]
    pixel_array = (
        planes.astype(np.uint8, copy=False)
        if len(segments) > 1 or seg_type != "BINARY"
        else (planes > 0)
    )
    equipment = hd.ContributingEquipment(
        manufacturer=provenance.manufacturer,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=provenance.model_name[:64],
        software_versions=list(provenance.software_versions),
        contribution_description=NOT_FOR_CLINICAL_USE,
    )
    now = dt.datetime.now(dt.UTC)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixel_array,
        segmentation_type=seg_type,
        segment_descriptions=descriptions,
        series_instance_uid=new_uid(*entropy, "series", root=provenance.uid_root),
        series_number=series_number,
        sop_instance_uid=new_uid(*entropy, "instance", root=provenance.uid_root),
        instance_number=1,
        manufacturer=provenance.manufacturer,
        manufacturer_model_name=provenance.model_name[:64],
        software_versions=list(provenance.software_versions),  # type: ignore[arg-type]  # LO multi-value: a tuple warns
        device_serial_number=f"{provenance.operator}-{provenance.operator_version}"[:64],
        content_description=output.note(),
        content_label="AI_SEGMENTATION",
        content_creator_name=None,
        series_description=output.describe(provenance.model_name, "SEG"),
        transfer_syntax_uid=syntax,
        omit_empty_frames=omit_empty_frames,
        contributing_equipment=[equipment],
        content_date=now.date(),
        content_time=now.time().replace(microsecond=0),
    )
    _reference_all_sources(seg, source_images)
    return seg


def _reference_all_sources(seg: hd.seg.Segmentation, source_images: Sequence[Dataset]) -> None:
    """ReferencedSeriesSequence lists every source instance, also those without a frame."""
    listed = {
        item.ReferencedSOPInstanceUID
        for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    for ds in source_images:
        if ds.SOPInstanceUID not in listed:
            item = Dataset()
            item.ReferencedSOPClassUID = ds.SOPClassUID
            item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
            seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence.append(item)
            listed.add(ds.SOPInstanceUID)


def _lab(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    """sRGB (0-255) to CIE L*a*b* (D65), the colour space of RecommendedDisplayCIELabValue."""
    c = np.array(rgb, float) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = (m @ c) / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return (float(116 * f[1] - 16), float(500 * (f[0] - f[1])), float(200 * (f[1] - f[2])))


def read_segmentation_mask(path: str, n_segments: int) -> tuple[np.ndarray, list[str]]:
    """Read a SEG back (demo validation, round trips): labels over its source images.

    Returns the (z, y, x) labels in the order of the source SOP Instance UIDs the SEG references
    (as highdicom lists them) and that order.
    """
    seg = hd.seg.segread(path)
    uids = [uid for _, _, uid in seg.get_source_image_uids()]
    array = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids,
        segment_numbers=list(range(1, n_segments + 1)),
        combine_segments=True,
        skip_overlap_checks=True,
    )
    return np.asarray(array), [str(uid) for uid in uids]
