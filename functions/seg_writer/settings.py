"""seg-writer's settings: parsed from the stage's Clara pipeline variables."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from radflow.shared.errors import InvalidInput
from radflow.shared.masks import parse_labels


class SegWriterSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    labels: str = Field(
        "",
        alias="NVIDIA_SEG_LABELS",
        description="Segment names for mask values 1..N (JSON list or comma list). Unset: masks.json 'labels', else 'tumour'.",
    )
    segmentation_type: Literal["auto", "binary", "fractional", "labelmap"] = Field(
        "auto",
        alias="RADFLOW_SEG_TYPE",
        description="auto = BINARY for <= 2 segments, FRACTIONAL (JPEG-LS) for more; labelmap = DICOM 2024 Label Map SEG.",
    )
    omit_empty_frames: bool = Field(
        True, alias="RADFLOW_SEG_OMIT_EMPTY_FRAMES", description="Leave out frames with no segmented pixel."
    )

    @property
    def label_list(self) -> list[str]:
        return parse_labels(self.labels)

    @classmethod
    def from_variables(cls, variables: Mapping[str, str]) -> SegWriterSettings:
        try:
            return cls.model_validate(dict(variables))
        except ValidationError as exc:
            fields = ", ".join(str(e["loc"][0]) for e in exc.errors())
            raise InvalidInput(f"seg-writer variables invalid: {fields}", code="invalid_variables") from exc
