"""Helpers for the imaging writer tests: a parsed synthetic study plus a mask in its geometry."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from radflow.demo.study import SyntheticStudy, make_study
from radflow.functions.dicom_parser import logic as parser
from radflow.imaging.volume import Geometry, read_volume, write_volume
from radflow.sdk.stage import StageContext


@dataclass
class Parsed:
    study: SyntheticStudy
    root: Path
    volume: np.ndarray
    geometry: Geometry

    @property
    def uid(self) -> str:
        return self.study.target.series_instance_uid

    @property
    def dicom_dir(self) -> Path:
        return self.root / "dicom"

    def write_mask(
        self,
        mask: np.ndarray,
        *,
        geometry: Geometry | None = None,
        masks_json: dict[str, Any] | None = None,
    ) -> Path:
        folder = self.root / "masks"
        folder.mkdir(exist_ok=True)
        write_volume(
            folder / f"{self.uid}.nii.gz", mask.astype(np.uint8), geometry or self.geometry
        )
        (folder / "masks.json").write_text(
            json.dumps(masks_json or {"model": {"name": "brain-tumour-demo", "version": "7"}})
        )
        return folder


def parse_study(root: Path, **options: Any) -> Parsed:
    study = make_study(
        root / "in", options.pop("shape", (12, 40, 48)), decoys=False, other_series=False, **options
    )
    ctx = StageContext(
        "job",
        "brain",
        "dicom-parser",
        {"default": study.root},
        {"volumes": root / "volumes", "dicom": root / "dicom"},
        {},
    )
    parser.run(ctx)
    volume, geometry = read_volume(root / "volumes" / f"{study.target.series_instance_uid}.nii.gz")
    return Parsed(study, root, volume, geometry)


def make_mask(shape: tuple[int, int, int], labels: int = 1) -> np.ndarray:
    """An asymmetric mask (a flip or transpose changes it) with a hole and two components."""
    z, y, x = shape
    m = np.zeros(shape, np.uint8)
    m[2 : z - 3, y // 5 : y // 2, x // 6 : x // 2] = 1
    m[3 : z - 4, y // 4 + 2 : y // 4 + 5, x // 4 : x // 4 + 3] = 0  # a hole
    m[4:6, y - 10 : y - 4, x - 12 : x - 5] = 1  # a second component
    if labels > 1:
        m[5 : z - 2, y // 2 + 2 : y - 12, x // 2 : x - 4] = 2
    if labels > 2:
        m[1:3, 2:8, 2:8] = 3
    return m


def dciodvfy_errors(path: Path) -> list[str]:
    """Error lines from dicom3tools' dciodvfy (skips when the binary is absent)."""
    binary = shutil.which("dciodvfy")
    if binary is None:
        pytest.skip("dciodvfy (Debian dicom3tools) is not installed")
    result = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=60)
    return [
        line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")
    ]
