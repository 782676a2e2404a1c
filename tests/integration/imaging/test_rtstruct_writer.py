"""rtstruct-writer: valid RT Structure Set, contours on the source planes, rasterising back gives
the mask."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from imaging_helpers import Parsed, dciodvfy_errors, make_mask, parse_study

from radflow.functions.rtstruct_writer import logic
from radflow.imaging import masks, rtstruct
from radflow.sdk.errors import InvalidInput
from radflow.sdk.stage import StageContext


def write_rt(
    parsed: Parsed, mask_dir: Path, variables: dict[str, str] | None = None
) -> tuple[dict[str, Any], pydicom.Dataset, Path]:
    out = parsed.root / "rtstruct"
    ctx = StageContext(
        "job",
        "brain",
        "rtstruct-writer",
        {"masks": mask_dir, "dicom": parsed.dicom_dir},
        {"rtstruct": out},
        variables or {},
    )
    summary = logic.run(ctx)
    files = list(out.glob("*.dcm"))
    assert len(files) == 1
    return summary, pydicom.dcmread(files[0]), files[0]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.mark.parametrize(
    "options",
    [
        {"oblique": True, "pixel_spacing": (0.7, 1.2)},
        {"plane": "sagittal", "reverse": True, "shuffle": False},
        {"enhanced": True},
    ],
    ids=["oblique-nonsquare", "sagittal-reversed", "enhanced"],
)
def test_rtstruct_valid_contours_on_source_planes_and_rasterise_back(
    tmp_path: Path, options: dict[str, Any]
) -> None:
    parsed = parse_study(tmp_path, **options)
    mask = make_mask(parsed.volume.shape, labels=2)
    mask_dir = parsed.write_mask(mask)
    summary, ds, path = write_rt(parsed, mask_dir, {"NVIDIA_SEG_LABELS": "tumour,edema"})
    assert dciodvfy_errors(path) == []
    assert summary["structure_sets"] == 1 and summary["rois"] == 2
    item = masks.load_masked_series(mask_dir, parsed.dicom_dir)[0]
    for roi in (1, 2):
        back = rtstruct.rasterize(ds, roi, item.plan)
        assert dice(back, item.mask == roi) >= 0.99
    # the hole of label 1 stays a hole (even-odd rule over outer + inner contours)
    z, y, x = mask.shape
    assert (
        mask[4, y // 4 + 3, x // 4 + 1] == 0
        and not rtstruct.rasterize(ds, 1, item.plan)[4, y // 4 + 3, x // 4 + 1]
    )
    # each contour lies on the plane of the image it references, inside that image
    by_sop = {h.SOPInstanceUID: h for h in item.headers}
    normal = np.asarray(item.plan.normal)
    for roi_contour in ds.ROIContourSequence:
        for contour in roi_contour.ContourSequence:
            points = np.asarray([float(v) for v in contour.ContourData]).reshape(-1, 3)
            assert contour.NumberOfContourPoints == len(points) >= 3
            ref = contour.ContourImageSequence[0]
            k = next(
                i
                for i, s in enumerate(item.plan.slices)
                if item.headers[s.instance].SOPInstanceUID == ref.ReferencedSOPInstanceUID
                and (s.frame is None or s.frame + 1 == ref.get("ReferencedFrameNumber"))
            )
            plane = np.asarray(item.plan.slices[k].position)
            np.testing.assert_allclose((points - plane) @ normal, 0, atol=1e-3)
            assert ref.ReferencedSOPInstanceUID in by_sop


def test_rtstruct_references_study_series_and_instances(tmp_path: Path) -> None:
    parsed = parse_study(tmp_path)
    _, ds, _ = write_rt(parsed, parsed.write_mask(make_mask(parsed.volume.shape)))
    source = pydicom.dcmread(parsed.study.target.files[0], stop_before_pixels=True)
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.PatientID == source.PatientID and ds.Modality == "RTSTRUCT"
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    for_ref = ds.ReferencedFrameOfReferenceSequence[0]
    assert for_ref.FrameOfReferenceUID == source.FrameOfReferenceUID
    study_ref = for_ref.RTReferencedStudySequence[0]
    assert study_ref.ReferencedSOPInstanceUID == source.StudyInstanceUID
    series_ref = study_ref.RTReferencedSeriesSequence[0]
    assert series_ref.SeriesInstanceUID == source.SeriesInstanceUID
    all_sops = {
        pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
        for f in parsed.study.target.files
    }
    assert {i.ReferencedSOPInstanceUID for i in series_ref.ContourImageSequence} == all_sops
    roi = ds.StructureSetROISequence[0]
    assert (roi.ROINumber, roi.ROIName, roi.ROIGenerationAlgorithm) == (1, "tumour", "AUTOMATIC")
    assert ds.RTROIObservationsSequence[0].ReferencedROINumber == 1
    assert ds.ROIContourSequence[0].ContourSequence[0].ContourGeometricType == "CLOSED_PLANAR"
    assert ds.Manufacturer == "radflow" and "not for clinical use" in ds.SeriesDescription


def test_rasterised_phantom_tumour_dice(tmp_path: Path) -> None:
    parsed = parse_study(tmp_path, shape=(24, 64, 64), seed=2, oblique=True)
    label = parsed.study.label
    assert label.sum() > 100
    mask_dir = parsed.write_mask(label)
    _, ds, path = write_rt(parsed, mask_dir)
    assert dciodvfy_errors(path) == []
    item = masks.load_masked_series(mask_dir, parsed.dicom_dir)[0]
    assert dice(rtstruct.rasterize(ds, 1, item.plan), label.astype(bool)) >= 0.9


def test_empty_mask_gives_valid_structure_set_without_contours(tmp_path: Path) -> None:
    parsed = parse_study(tmp_path)
    summary, ds, path = write_rt(parsed, parsed.write_mask(np.zeros(parsed.volume.shape, np.uint8)))
    assert dciodvfy_errors(path) == []
    assert summary["contours"] == 0 and "ContourSequence" not in ds.ROIContourSequence[0]


def test_unnamed_label_values_are_rejected(tmp_path: Path) -> None:
    parsed = parse_study(tmp_path)
    with pytest.raises(InvalidInput, match=r"label values \[2\] but only 1 ROI names"):
        write_rt(parsed, parsed.write_mask(make_mask(parsed.volume.shape, labels=2)))


def test_slice_contours_single_pixel_and_diagonal() -> None:
    one = np.zeros((5, 5), bool)
    one[2, 2] = True
    [c] = rtstruct.slice_contours(one)
    assert np.all(np.abs(c - [2, 2]).max(axis=1) <= 0.5)
    diag = np.eye(4, dtype=bool)
    assert len(rtstruct.slice_contours(diag)) == 4  # 4-connected components
