"""dicom-parser: group a study into series, select by rules, convert the selected ones to volumes.

Clara's dicom-parser contract (anchors-pipelines §2.2) on radflow's data contract:

* input ``default``: the study's instance files, any layout.
* output ``volumes``: ``<SeriesInstanceUID>.nii.gz`` (or ``.mhd``) per selected series,
  ``series-images.json`` {series_uid: file}, ``selected-series.json`` {selection: [series_uid]},
  ``dicom-metadata.json`` (per selected series: geometry, sorted instances, first header as DICOM
  JSON) and ``match-trace.json`` (every rule condition against every series).
* output ``dicom``: the selected series' original files as
  ``<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.

Selection works on headers only; pixels are read for the selected series alone. The logic is
declared ``headers_first``: the runtime stages each instance as its header (a few KB) and this
module asks for the selected series' files whole (``ctx.complete_files``) before reading their
pixels, so the other series are read no further than their headers' ranged GET.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from radflow.functions.dicom_parser.settings import DicomParserSettings
from radflow.imaging import dicom, selection
from radflow.imaging.dicom_walk import pixel_data_offset
from radflow.imaging.volume import Geometry, write_volume
from radflow.sdk.errors import InvalidInput
from radflow.sdk.stage import DEFAULT, StageContext, headers_first
from radflow.sdk.storage import safe_component

logger = logging.getLogger(__name__)


def _orientation(series: dicom.Series) -> str | None:
    """Axial/Coronal/Sagittal of the series' planes, ``Mixed`` if they disagree."""
    try:
        refs = dicom.slice_refs(series)
    except InvalidInput:
        return None
    labels = {dicom.orientation_label(r.orientation) for r in refs}
    return labels.pop() if len(labels) == 1 else "Mixed"


def _facts(series: dicom.Series) -> selection.SeriesFacts:
    return selection.SeriesFacts(
        index=series.index,
        series_instance_uid=series.series_instance_uid,
        instance_count=len(series.instances),
        get=series.attribute,
        orientation=_orientation(series),
    )


def _write_json(folder: Path, name: str, data: Any) -> None:
    (folder / name).write_text(json.dumps(data, indent=2, sort_keys=False, default=str))


def _metadata(series: dicom.Series, volume: dicom.Volume, file_name: str) -> dict[str, Any]:
    plan = volume.plan
    return {
        "series_index": series.index,
        "volume": file_name,
        "shape_zyx": list(plan.shape),
        "dtype": str(volume.array.dtype),
        "geometry": {
            "space": "LPS",
            "origin": plan.origin,
            "spacing": plan.spacing,
            "direction": plan.direction,
        },
        "fingerprint": dicom.geometry_fingerprint(plan),
        # volume z index -> source plane: the writers map mask slices back through this list
        "slices": [
            {
                "sop_instance_uid": series.instances[r.instance].sop_instance_uid,
                "frame": None if r.frame is None else r.frame + 1,
            }
            for r in plan.slices
        ],
        "header": dicom.to_json_model(series.first),
    }


@headers_first(DEFAULT, header_end=pixel_data_offset)
def run(ctx: StageContext) -> dict[str, Any]:
    """Select series from the study in ``ctx.inputs['default']`` and write their volumes.

    Parameters
    ----------
    ctx:
        ``inputs['default']`` holds the study; ``outputs['volumes']`` and ``outputs['dicom']``
        are filled; ``variables`` carry the rules (``NVIDIA_CLARA_SELECTION_RULES_BASE64`` or
        ``_FILE``) and ``RADFLOW_VOLUME_FORMAT``.

    Returns
    -------
    dict
        PHI-free counts: series, instances, selected per selection name, volumes written.

    Raises
    ------
    InvalidInput
        No DICOM in the input, invalid rules, a selection that matched nothing, or a selected
        series that is not one regular volume (the message names series index and rule).
    """
    settings = DicomParserSettings.from_variables(ctx.variables)
    rules = selection.rules_from_variables(
        ctx.variables, read_file=lambda p: Path(p).read_text("utf-8")
    )
    clock = {"start": time.perf_counter()}
    instances, skipped = dicom.scan_folder(ctx.inputs[DEFAULT])
    clock["scanned"] = time.perf_counter()
    if not instances:
        raise InvalidInput(
            f"input 'default' holds no DICOM instances ({len(skipped)} unreadable .dcm files)"
        )
    all_series = dicom.group_series(instances)
    outcome = selection.select(rules, [_facts(s) for s in all_series])
    for name, indexes in outcome.selected.items():
        if not indexes and not rules.select_all:
            failed = {
                t["series_index"]: t["selections"][name].get("reason", "") for t in outcome.trace
            }
            hint = "; ".join(f"series {i}: {r}" for i, r in failed.items())
            raise InvalidInput(
                f"selection {name!r} matched none of {len(all_series)} series ({hint})",
                code="no_series_selected",
            )

    volumes_dir = ctx.outputs["volumes"]
    dicom_dir = ctx.outputs.get("dicom")
    volumes_dir.mkdir(parents=True, exist_ok=True)
    by_index = {s.index: s for s in all_series}
    trace_by_index = {t["series_index"]: t for t in outcome.trace}
    series_images: dict[str, str] = {}
    metadata: dict[str, Any] = {}
    wanted = list(dict.fromkeys(i for idx in outcome.selected.values() for i in idx))
    converted: set[int] = set()
    for index in wanted:
        series = by_index[index]
        names = [n for n, idx in outcome.selected.items() if index in idx]
        t0 = time.perf_counter()
        ctx.complete_files(inst.path for inst in series.instances)
        clock["completing"] = clock.get("completing", 0.0) + time.perf_counter() - t0
        t0 = time.perf_counter()
        try:
            volume = dicom.instances_to_volume(series.instances, name=str(index))
        except InvalidInput as exc:
            trace_by_index[index]["volume"] = {"error": str(exc)}
            if rules.select_all:
                continue  # "no rules" selects localizers too; they are skipped, not fatal
            raise InvalidInput(
                f"{exc} (selected by {', '.join(map(repr, names))})", code="inconsistent_series"
            ) from exc
        uid = series.series_instance_uid
        suffix = ".nii.gz" if settings.volume_format == "nifti" else ".mhd"
        file_name = safe_component(uid) + suffix
        plan = volume.plan
        t1 = time.perf_counter()
        write_volume(
            volumes_dir / file_name,
            volume.array,
            Geometry(plan.origin, plan.spacing, plan.direction),
        )
        clock["assembling"] = clock.get("assembling", 0.0) + t1 - t0
        clock["writing"] = clock.get("writing", 0.0) + time.perf_counter() - t1
        series_images[uid] = file_name
        metadata[uid] = _metadata(series, volume, file_name)
        trace_by_index[index]["volume"] = {"file": file_name, "shape_zyx": list(plan.shape)}
        converted.add(index)
        if dicom_dir is not None and settings.copy_dicom:
            target = dicom_dir / safe_component(uid)
            target.mkdir(parents=True, exist_ok=True)
            for inst in series.instances:
                dest = target / f"{safe_component(inst.sop_instance_uid)}.dcm"
                if settings.dicom_output == "headers" and inst.pixel_offset:
                    with open(inst.path, "rb") as src:  # the header ends where PixelData starts
                        dest.write_bytes(src.read(inst.pixel_offset))
                else:
                    shutil.copyfile(inst.path, dest)

    selected_series = {
        name: [by_index[i].series_instance_uid for i in idx if i in converted]
        for name, idx in outcome.selected.items()
    }
    _write_json(volumes_dir, "series-images.json", series_images)
    _write_json(volumes_dir, "selected-series.json", selected_series)
    _write_json(volumes_dir, "dicom-metadata.json", metadata)
    _write_json(
        volumes_dir,
        "match-trace.json",
        {
            "rules": [
                {"name": s.name, "conditions": dict(s.conditions), "all_matched": s.all_matched}
                for s in rules.selections
            ],
            "series": outcome.trace,
            "skipped_files": skipped,
        },
    )
    summary = {
        "series": len(all_series),
        "instances": len(instances),
        "skipped_files": len(skipped),
        "selected": {name: len(uids) for name, uids in selected_series.items()},
        "volumes": len(series_images),
    }
    seconds = {
        "scan_headers": round(clock["scanned"] - clock["start"], 3),
        **{
            k: round(v, 3) for k, v in clock.items() if k in ("completing", "assembling", "writing")
        },
        "total": round(time.perf_counter() - clock["start"], 3),
    }
    logger.info("dicom-parser done", extra={"summary": summary, "seconds": seconds})
    return summary
