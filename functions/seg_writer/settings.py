"""seg-writer's settings: parsed from the stage's Clara pipeline variables."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from radflow.shared.errors import InvalidInput


def parse_labels(text: str) -> list[str]:
    """``NVIDIA_SEG_LABELS``: a JSON list (``["tumour", "edema"]``) or a comma list (``tumour,edema``)."""
    text = text.strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInput("NVIDIA_SEG_LABELS starts with '[' but is not a JSON list", code="invalid_variables") from exc
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise InvalidInput("NVIDIA_SEG_LABELS must be a JSON list of non-empty names", code="invalid_variables")
        return [v.strip() for v in value]
    labels = [v.strip() for v in text.split(",")]
    if not all(labels):
        raise InvalidInput("NVIDIA_SEG_LABELS has an empty name between commas", code="invalid_variables")
    return labels


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
