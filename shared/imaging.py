"""Volumes on disk: the only module that imports SimpleITK.

A volume is a numpy array in (z, y, x) order plus a :class:`Geometry` in LPS patient
coordinates (DICOM's own frame, which SimpleITK uses too): ``origin`` is the centre of the first
voxel, ``spacing`` is (x, y, z) in mm, ``direction`` is the 3x3 matrix whose columns are the
x, y and z axis directions (row-major, as SimpleITK stores it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class Geometry:
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, row-major

    def index_to_lps(self, ijk: np.ndarray) -> np.ndarray:
        """Map (N, 3) voxel indices in (x, y, z) order to LPS millimetres."""
        d = np.asarray(self.direction, float).reshape(3, 3)
        return np.asarray(self.origin) + (np.asarray(ijk, float) * np.asarray(self.spacing)) @ d.T


def to_image(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetOrigin(geometry.origin)
    image.SetSpacing(geometry.spacing)
    image.SetDirection(geometry.direction)
    return image


def write_volume(path: Path, array: np.ndarray, geometry: Geometry) -> None:
    """Write NIfTI (``.nii``/``.nii.gz``) or MetaImage (``.mhd``/``.mha``), chosen by suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(to_image(array, geometry), str(path), useCompression=path.suffix == ".gz")


def read_volume(path: Path) -> tuple[np.ndarray, Geometry]:
    """Read a volume written by :func:`write_volume` (or any ITK-readable file)."""
    image = sitk.ReadImage(str(path))
    geometry = Geometry(
        origin=tuple(image.GetOrigin()),  # type: ignore[arg-type]
        spacing=tuple(image.GetSpacing()),  # type: ignore[arg-type]
        direction=tuple(image.GetDirection()),
    )
    return sitk.GetArrayFromImage(image), geometry
