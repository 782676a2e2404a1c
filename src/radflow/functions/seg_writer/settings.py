"""seg-writer's settings: parsed from the stage's Clara pipeline variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from radflow.imaging.masks import parse_labels
from radflow.sdk.stage import StageVariables


class SegWriterSettings(StageVariables):
    labels: str = Field(
        "",
        alias="NVIDIA_SEG_LABELS",
        description=(
            "Segment names for mask values 1..N (JSON list or comma list). "
            "Unset: masks.json 'labels', else 'tumour'."
        ),
    )
    segmentation_type: Literal["auto", "binary", "fractional", "labelmap"] = Field(
        "auto",
        alias="RADFLOW_SEG_TYPE",
        description=(
            "auto = BINARY for <= 2 segments, FRACTIONAL (JPEG-LS) for more; "
            "labelmap = DICOM 2024 Label Map SEG."
        ),
    )
    omit_empty_frames: bool = Field(
        True,
        alias="RADFLOW_SEG_OMIT_EMPTY_FRAMES",
        description="Leave out frames with no segmented pixel.",
    )

    @property
    def label_list(self) -> list[str]:
        return parse_labels(self.labels)
