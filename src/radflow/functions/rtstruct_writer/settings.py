"""rtstruct-writer's settings: parsed from the stage's Clara pipeline variables."""

from __future__ import annotations

from pydantic import Field

from radflow.imaging.masks import parse_labels
from radflow.sdk.stage import StageVariables


class RtstructWriterSettings(StageVariables):
    roi_names: str = Field(
        "",
        alias="RADFLOW_ROI_NAMES",
        description=(
            "ROI names for mask values 1..N (JSON or comma list); wins over NVIDIA_SEG_LABELS."
        ),
    )
    labels: str = Field(
        "",
        alias="NVIDIA_SEG_LABELS",
        description="Shared with seg-writer; used when RADFLOW_ROI_NAMES is unset.",
    )

    @property
    def label_list(self) -> list[str]:
        return parse_labels(self.roi_names) or parse_labels(self.labels)
