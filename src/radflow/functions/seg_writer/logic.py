"""seg-writer: a DICOM SEG per mask, in the original study, referencing the source instances.

Inputs ``masks`` (triton-infer: ``<SeriesInstanceUID>.nii.gz`` + ``masks.json``) and ``dicom``
(dicom-parser: ``<SeriesInstanceUID>/<SOPInstanceUID>.dcm``); output ``seg``:
``<SOPInstanceUID>.dcm`` per mask. Frames are aligned with the source planes (mask slice z ->
the source instance at that position); nothing is resampled.
"""

from __future__ import annotations

import logging
from typing import Any

from radflow.functions.seg_writer.settings import SegWriterSettings
from radflow.imaging import masks, seg
from radflow.sdk.errors import InvalidInput
from radflow.sdk.stage import StageContext

logger = logging.getLogger(__name__)

OPERATOR = "seg-writer"
VERSION = "0.1.0"
#: SEG series numbers: the source SeriesNumber plus this offset (plus 10000 per revision)
SERIES_NUMBER_OFFSET = 1000


def run(ctx: StageContext) -> dict[str, Any]:
    """Write one SEG per mask into ``ctx.outputs['seg']``.

    Parameters
    ----------
    ctx:
        ``inputs['masks']``, ``inputs['dicom']``; variables ``NVIDIA_SEG_LABELS``,
        ``RADFLOW_SEG_TYPE``, ``RADFLOW_SEG_OMIT_EMPTY_FRAMES``.

    Returns
    -------
    dict
        ``{"segmentations", "frames", "segments", "segmentation_types"}`` (no UIDs).

    Raises
    ------
    InvalidInput
        No mask, a mask without its source series, a mask off the source grid, or label values
        without a name.
    """
    settings = SegWriterSettings.from_variables(ctx.variables)
    out_dir = ctx.outputs["seg"]
    out_dir.mkdir(parents=True, exist_ok=True)
    output = seg.OutputRevision(ctx.pipeline, ctx.revision)
    written, frames, types = 0, 0, []
    n_segments = 0
    for item in masks.load_masked_series(ctx.inputs["masks"], ctx.inputs["dicom"]):
        labels = settings.label_list or list(item.model.labels) or ["tumour"]
        provenance = seg.Provenance(OPERATOR, VERSION, item.model.name, item.model.version)
        base = int(item.headers[0].get("SeriesNumber") or 0) + SERIES_NUMBER_OFFSET
        try:
            dataset = seg.build_segmentation(
                item.source_images(),
                item.mask_in_source_order(),
                seg.segment_specs(labels),
                provenance,
                output=output,
                series_number=output.series_number(base),
                segmentation_type=settings.segmentation_type,
                omit_empty_frames=settings.omit_empty_frames,
            )
        except InvalidInput:
            raise
        path = out_dir / f"{dataset.SOPInstanceUID}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        written += 1
        frames += int(dataset.NumberOfFrames)
        n_segments = max(n_segments, len(labels))
        types.append(str(dataset.SegmentationType))
    summary = {
        "segmentations": written,
        "frames": frames,
        "segments": n_segments,
        "segmentation_types": types,
    }
    logger.info("seg-writer done", extra={"summary": summary})
    return summary
