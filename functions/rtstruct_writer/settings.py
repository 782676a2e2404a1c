"""rtstruct-writer's settings: parsed from the stage's Clara pipeline variables."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from radflow.shared.errors import InvalidInput
from radflow.shared.masks import parse_labels


class RtstructWriterSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    roi_names: str = Field(
        "", alias="RADFLOW_ROI_NAMES", description="ROI names for mask values 1..N (JSON or comma list); wins over NVIDIA_SEG_LABELS."
    )
    labels: str = Field(
        "", alias="NVIDIA_SEG_LABELS", description="Shared with seg-writer; used when RADFLOW_ROI_NAMES is unset."
    )

    @property
    def label_list(self) -> list[str]:
        return parse_labels(self.roi_names) or parse_labels(self.labels)

    @classmethod
    def from_variables(cls, variables: Mapping[str, str]) -> RtstructWriterSettings:
        try:
            return cls.model_validate(dict(variables))
        except ValidationError as exc:
            fields = ", ".join(str(e["loc"][0]) for e in exc.errors())
            raise InvalidInput(f"rtstruct-writer variables invalid: {fields}", code="invalid_variables") from exc
