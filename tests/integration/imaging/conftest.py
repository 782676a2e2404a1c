"""Imaging tests write DICOM strictly (house style §4.8): an invalid value raises, not warns."""

from __future__ import annotations

from collections.abc import Iterator

import pydicom
import pytest


@pytest.fixture(autouse=True)
def strict_dicom_writing() -> Iterator[None]:
    previous = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE
    yield
    pydicom.config.settings.writing_validation_mode = previous
