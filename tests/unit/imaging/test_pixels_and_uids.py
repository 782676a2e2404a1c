"""Pixel value handling (rescale, dtype, signedness) and UID generation, on in-memory datasets."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from radflow.imaging.dicom import RADFLOW_UID_ROOT, new_uid, series_to_volume


def plane(
    z: float, pixels: np.ndarray, slope: str | None = None, intercept: str | None = None
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = new_uid(str(z))
    ds.ImagePositionPatient = [0, 0, z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1, 1]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.BitsAllocated = ds.BitsStored = pixels.dtype.itemsize * 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    ds.PhotometricInterpretation = "MONOCHROME2"
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = pixels.tobytes()
    return ds


def test_unsigned_values_above_32767_are_not_wrapped() -> None:
    px = np.array([[0, 40000], [65535, 1]], np.uint16)
    vol = series_to_volume([plane(1, px), plane(0, px)])
    assert vol.array.dtype == np.uint16 and int(vol.array.max()) == 65535


def test_integral_rescale_keeps_integers_and_widens_when_needed() -> None:
    px = np.array([[0, 100], [4095, 2000]], np.int16)
    vol = series_to_volume([plane(0, px, "1", "-1024"), plane(2, px, "1", "-1024")])
    assert vol.array.dtype == np.int16 and int(vol.array.min()) == -1024
    big = np.array([[0, 65535]], np.uint16)
    vol = series_to_volume([plane(0, big, "2", "-10")])
    assert vol.array.dtype == np.int32 and int(vol.array.max()) == 131060


def test_per_slice_float_rescale() -> None:
    px = np.full((2, 2), 10, np.uint16)
    vol = series_to_volume([plane(0, px, "0.5", "1"), plane(1, px, "2.5", "0")])
    assert vol.array.dtype == np.float32
    np.testing.assert_allclose(vol.array[:, 0, 0], [6.0, 25.0])


def test_signed_16_bit_values() -> None:
    px = np.array([[-2000, 0], [32767, -32768]], np.int16)
    np.testing.assert_array_equal(series_to_volume([plane(0, px)]).array[0], px)


def test_uids_are_under_the_root_valid_and_deterministic() -> None:
    a, b = new_uid("series", "model 1"), new_uid("series", "model 1")
    assert a == b and a.startswith(RADFLOW_UID_ROOT) and len(a) <= 64
    assert new_uid("series", "model 2") != a
    assert new_uid() != new_uid()
    assert all(part == "0" or not part.startswith("0") for part in a.split("."))


@pytest.mark.parametrize("root", ["1.2.3.", "2.25."])
def test_site_root(root: str) -> None:
    assert new_uid("x", root=root).startswith(root)
