"""Outputs per job revision: a revision gets new SEG/RTSTRUCT UIDs that say which revision they
are; a retried run of the same revision writes the same UIDs (docs/imaging.md)."""

from __future__ import annotations

from pathlib import Path

import pydicom
from imaging_helpers import dciodvfy_errors, make_mask, parse_study

from radflow.functions.rtstruct_writer import logic as rtstruct_logic
from radflow.functions.seg_writer import logic as seg_logic
from radflow.imaging.seg import NOT_FOR_CLINICAL_USE, OutputRevision
from radflow.sdk.stage import StageContext

WRITERS = {"seg": seg_logic, "rtstruct": rtstruct_logic}


def write(
    root: Path, inputs: dict[str, Path], output: str, revision: int, pipeline: str, run: str
) -> pydicom.Dataset:
    out = root / f"{output}-{pipeline}-r{revision}-{run}"
    ctx = StageContext(
        "job", pipeline, f"{output}-writer", inputs, {output: out}, {}, revision=revision
    )
    WRITERS[output].run(ctx)
    [path] = list(out.glob("*.dcm"))
    assert dciodvfy_errors(path) == []
    return pydicom.dcmread(path)


def test_a_revision_gets_new_uids_naming_it_and_a_retry_the_same(tmp_path: Path) -> None:
    parsed = parse_study(tmp_path)
    inputs = {
        "masks": parsed.write_mask(make_mask(parsed.volume.shape)),
        "dicom": parsed.dicom_dir,
    }
    source = pydicom.dcmread(parsed.study.target.files[0], stop_before_pixels=True)
    offsets = {"seg": 1000, "rtstruct": 2000}
    for output, what in (("seg", "SEG"), ("rtstruct", "RTSTRUCT")):
        first = write(tmp_path, inputs, output, 0, "brain", "a")
        retried = write(tmp_path, inputs, output, 0, "brain", "b")
        second = write(tmp_path, inputs, output, 2, "brain", "a")
        second_retried = write(tmp_path, inputs, output, 2, "brain", "b")
        other_pipeline = write(tmp_path, inputs, output, 0, "liver", "a")
        uids = {
            name: (ds.SOPInstanceUID, ds.SeriesInstanceUID)
            for name, ds in [("r0", first), ("r2", second), ("other", other_pipeline)]
        }
        # new per revision and per pipeline, the same for a retried run of one revision
        assert len({u for pair in uids.values() for u in pair}) == 6, uids
        assert (retried.SOPInstanceUID, retried.SeriesInstanceUID) == uids["r0"]
        assert (second_retried.SOPInstanceUID, second_retried.SeriesInstanceUID) == uids["r2"]
        # the same study, and the revision said in the outputs
        assert second.StudyInstanceUID == first.StudyInstanceUID == source.StudyInstanceUID
        model = "brain-tumour-demo"[: 64 - len(f" {what} rev 2 - {NOT_FOR_CLINICAL_USE}")]
        assert first.SeriesDescription.endswith(f" {what} - {NOT_FOR_CLINICAL_USE}")
        assert second.SeriesDescription == f"{model} {what} rev 2 - {NOT_FOR_CLINICAL_USE}"
        assert first.SeriesNumber == source.SeriesNumber + offsets[output]
        assert second.SeriesNumber == source.SeriesNumber + offsets[output] + 20000
        note = "ContentDescription" if output == "seg" else "StructureSetDescription"
        assert second.data_element(note).value == f"rev 2 - {NOT_FOR_CLINICAL_USE}"
        assert first.data_element(note).value == NOT_FOR_CLINICAL_USE


def test_descriptions_keep_the_revision_and_fit_64_characters() -> None:
    text = OutputRevision("p", 12).describe("m" * 80, "RTSTRUCT")
    assert len(text) == 64 and text.endswith(f"m RTSTRUCT rev 12 - {NOT_FOR_CLINICAL_USE}")
    assert OutputRevision("p", 0).describe("x", "SEG") == f"x SEG - {NOT_FOR_CLINICAL_USE}"
    assert OutputRevision("p", 3).series_number(1005) == 31005
