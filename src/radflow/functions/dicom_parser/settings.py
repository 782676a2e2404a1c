"""dicom-parser's settings: parsed from the stage's Clara pipeline variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from radflow.sdk.stage import StageVariables


class DicomParserSettings(StageVariables):
    """Variables dicom-parser reads (every other variable is ignored)."""

    rules_base64: str = Field(
        "",
        alias="NVIDIA_CLARA_SELECTION_RULES_BASE64",
        description="Selection rules JSON, Base64-encoded (Clara). Wins over the file.",
    )
    rules_file: str = Field(
        "",
        alias="NVIDIA_CLARA_SELECTION_RULES_FILE",
        description=(
            "Path of a selection rules JSON file (Clara). "
            "Unset with no Base64: select every series."
        ),
    )
    volume_format: Literal["nifti", "mhd"] = Field(
        "nifti",
        alias="RADFLOW_VOLUME_FORMAT",
        description=(
            "'nifti' writes <SeriesInstanceUID>.nii.gz, "
            "'mhd' writes <SeriesInstanceUID>.mhd + .zraw."
        ),
    )
    copy_dicom: bool = Field(
        True,
        alias="RADFLOW_COPY_DICOM",
        description="Write the selected series' files to the 'dicom' output (writers need them).",
    )
    dicom_output: Literal["full", "headers"] = Field(
        "full",
        alias="RADFLOW_DICOM_OUTPUT",
        description=(
            "'full' copies the original files into the 'dicom' output; 'headers' writes each file "
            "cut before its PixelData element: everything the SEG and RTSTRUCT writers read, a "
            "fraction of the bytes to upload and download."
        ),
    )
