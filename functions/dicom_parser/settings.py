"""dicom-parser's settings: parsed from the stage's Clara pipeline variables."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from radflow.shared.errors import InvalidInput


class DicomParserSettings(BaseModel):
    """Variables dicom-parser reads (every other variable is ignored)."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    rules_base64: str = Field(
        "",
        alias="NVIDIA_CLARA_SELECTION_RULES_BASE64",
        description="Selection rules JSON, Base64-encoded (Clara). Wins over the file.",
    )
    rules_file: str = Field(
        "",
        alias="NVIDIA_CLARA_SELECTION_RULES_FILE",
        description="Path of a selection rules JSON file (Clara). Unset with no Base64: select every series.",
    )
    volume_format: Literal["nifti", "mhd"] = Field(
        "nifti",
        alias="RADFLOW_VOLUME_FORMAT",
        description="'nifti' writes <SeriesInstanceUID>.nii.gz, 'mhd' writes <SeriesInstanceUID>.mhd + .zraw.",
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

    @classmethod
    def from_variables(cls, variables: Mapping[str, str]) -> DicomParserSettings:
        try:
            return cls.model_validate(dict(variables))
        except ValidationError as exc:
            fields = ", ".join(str(e["loc"][0]) for e in exc.errors())
            raise InvalidInput(f"dicom-parser variables invalid: {fields}", code="invalid_variables") from exc
