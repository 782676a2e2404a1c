"""triton-infer: one uint8 label mask per input volume, in the volume's own geometry.

For every ``<series>.nii.gz`` in input ``volumes``: resize the voxel grid to the model's fixed
input size (trilinear, index space) and normalise intensities, run the model on the inference
service, turn scores into labels (argmax or threshold) and resize them back to the source grid
with nearest neighbour. The mask is written with the volume's Geometry untouched, so the SEG and
RTSTRUCT writers can rely on ``mask.shape == volume.shape`` and identical origin, spacing and
direction. ``masks.json`` records the model (name, version, backend) and the label names.

Pure: the inference client is passed in (tests, benchmarks) or built from the variables.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from radflow.functions.triton_infer.preprocess import postprocess, preprocess
from radflow.functions.triton_infer.settings import TritonInferSettings
from radflow.imaging.inference import InferenceClient, OnnxRuntimeClient, TritonInferenceClient
from radflow.imaging.volume import read_volume, write_volume
from radflow.sdk.errors import InvalidInput
from radflow.sdk.stage import StageContext

log = logging.getLogger(__name__)

INPUT = "volumes"
OUTPUT = "masks"
SUFFIX = ".nii.gz"
FALLBACK_NOTE = "ONNX Runtime in process (fallback: the Triton server cannot run on this platform)"


def make_client(settings: TritonInferSettings) -> InferenceClient:
    """The client the variables ask for; the ONNX Runtime fallback is announced in the log."""
    if settings.backend == "onnxruntime":
        if not settings.model_repository:
            raise InvalidInput(
                "TRITON_BACKEND=onnxruntime needs TRITON_MODEL_REPOSITORY "
                "(the model repository folder)"
            )
        log.warning("inference backend: %s", FALLBACK_NOTE)
        return OnnxRuntimeClient(Path(settings.model_repository))
    if not settings.triton_url:
        raise InvalidInput(
            "pipeline variable NVIDIA_TRITON_HTTPURI (host:port of Triton's HTTP endpoint) "
            "is not set"
        )
    return TritonInferenceClient(
        settings.triton_url,
        timeout=settings.timeout,
        model_version=settings.model_version,
        cold_start_timeout=settings.cold_start_timeout,
    )


def _series_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InvalidInput(
            f"input {INPUT!r} is missing: expected a folder of <series>.nii.gz from dicom-parser"
        )
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(SUFFIX))
    if not files:
        raise InvalidInput(
            f"input {INPUT!r} holds no *{SUFFIX} volume (dicom-parser selected no series?)"
        )
    return files


def run(ctx: StageContext, client: InferenceClient | None = None) -> dict[str, Any]:
    settings = TritonInferSettings.from_variables(ctx.variables)
    files = _series_files(ctx.inputs.get(INPUT, Path("/nonexistent")))
    out = ctx.outputs[OUTPUT]
    out.mkdir(parents=True, exist_ok=True)
    own_client = client is None
    client = client or make_client(settings)
    started = time.perf_counter()
    records: dict[str, Any] = {}
    version = ""
    infer_seconds = 0.0
    try:
        for path in files:
            series = path.name[: -len(SUFFIX)]
            volume, geometry = read_volume(path)
            if volume.ndim != 3:
                raise InvalidInput(
                    f"volume {path.name} has {volume.ndim} dimensions, "
                    "expected a 3D (z, y, x) volume"
                )
            x = preprocess(volume, settings.model_size, settings.normalisation)
            t0 = time.perf_counter()
            result = client.infer(
                settings.model_name, {settings.input_name: x}, [settings.output_name]
            )
            infer_seconds += time.perf_counter() - t0
            version = result.model_version
            try:
                mask = postprocess(
                    result.outputs[settings.output_name],
                    volume.shape,
                    mode=settings.postprocess,
                    threshold=settings.threshold,
                )
            except ValueError as exc:
                raise InvalidInput(
                    f"model {settings.model_name!r} output {settings.output_name!r}: {exc}"
                ) from exc
            write_volume(out / path.name, mask, geometry)
            values, counts = np.unique(mask, return_counts=True)
            records[series] = {
                "file": path.name,
                "shape": list(mask.shape),
                "voxels": {
                    str(int(v)): int(c) for v, c in zip(values, counts, strict=True) if v != 0
                },
            }
    finally:
        if own_client:
            client.close()
    backend = FALLBACK_NOTE if client.backend == "onnxruntime" else "triton"
    document = {
        "model": {"name": settings.model_name, "version": version, "backend": client.backend},
        "labels": {str(i + 1): name for i, name in enumerate(settings.labels)},
        "preprocessing": {
            "model_size_zyx": list(settings.model_size),
            "normalisation": settings.normalisation,
            "postprocess": settings.postprocess,
            "threshold": settings.threshold,
        },
        "masks": records,
        "note": "demo model trained on synthetic data, not for clinical use"
        if settings.model_name == "brain_tumor_seg"
        else "",
    }
    (out / "masks.json").write_text(json.dumps(document, indent=2) + "\n")
    return {
        "model": settings.model_name,
        "model_version": version,
        "backend": backend,
        "volumes": len(files),
        "masks_with_findings": sum(1 for r in records.values() if r["voxels"]),
        "inference_seconds": round(infer_seconds, 3),
        "seconds": round(time.perf_counter() - started, 3),
    }
