"""triton-infer's logic on real volumes, with the in-process ONNX Runtime client.

The same logic against a real Triton server is in test_triton_server.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from radflow.demo.phantom import brain_phantom
from radflow.engine.triton import MODEL_REPOSITORY
from radflow.functions.triton_infer import logic
from radflow.imaging.inference import OnnxRuntimeClient
from radflow.imaging.volume import Geometry, read_volume, write_volume
from radflow.sdk.errors import InvalidInput
from radflow.sdk.stage import StageContext

HELD_OUT = 2_000_000  # far from the training seeds (0..319) and the training script's held-out set

# an oblique, non-square-spacing geometry: rotated about z by 20 degrees and tilted about x by 10
_a, _b = np.deg2rad(20), np.deg2rad(10)
_rz = np.array([[np.cos(_a), -np.sin(_a), 0], [np.sin(_a), np.cos(_a), 0], [0, 0, 1]])
_rx = np.array([[1, 0, 0], [0, np.cos(_b), -np.sin(_b)], [0, np.sin(_b), np.cos(_b)]])
OBLIQUE = Geometry(
    origin=(-91.5, -120.25, 33.0),
    spacing=(0.9, 1.1, 3.5),
    direction=tuple(float(v) for v in (_rz @ _rx).ravel()),
)


def _ctx(tmp_path: Path, variables: dict[str, str] | None = None) -> StageContext:
    return StageContext(
        job_id="job-1",
        pipeline="brain-tumor",
        stage="triton-infer",
        inputs={"volumes": tmp_path / "volumes"},
        outputs={"masks": tmp_path / "masks"},
        variables=variables or {},
        work_dir=tmp_path,
    )


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def test_writes_masks_in_the_source_geometry_with_masks_json(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    shape = (40, 96, 80)  # not the model's 32x64x64: resized there and back
    tumour = brain_phantom(shape, seed=HELD_OUT + 1)
    free = brain_phantom(shape, seed=HELD_OUT + 2, tumor=False)
    write_volume(ctx.inputs["volumes"] / "1.2.3.4.nii.gz", tumour.t1c.astype(np.int16), OBLIQUE)
    write_volume(ctx.inputs["volumes"] / "1.2.3.5.nii.gz", free.t1c.astype(np.int16), OBLIQUE)
    (ctx.inputs["volumes"] / "series-images.json").write_text("{}")  # other files are ignored

    summary = logic.run(ctx, client=OnnxRuntimeClient(MODEL_REPOSITORY))

    mask, geometry = read_volume(ctx.outputs["masks"] / "1.2.3.4.nii.gz")
    volume, volume_geometry = read_volume(ctx.inputs["volumes"] / "1.2.3.4.nii.gz")
    assert mask.dtype == np.uint8 and mask.shape == volume.shape == shape
    # NIfTI keeps directions as a float32 quaternion: equal to what it can represent (~1e-7)
    for field in ("origin", "spacing", "direction"):
        assert np.allclose(getattr(geometry, field), getattr(volume_geometry, field), atol=1e-6), (
            field
        )
        assert np.allclose(getattr(geometry, field), getattr(OBLIQUE, field), atol=1e-5), field
    assert _dice(mask.astype(bool), tumour.label.astype(bool)) >= 0.8
    empty, _ = read_volume(ctx.outputs["masks"] / "1.2.3.5.nii.gz")
    assert int(empty.sum()) <= 10  # tumour-free: (near-)empty

    doc = json.loads((ctx.outputs["masks"] / "masks.json").read_text())
    assert doc["model"] == {"name": "brain_tumor_seg", "version": "1", "backend": "onnxruntime"}
    assert doc["labels"] == {"1": "tumor"}
    assert (
        set(doc["masks"]) == {"1.2.3.4", "1.2.3.5"} and doc["masks"]["1.2.3.4"]["voxels"]["1"] > 0
    )
    assert summary["volumes"] == 2 and summary["masks_with_findings"] >= 1
    assert "fallback" in summary["backend"]
    assert "1.2.3.4" not in json.dumps(summary)


def test_onnxruntime_fallback_is_chosen_by_variables(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = _ctx(
        tmp_path,
        {"TRITON_BACKEND": "onnxruntime", "TRITON_MODEL_REPOSITORY": str(MODEL_REPOSITORY)},
    )
    write_volume(ctx.inputs["volumes"] / "9.nii.gz", brain_phantom(seed=HELD_OUT + 3).t1c, OBLIQUE)
    with caplog.at_level("WARNING"):
        summary = logic.run(ctx)
    assert summary["model_version"] == "1"
    assert any("fallback" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("variables", "match"),
    [
        ({}, "NVIDIA_TRITON_HTTPURI"),
        (
            {"NVIDIA_TRITON_HTTPURI": "127.0.0.1:1", "TRITON_MODEL_SIZE": "32,64"},
            "TRITON_MODEL_SIZE",
        ),
        (
            {"NVIDIA_TRITON_HTTPURI": "127.0.0.1:1", "TRITON_POSTPROCESS": "softmax"},
            "TRITON_POSTPROCESS",
        ),
        ({"TRITON_BACKEND": "onnxruntime"}, "TRITON_MODEL_REPOSITORY"),
    ],
)
def test_bad_variables_are_invalid_input_naming_the_variable(
    tmp_path: Path, variables: dict[str, str], match: str
) -> None:
    ctx = _ctx(tmp_path, variables)
    write_volume(ctx.inputs["volumes"] / "9.nii.gz", np.zeros((4, 8, 8), np.int16), OBLIQUE)
    with pytest.raises(InvalidInput, match=match):
        logic.run(ctx)


def test_empty_variables_mean_defaults(tmp_path: Path) -> None:
    # the runtime passes every declared variable, unset ones as ""
    ctx = _ctx(tmp_path, {"TRITON_MODEL_SIZE": "", "TRITON_LABELS": "", "TRITON_THRESHOLD": ""})
    write_volume(ctx.inputs["volumes"] / "9.nii.gz", np.zeros((4, 8, 8), np.int16), OBLIQUE)
    logic.run(ctx, client=OnnxRuntimeClient(MODEL_REPOSITORY))
    assert json.loads((ctx.outputs["masks"] / "masks.json").read_text())["labels"] == {"1": "tumor"}


def test_no_volume_is_invalid_input(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    ctx.inputs["volumes"].mkdir()
    with pytest.raises(InvalidInput, match="no \\*.nii.gz"):
        logic.run(ctx, client=OnnxRuntimeClient(MODEL_REPOSITORY))


def test_wrong_tensor_name_is_invalid_input(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, {"TRITON_INPUT": "image"})
    write_volume(ctx.inputs["volumes"] / "9.nii.gz", np.zeros((4, 8, 8), np.int16), OBLIQUE)
    with pytest.raises(InvalidInput, match="ONNX Runtime rejected"):
        logic.run(ctx, client=OnnxRuntimeClient(MODEL_REPOSITORY))
