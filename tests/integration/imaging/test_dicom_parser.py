"""dicom-parser end to end on synthetic studies: selection, geometry, pixels, outputs."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from radflow.demo.study import SyntheticStudy, make_study
from radflow.functions.dicom_parser import logic
from radflow.imaging import dicom
from radflow.imaging.volume import read_volume
from radflow.sdk.errors import InvalidInput
from radflow.sdk.stage import StageContext

SEED = {
    "selections": [
        {
            "name": "T1C",
            "conditions": {
                "Modality": "(?i)^MR",
                "StudyDescription": "(?i)Brain",
                "ImageType": ["ORIGINAL", "PRIMARY"],
                "SeriesDescription": "^(?=.*T1c)(?!.*(ref|rfmt|[0-9]x[0-9])).*",
            },
        }
    ]
}
SHAPE = (10, 24, 32)  # non-square matrix: a rows/columns swap cannot go unnoticed


def seed_variables(rules: dict[str, Any] = SEED, **extra: str) -> dict[str, str]:
    return {
        "NVIDIA_CLARA_SELECTION_RULES_BASE64": base64.b64encode(
            json.dumps(rules).encode()
        ).decode(),
        **extra,
    }


def run_parser(
    tmp_path: Path, study: SyntheticStudy, variables: dict[str, str]
) -> tuple[dict[str, Any], Path, Path]:
    vol, dcm = tmp_path / "out-volumes", tmp_path / "out-dicom"
    ctx = StageContext(
        "job",
        "brain",
        "dicom-parser",
        {"default": study.root},
        {"volumes": vol, "dicom": dcm},
        variables,
    )
    return logic.run(ctx), vol, dcm


def assert_geometry(array: np.ndarray, geometry: Any, study: SyntheticStudy) -> None:
    np.testing.assert_allclose(geometry.origin, study.geometry.origin, atol=1e-3)
    np.testing.assert_allclose(geometry.spacing, study.geometry.spacing, atol=1e-4)
    np.testing.assert_allclose(geometry.direction, study.geometry.direction, atol=1e-4)
    np.testing.assert_array_equal(array, study.target_values)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"oblique": True, "pixel_spacing": (0.7, 1.3)},
        {"reverse": True, "shuffle": False, "plane": "sagittal"},
        {"plane": "coronal", "oblique": True, "reverse": True},
    ],
    ids=["axial", "oblique-nonsquare", "sagittal-reversed", "coronal-oblique-reversed"],
)
def test_seed_rule_selects_target_and_nifti_matches_dicom_geometry(
    tmp_path: Path, options: dict[str, Any]
) -> None:
    study = make_study(tmp_path / "in", SHAPE, seed=3, **options)
    summary, vol, dcm = run_parser(tmp_path, study, seed_variables())
    uid = study.target.series_instance_uid
    assert summary == {
        "series": 6,
        "instances": 53,
        "skipped_files": 0,
        "selected": {"T1C": 1},
        "volumes": 1,
    }
    assert json.loads((vol / "selected-series.json").read_text()) == {"T1C": [uid]}
    assert json.loads((vol / "series-images.json").read_text()) == {uid: f"{uid}.nii.gz"}
    array, geometry = read_volume(vol / f"{uid}.nii.gz")
    assert_geometry(array, geometry, study)
    copied = sorted(p.name for p in (dcm / uid).iterdir())
    assert copied == sorted(f"{pydicom.dcmread(f).SOPInstanceUID}.dcm" for f in study.target.files)
    meta = json.loads((vol / "dicom-metadata.json").read_text())[uid]
    # z index -> instance whose position lies at that z
    for z, entry in enumerate(meta["slices"]):
        ds = pydicom.dcmread(
            dcm / uid / f"{entry['sop_instance_uid']}.dcm", stop_before_pixels=True
        )
        expected = (
            np.array(study.geometry.origin)
            + z * study.geometry.spacing[2] * np.array(study.geometry.direction).reshape(3, 3)[:, 2]
        )
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], expected, atol=1e-3)


def test_geometry_agrees_with_simpleitk_series_reader(tmp_path: Path) -> None:
    """An independent reader (ITK/GDCM) gives the same grid for an oblique, non-square series."""
    study = make_study(
        tmp_path / "in",
        SHAPE,
        seed=4,
        oblique=True,
        pixel_spacing=(0.6, 1.1),
        other_series=False,
        decoys=False,
    )
    volume = dicom.series_to_volume([pydicom.dcmread(f) for f in study.target.files])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(
        sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(study.target.files[0].parent))
    )
    image = reader.Execute()
    np.testing.assert_allclose(volume.plan.origin, image.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(volume.plan.spacing, image.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(volume.plan.direction, image.GetDirection(), atol=1e-4)
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(image))


@pytest.mark.parametrize("compression", ["rle", "jpeg-ls", "jpeg2000"])
def test_compressed_target_with_rescale(tmp_path: Path, compression: str) -> None:
    # OpenJPEG's default 6 resolution levels need at least 32 pixels a side
    study = make_study(
        tmp_path / "in",
        (8, 40, 48),
        seed=5,
        compression=compression,
        rescale=(2.0, -100.0),
        decoys=False,
        other_series=False,
    )
    assert pydicom.dcmread(study.target.files[0]).file_meta.TransferSyntaxUID.is_compressed
    summary, vol, _ = run_parser(tmp_path, study, {})
    array, geometry = read_volume(vol / f"{study.target.series_instance_uid}.nii.gz")
    assert_geometry(array, geometry, study)  # target_values include slope and intercept


@pytest.mark.parametrize(
    "options", [{"plane": "axial", "reverse": True}, {"oblique": True, "compression": "rle"}]
)
def test_enhanced_multiframe_target(tmp_path: Path, options: dict[str, Any]) -> None:
    study = make_study(
        tmp_path / "in", SHAPE, seed=6, enhanced=True, rescale=(1.5, 10.0), **options
    )
    assert len(study.target.files) == 1
    summary, vol, _ = run_parser(tmp_path, study, seed_variables())
    uid = study.target.series_instance_uid
    array, geometry = read_volume(vol / f"{uid}.nii.gz")
    np.testing.assert_allclose(array, study.target_values, atol=1e-3)
    np.testing.assert_allclose(geometry.origin, study.geometry.origin, atol=1e-3)
    np.testing.assert_allclose(geometry.direction, study.geometry.direction, atol=1e-4)
    frames = [
        e["frame"] for e in json.loads((vol / "dicom-metadata.json").read_text())[uid]["slices"]
    ]
    assert sorted(frames) == list(range(1, SHAPE[0] + 1))
    if options.get("reverse"):
        assert frames == list(range(SHAPE[0], 0, -1))


def test_mhd_on_request(tmp_path: Path) -> None:
    study = make_study(tmp_path / "in", SHAPE, seed=7, decoys=False, other_series=False)
    _, vol, _ = run_parser(tmp_path, study, {"RADFLOW_VOLUME_FORMAT": "mhd"})
    uid = study.target.series_instance_uid
    array, geometry = read_volume(vol / f"{uid}.mhd")
    assert_geometry(array, geometry, study)


def test_no_rules_selects_every_volume_and_skips_the_localizer(tmp_path: Path) -> None:
    study = make_study(tmp_path / "in", SHAPE, seed=8)
    summary, vol, _ = run_parser(tmp_path, study, {})
    assert summary["selected"] == {"": 5} and summary["volumes"] == 5
    trace = json.loads((vol / "match-trace.json").read_text())["series"]
    loc = next(
        t
        for t in trace
        if t["series_instance_uid"] == study.series["localizer"].series_instance_uid
    )
    assert (
        loc["orientation"] == "Mixed" and "mixed ImageOrientationPatient" in loc["volume"]["error"]
    )


def test_rule_selecting_an_inconsistent_series_fails_naming_series_and_rule(tmp_path: Path) -> None:
    study = make_study(tmp_path / "in", SHAPE, seed=9)
    rules = {"selections": [{"name": "LOC", "conditions": {"ImageType": ["LOCALIZER"]}}]}
    with pytest.raises(
        InvalidInput, match=r"series 0: mixed ImageOrientationPatient .*selected by 'LOC'"
    ) as info:
        run_parser(tmp_path, study, seed_variables(rules))
    assert info.value.code == "inconsistent_series"
    assert "1.2.826" not in str(info.value)  # no UIDs in messages that reach events and logs


def test_duplicate_positions_rejected(tmp_path: Path) -> None:
    study = make_study(tmp_path / "in", SHAPE, seed=10, decoys=False, other_series=False)
    ds = pydicom.dcmread(study.target.files[0])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()  # a second phase at the same position
    ds.save_as(study.root / "phase2.dcm")
    with pytest.raises(InvalidInput, match="duplicate slice positions"):
        run_parser(tmp_path, study, seed_variables())


def test_no_match_fails_with_per_series_reasons(tmp_path: Path) -> None:
    study = make_study(tmp_path / "in", SHAPE, seed=11, decoys=True, other_series=False)
    rules = {"selections": [{"name": "CT", "conditions": {"Modality": "CT"}}]}
    with pytest.raises(
        InvalidInput, match=r"selection 'CT' matched none of 3 series \(series 0: failed: Modality"
    ) as info:
        run_parser(tmp_path, study, seed_variables(rules))
    assert "1.2.826" not in str(info.value) and "Phantom" not in str(info.value)


def test_input_without_dicom_is_invalid(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "junk.dcm").write_bytes(b"not dicom")
    ctx = StageContext(
        "j",
        "p",
        "s",
        {"default": tmp_path / "in"},
        {"volumes": tmp_path / "v", "dicom": tmp_path / "d"},
        {},
    )
    with pytest.raises(InvalidInput, match=r"no DICOM instances \(1 unreadable"):
        logic.run(ctx)


def test_implicit_vr_and_fast_path_match_pydicom_decoding(tmp_path: Path) -> None:
    study = make_study(
        tmp_path / "in", SHAPE, seed=12, oblique=True, decoys=False, other_series=False
    )
    for f in study.target.files:
        ds = pydicom.dcmread(f)
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        ds.save_as(f, implicit_vr=True, little_endian=True, enforce_file_format=True)
    fast = dicom.read_series_volume(list(study.target.files))
    slow = dicom.series_to_volume([pydicom.dcmread(f) for f in study.target.files])
    np.testing.assert_array_equal(fast.array, study.target_values)
    np.testing.assert_array_equal(fast.array, slow.array)
    assert fast.plan == slow.plan


@pytest.mark.parametrize("chunk", [64, 1000, 1 << 20])
def test_header_chunk_boundary_falls_back_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    """Headers longer than the in-memory chunk (or cut mid-element) still parse completely."""
    monkeypatch.setattr(dicom, "HEADER_CHUNK", chunk)
    study = make_study(
        tmp_path / "in", SHAPE, seed=13, decoys=False, other_series=False, enhanced=chunk == 1000
    )
    instances, skipped = dicom.scan_folder(study.root)
    assert skipped == [] and all(i.pixel_offset is not None for i in instances)
    for inst in instances:
        assert inst.header == pydicom.dcmread(inst.path, stop_before_pixels=True)
    volume = dicom.instances_to_volume(instances)
    np.testing.assert_array_equal(volume.array, study.target_values)
    (tmp_path / "in" / "no-pixels.dcm").write_bytes(b"")
    sr = pydicom.dcmread(study.target.files[0], stop_before_pixels=True)
    sr.SOPInstanceUID = pydicom.uid.generate_uid()
    sr.save_as(tmp_path / "in" / "header-only.dcm", enforce_file_format=True)
    found = {i.path.name: i for i in dicom.scan_folder(study.root)[0]}
    assert found["header-only.dcm"].pixel_offset is None


@pytest.mark.parametrize("compression", [None, "rle"])
def test_volume_from_bytes_matches_files(tmp_path: Path, compression: str | None) -> None:
    study = make_study(
        tmp_path / "in",
        SHAPE,
        seed=14,
        oblique=True,
        compression=compression,
        rescale=(0.5, 3.0),
        decoys=False,
        other_series=False,
    )
    from_bytes = dicom.volume_from_bytes([f.read_bytes() for f in study.target.files])
    np.testing.assert_allclose(from_bytes.array, study.target_values)
    assert from_bytes.plan == dicom.read_series_volume(list(study.target.files)).plan


def test_jpeg_lossless_process14_target(tmp_path: Path) -> None:
    """Classic JPEG Lossless (1.2.840.10008.1.2.4.70), transcoded by GDCM (pydicom has no
    encoder)."""
    gdcm = pytest.importorskip("gdcm")
    study = make_study(
        tmp_path / "in", SHAPE, seed=15, oblique=True, decoys=False, other_series=False
    )
    for f in study.target.files:
        reader = gdcm.ImageReader()
        reader.SetFileName(str(f))
        assert reader.Read()
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
        change.SetInput(reader.GetImage())
        assert change.Change()
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(f))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        assert writer.Write()
    assert (
        pydicom.dcmread(study.target.files[0]).file_meta.TransferSyntaxUID
        == pydicom.uid.JPEGLosslessSV1
    )
    _, vol, _ = run_parser(tmp_path, study, seed_variables())
    array, geometry = read_volume(vol / f"{study.target.series_instance_uid}.nii.gz")
    assert_geometry(array, geometry, study)
