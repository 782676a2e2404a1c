"""``.nii.gz`` written as parallel gzip members (imaging/volume.py) reads back exactly
everywhere."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from radflow.imaging import volume as imaging
from radflow.imaging.volume import Geometry, read_volume, write_volume


def test_multi_member_nifti_gz_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    array = rng.integers(-1000, 3000, size=(48, 300, 310), dtype=np.int16)  # 8.9 MB: two members
    geometry = Geometry((1.5, -2.0, 30.0), (0.9, 0.8, 3.0), (1, 0, 0, 0, 0, 1, 0, -1, 0))
    path = tmp_path / "1.2.3.nii.gz"
    write_volume(path, array, geometry)
    assert array.nbytes > imaging.GZIP_MEMBER_BYTES
    assert [p.name for p in tmp_path.iterdir()] == ["1.2.3.nii.gz"]  # no temporary file left
    back, got = read_volume(path)  # ITK (zlib gzread) reads every member
    assert back.dtype == array.dtype and np.array_equal(back, array)
    assert np.allclose(got.origin, geometry.origin) and np.allclose(got.spacing, geometry.spacing)
    assert np.allclose(got.direction, geometry.direction)
    raw = gzip.decompress(path.read_bytes())  # Python's gzip (nibabel's reader) too
    assert raw[344:348] == b"n+1\x00" and len(raw) == 352 + array.nbytes
    if shutil.which("gzip"):
        subprocess.run(["gzip", "-t", str(path)], check=True)


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 4, 5)])
def test_tiny_volumes_are_one_member(tmp_path: Path, shape: tuple[int, int, int]) -> None:
    array = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    write_volume(
        tmp_path / "m.nii.gz", array, Geometry((0, 0, 0), (1, 1, 1), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    )
    assert np.array_equal(read_volume(tmp_path / "m.nii.gz")[0], array)
