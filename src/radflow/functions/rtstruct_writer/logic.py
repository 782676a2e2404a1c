"""rtstruct-writer: an RT Structure Set per mask, in the original study, on the source planes.

Inputs ``masks`` (triton-infer) and ``dicom`` (dicom-parser); output ``rtstruct``:
``<SOPInstanceUID>.dcm`` per mask. Contours are closed planar polygons in patient coordinates on
the plane of the source image each one references (even-odd rule for holes).
"""

from __future__ import annotations

import logging
from typing import Any

from radflow.functions.rtstruct_writer.settings import RtstructWriterSettings
from radflow.imaging import masks, rtstruct, seg
from radflow.sdk.stage import StageContext

logger = logging.getLogger(__name__)

OPERATOR = "rtstruct-writer"
VERSION = "0.1.0"
#: RTSTRUCT series numbers: the source SeriesNumber plus this offset (plus 10000 per revision)
SERIES_NUMBER_OFFSET = 2000


def run(ctx: StageContext) -> dict[str, Any]:
    """Write one RT Structure Set per mask into ``ctx.outputs['rtstruct']``.

    Parameters
    ----------
    ctx:
        ``inputs['masks']``, ``inputs['dicom']``; variables ``RADFLOW_ROI_NAMES`` or
        ``NVIDIA_SEG_LABELS`` (names of mask values 1..N).

    Returns
    -------
    dict
        ``{"structure_sets", "rois", "contours"}`` (no UIDs).

    Raises
    ------
    InvalidInput
        No mask, a mask without its source series, a mask off the source grid, or label values
        without a name.
    """
    settings = RtstructWriterSettings.from_variables(ctx.variables)
    out_dir = ctx.outputs["rtstruct"]
    out_dir.mkdir(parents=True, exist_ok=True)
    output = seg.OutputRevision(ctx.pipeline, ctx.revision)
    written = contours = rois = 0
    for item in masks.load_masked_series(ctx.inputs["masks"], ctx.inputs["dicom"]):
        names = settings.label_list or list(item.model.labels) or ["tumour"]
        provenance = seg.Provenance(OPERATOR, VERSION, item.model.name, item.model.version)
        dataset = rtstruct.build_rtstruct(
            item.headers,
            item.plan,
            item.mask,
            rtstruct.roi_specs(names),
            provenance,
            output=output,
            series_number=output.series_number(
                int(item.headers[0].get("SeriesNumber") or 0) + SERIES_NUMBER_OFFSET
            ),
        )
        dataset.save_as(out_dir / f"{dataset.SOPInstanceUID}.dcm", enforce_file_format=True)
        written += 1
        rois += len(dataset.StructureSetROISequence)
        contours += sum(len(r.get("ContourSequence", [])) for r in dataset.ROIContourSequence)
    summary = {"structure_sets": written, "rois": rois, "contours": contours}
    logger.info("rtstruct-writer done", extra={"summary": summary})
    return summary
