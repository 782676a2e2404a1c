"""demo/study.py produces the traps it promises (other tests rely on them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from radflow.demo.study import make_study


def test_study_layout_headers_and_traps(tmp_path: Path) -> None:
    study = make_study(tmp_path, (12, 32, 40), seed=1, oblique=True, pixel_spacing=(0.7, 1.2))
    assert set(study.series) == {"localizer", "t1", "t1c_ref", "t1c", "t1c_3x3", "flair"}
    headers = {
        name: [pydicom.dcmread(f, stop_before_pixels=True) for f in s.files]
        for name, s in study.series.items()
    }
    every = [h for hs in headers.values() for h in hs]
    assert {h.StudyInstanceUID for h in every} == {study.study_instance_uid}
    assert {h.FrameOfReferenceUID for h in every} == {study.frame_of_reference_uid}
    assert {h.Modality for h in every} == {"MR"} and all(
        h.StudyDescription.startswith("Brain") for h in every
    )
    loc = headers["localizer"]
    assert all("LOCALIZER" in h.ImageType for h in loc)
    assert len({tuple(map(float, h.ImageOrientationPatient)) for h in loc}) == 3
    assert [h.SeriesDescription for h in headers["t1c_ref"]][0] == "Ax T1c ref"
    assert "3x3" in headers["t1c_3x3"][0].SeriesDescription
    target = headers["t1c"]
    assert [float(v) for v in target[0].PixelSpacing] == [0.7, 1.2]
    normal = np.cross(
        *np.array([float(v) for v in target[0].ImageOrientationPatient]).reshape(2, 3)
    )
    by_position = sorted(
        target, key=lambda h: np.array([float(v) for v in h.ImagePositionPatient]) @ normal
    )
    numbers = [int(h.InstanceNumber) for h in by_position]
    assert sorted(numbers) == list(range(1, 13)) and numbers != sorted(numbers)  # shuffled
    assert study.label.shape == study.target_values.shape == (12, 32, 40)
    assert study.label.dtype == np.uint8 and set(np.unique(study.label)) <= {0, 1}
    assert study.geometry.spacing == (1.2, 0.7, 3.0)
