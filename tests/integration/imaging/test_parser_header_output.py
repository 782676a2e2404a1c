"""dicom-parser's ``RADFLOW_DICOM_OUTPUT=headers``: the ``dicom`` output without pixel data."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pydicom

from radflow.demo.study import make_study
from radflow.functions.dicom_parser import logic
from radflow.sdk.stage import StageContext

SEED_RULE = {
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


def _run(tmp: Path, study_dir: Path, output: str) -> Path:
    ctx = StageContext(
        job_id="j",
        pipeline="p",
        stage="dicom-parser",
        inputs={"default": study_dir},
        outputs={"volumes": tmp / "volumes", "dicom": tmp / "dicom"},
        variables={
            "NVIDIA_CLARA_SELECTION_RULES_BASE64": base64.b64encode(
                json.dumps(SEED_RULE).encode()
            ).decode(),
            "RADFLOW_DICOM_OUTPUT": output,
        },
        work_dir=tmp,
    )
    for folder in ctx.outputs.values():
        folder.mkdir(parents=True)
    logic.run(ctx)
    return tmp / "dicom"


def test_headers_output_keeps_every_header_and_drops_only_the_pixels(tmp_path: Path) -> None:
    study = make_study(tmp_path / "study", (8, 32, 32), seed=4, compression="rle")
    full = _run(tmp_path / "full", study.root, "full")
    heads = _run(tmp_path / "heads", study.root, "headers")
    full_files = sorted(p.relative_to(full) for p in full.rglob("*.dcm"))
    assert full_files == sorted(p.relative_to(heads) for p in heads.rglob("*.dcm"))
    assert len(full_files) == len(study.target.files)
    for rel in full_files:
        original = pydicom.dcmread(full / rel)
        header = pydicom.dcmread(heads / rel)
        assert "PixelData" in original and "PixelData" not in header
        assert (heads / rel).stat().st_size < (full / rel).stat().st_size
        del original.PixelData
        assert header == original and header.file_meta == original.file_meta
