"""seg-writer: valid DICOM SEG, frames on the right source planes, readable by highdicom and
dcmqi."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from imaging_helpers import Parsed, dciodvfy_errors, make_mask, parse_study

from radflow.functions.seg_writer import logic
from radflow.imaging.masks import parse_labels
from radflow.imaging.volume import Geometry, read_volume
from radflow.sdk.errors import InvalidInput
from radflow.sdk.stage import StageContext


def write_seg(
    parsed: Parsed, masks: Path, variables: dict[str, str] | None = None
) -> tuple[dict[str, Any], pydicom.Dataset, Path]:
    out = parsed.root / "seg"
    ctx = StageContext(
        "job",
        "brain",
        "seg-writer",
        {"masks": masks, "dicom": parsed.dicom_dir},
        {"seg": out},
        variables or {},
    )
    summary = logic.run(ctx)
    files = list(out.glob("*.dcm"))
    assert len(files) == 1
    return summary, pydicom.dcmread(files[0]), files[0]


def to_index(geometry: Geometry, points: np.ndarray) -> np.ndarray:
    """LPS points (N, 3) -> (z, y, x) voxel indices of ``geometry``."""
    d = np.asarray(geometry.direction).reshape(3, 3)
    ijk = ((points - np.asarray(geometry.origin)) @ d) / np.asarray(geometry.spacing)
    return np.round(ijk[:, ::-1]).astype(int)


def labels_from_frames(seg: pydicom.Dataset, parsed: Parsed) -> np.ndarray:
    """Rebuild the label volume on the source grid from the SEG's own frame positions."""
    out = np.zeros(parsed.volume.shape, np.uint8)
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        ident = (
            item
            if "SegmentIdentificationSequence" in item
            else seg.SharedFunctionalGroupsSequence[0]
        )
        number = int(ident.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        position = np.array([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
        z, y, x = to_index(parsed.geometry, position[None])[0]
        assert (y, x) == (0, 0)
        out[z][frame > 0] = number
    return out


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"oblique": True, "pixel_spacing": (0.7, 1.2), "reverse": True, "shuffle": False},
        {"plane": "sagittal"},
    ],
    ids=["axial", "oblique-nonsquare-reversed", "sagittal"],
)
def test_binary_seg_is_valid_and_frames_sit_on_source_planes(
    tmp_path: Path, options: dict[str, Any]
) -> None:
    parsed = parse_study(tmp_path, **options)
    mask = make_mask(parsed.volume.shape)
    summary, seg, path = write_seg(parsed, parsed.write_mask(mask))
    assert dciodvfy_errors(path) == []
    assert summary == {
        "segmentations": 1,
        "frames": int(np.any(mask, axis=(1, 2)).sum()),
        "segments": 1,
        "segmentation_types": ["BINARY"],
    }
    np.testing.assert_array_equal(labels_from_frames(seg, parsed), mask)
    # every frame derives from the source instance at its position
    sops = {
        pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f
        for f in parsed.study.target.files
    }
    for item in seg.PerFrameFunctionalGroupsSequence:
        ref = item.DerivationImageSequence[0].SourceImageSequence[0]
        src = pydicom.dcmread(sops[ref.ReferencedSOPInstanceUID], stop_before_pixels=True)
        assert list(map(float, src.ImagePositionPatient)) == pytest.approx(
            list(map(float, item.PlanePositionSequence[0].ImagePositionPatient)), abs=1e-3
        )


def test_seg_headers_study_series_provenance(tmp_path: Path) -> None:
    parsed = parse_study(tmp_path)
    _, seg, _ = write_seg(parsed, parsed.write_mask(make_mask(parsed.volume.shape)))
    source = pydicom.dcmread(parsed.study.target.files[0], stop_before_pixels=True)
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == len(
        parsed.study.target.files
    )
    assert seg.Manufacturer == "radflow"
    assert seg.ManufacturerModelName == "brain-tumour-demo"
    assert any("brain-tumour-demo 7" in v for v in seg.SoftwareVersions)
    assert "not for clinical use" in seg.SeriesDescription
    assert seg.SegmentSequence[0].SegmentLabel == "tumour"
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Neoplasm"
    assert seg.SegmentSequence[0].SegmentAlgorithmName == "brain-tumour-demo"
    assert seg.SeriesNumber == source.SeriesNumber + 1000
    # the same inputs give the same UIDs: a redelivered event overwrites instead of duplicating
    again = pydicom.dcmread(next((tmp_path / "seg").glob("*.dcm")))
    assert again.SOPInstanceUID == seg.SOPInstanceUID


def test_highdicom_round_trip(tmp_path: Path) -> None:
    parsed = parse_study(tmp_path, oblique=True)
    mask = make_mask(parsed.volume.shape, labels=2)
    _, _, path = write_seg(
        parsed, parsed.write_mask(mask), {"NVIDIA_SEG_LABELS": '["tumour", "edema"]'}
    )
    seg = hd.seg.segread(path)
    meta = json.loads((tmp_path / "volumes" / "dicom-metadata.json").read_text())[parsed.uid]
    order = [s["sop_instance_uid"] for s in meta["slices"]]
    labels = seg.get_pixels_by_source_instance(
        order, segment_numbers=[1, 2], combine_segments=True, skip_overlap_checks=True
    )
    np.testing.assert_array_equal(labels, mask)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["tumour", "edema"]


def test_dcmqi_reads_the_seg_back_in_place(tmp_path: Path) -> None:
    parsed = parse_study(tmp_path, oblique=True, pixel_spacing=(0.8, 1.1))
    mask = make_mask(parsed.volume.shape)
    _, _, path = write_seg(parsed, parsed.write_mask(mask))
    import dcmqi  # the PyPI wheel ships the binaries

    binary = Path(dcmqi.__file__).parent / "bin" / "segimage2itkimage"
    if not binary.exists():
        pytest.skip("dcmqi's segimage2itkimage is not installed")
    out = tmp_path / "dcmqi"
    out.mkdir()
    subprocess.run(
        [
            str(binary),
            "--inputDICOM",
            str(path),
            "--outputDirectory",
            str(out),
            "--outputType",
            "nifti",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    array, geometry = read_volume(out / "1.nii.gz")
    zyx = np.argwhere(array > 0)
    points = (
        np.asarray(geometry.origin)
        + (zyx[:, ::-1] * np.asarray(geometry.spacing))
        @ np.asarray(geometry.direction).reshape(3, 3).T
    )
    back = np.zeros(mask.shape, np.uint8)
    idx = to_index(parsed.geometry, points)
    back[idx[:, 0], idx[:, 1], idx[:, 2]] = 1
    np.testing.assert_array_equal(back, mask)


def test_many_segments_use_fractional_jpeg_ls_and_stay_valid(tmp_path: Path) -> None:
    parsed = parse_study(tmp_path)
    mask = make_mask(parsed.volume.shape, labels=3)
    summary, seg, path = write_seg(
        parsed, parsed.write_mask(mask), {"NVIDIA_SEG_LABELS": "tumour, edema, necrosis"}
    )
    assert (
        seg.SegmentationType == "FRACTIONAL"
        and seg.file_meta.TransferSyntaxUID == pydicom.uid.JPEGLSLossless
    )
    assert dciodvfy_errors(path) == []
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["tumour", "edema", "necrosis"]
    np.testing.assert_array_equal(labels_from_frames(seg, parsed), mask)


def test_labelmap_on_request(tmp_path: Path) -> None:
    parsed = parse_study(tmp_path)
    mask = make_mask(parsed.volume.shape, labels=3)
    _, seg, path = write_seg(
        parsed,
        parsed.write_mask(mask),
        {"NVIDIA_SEG_LABELS": "a,b,c", "RADFLOW_SEG_TYPE": "labelmap"},
    )
    assert seg.SegmentationType == "LABELMAP"
    round_trip = hd.seg.segread(path)
    meta = json.loads((tmp_path / "volumes" / "dicom-metadata.json").read_text())[parsed.uid]
    order = [s["sop_instance_uid"] for s in meta["slices"]]
    labels = round_trip.get_pixels_by_source_instance(
        order, combine_segments=True, skip_overlap_checks=True
    )
    np.testing.assert_array_equal(labels, mask)


def test_enhanced_multiframe_source(tmp_path: Path) -> None:
    parsed = parse_study(tmp_path, enhanced=True, reverse=True)
    mask = make_mask(parsed.volume.shape)
    _, seg, path = write_seg(parsed, parsed.write_mask(mask))
    assert dciodvfy_errors(path) == []
    np.testing.assert_array_equal(labels_from_frames(seg, parsed), mask)
    frames = {
        int(i.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
        for i in seg.PerFrameFunctionalGroupsSequence
    }
    assert frames <= set(range(1, mask.shape[0] + 1))


def test_mask_with_flipped_z_axis_maps_by_position(tmp_path: Path) -> None:
    parsed = parse_study(tmp_path, oblique=True)
    mask = make_mask(parsed.volume.shape)
    g = parsed.geometry
    d = np.asarray(g.direction).reshape(3, 3)
    top = np.asarray(g.origin) + (mask.shape[0] - 1) * g.spacing[2] * d[:, 2]
    d[:, 2] *= -1
    flipped = Geometry(tuple(top), g.spacing, tuple(d.ravel()))  # type: ignore[arg-type]
    _, seg, _ = write_seg(parsed, parsed.write_mask(mask[::-1], geometry=flipped))
    np.testing.assert_array_equal(labels_from_frames(seg, parsed), mask)


def test_mask_off_the_source_grid_is_rejected(tmp_path: Path) -> None:
    parsed = parse_study(tmp_path)
    g = parsed.geometry
    shifted = Geometry(
        (g.origin[0] + 0.5 * g.spacing[0], g.origin[1], g.origin[2]), g.spacing, g.direction
    )
    with pytest.raises(InvalidInput, match="shifted in-plane") as info:
        write_seg(parsed, parsed.write_mask(make_mask(parsed.volume.shape), geometry=shifted))
    assert info.value.code == "mask_geometry_mismatch"


def test_unnamed_label_values_are_rejected(tmp_path: Path) -> None:
    parsed = parse_study(tmp_path)
    with pytest.raises(InvalidInput, match=r"label values \[2\] but only 1 segment labels"):
        write_seg(parsed, parsed.write_mask(make_mask(parsed.volume.shape, labels=2)))


def test_empty_mask_is_a_valid_no_finding_seg(tmp_path: Path) -> None:
    parsed = parse_study(tmp_path)
    _, seg, path = write_seg(parsed, parsed.write_mask(np.zeros(parsed.volume.shape, np.uint8)))
    assert dciodvfy_errors(path) == []
    assert not seg.pixel_array.any()


def test_label_variable_forms() -> None:
    assert parse_labels('["tumour", "edema"]') == ["tumour", "edema"]
    assert parse_labels(" tumour , edema ") == ["tumour", "edema"]
    assert parse_labels("") == []
    for bad in ("[1, 2]", "[broken", "a,,b"):
        with pytest.raises(InvalidInput, match="NVIDIA_SEG_LABELS"):
            parse_labels(bad)


def test_named_segment_absent_from_the_mask_is_still_described(tmp_path: Path) -> None:
    parsed = parse_study(tmp_path)
    mask = make_mask(parsed.volume.shape)
    _, seg, path = write_seg(parsed, parsed.write_mask(mask), {"NVIDIA_SEG_LABELS": "tumour,edema"})
    assert dciodvfy_errors(path) == []
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["tumour", "edema"]
    np.testing.assert_array_equal(labels_from_frames(seg, parsed), mask)


def test_keep_empty_frames_on_request(tmp_path: Path) -> None:
    parsed = parse_study(tmp_path)
    mask = make_mask(parsed.volume.shape)
    summary, seg, path = write_seg(
        parsed, parsed.write_mask(mask), {"RADFLOW_SEG_OMIT_EMPTY_FRAMES": "false"}
    )
    assert summary["frames"] == mask.shape[0] and dciodvfy_errors(path) == []
    np.testing.assert_array_equal(labels_from_frames(seg, parsed), mask)
