"""A real tritonserver (from the nvidia-pytriton wheel) serving the committed model repository."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from radflow.demo.phantom import brain_phantom
from radflow.engine.triton import MODEL_REPOSITORY, TritonServer, triton_available
from radflow.functions.triton_infer import logic
from radflow.functions.triton_infer.preprocess import postprocess, preprocess
from radflow.imaging.inference import OnnxRuntimeClient, TritonInferenceClient
from radflow.imaging.volume import Geometry, read_volume, write_volume
from radflow.sdk.errors import InvalidInput, Unavailable
from radflow.sdk.stage import StageContext

AVAILABLE, REASON = triton_available()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not AVAILABLE, reason=f"Triton cannot run here: {REASON}"),
]

HELD_OUT = 3_000_000  # never used in training (seeds 0..319)
MODEL, SIZE = "brain_tumor_seg", (32, 64, 64)


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    server = TritonServer(MODEL_REPOSITORY, tmp_path_factory.mktemp("triton"))
    server.start()
    yield server
    server.stop()
    assert server.process is not None and server.process.poll() is not None


def _infer(client: TritonInferenceClient | OnnxRuntimeClient, volume: np.ndarray) -> np.ndarray:
    result = client.infer(MODEL, {"INPUT__0": preprocess(volume, SIZE)}, ["OUTPUT__0"])
    return postprocess(result.outputs["OUTPUT__0"], volume.shape)


def test_triton_segments_held_out_phantoms_like_onnxruntime(triton: TritonServer) -> None:
    client = TritonInferenceClient(triton.http_url)
    local = OnnxRuntimeClient(MODEL_REPOSITORY)
    dices = []
    for i in range(8):
        shape = SIZE if i % 2 else (48, 96, 96)
        p = brain_phantom(shape, seed=HELD_OUT + i)
        mask = _infer(client, p.t1c)
        assert np.array_equal(mask, _infer(local, p.t1c))  # same model file, same voxels
        dices.append(2 * float((mask & p.label).sum()) / float(mask.sum() + p.label.sum()))
    assert float(np.mean(dices)) >= 0.85, dices
    for i in range(3):
        free = brain_phantom(SIZE, seed=HELD_OUT + 100 + i, tumor=False)
        assert int(_infer(client, free.t1c).sum()) <= 10
    assert (
        client.infer(MODEL, {"INPUT__0": preprocess(free.t1c, SIZE)}, ["OUTPUT__0"]).model_version
        == "1"
    )
    client.close()


def test_operator_through_triton_from_pipeline_variables(
    triton: TritonServer, tmp_path: Path
) -> None:
    geometry = Geometry(
        (10.0, -20.0, 5.0), (0.8, 0.8, 2.5), (1.0, 0, 0, 0, 0, 1.0, 0, -1.0, 0)
    )  # coronal
    p = brain_phantom((36, 72, 60), seed=HELD_OUT + 50)
    write_volume(tmp_path / "in" / "1.2.nii.gz", p.t1c, geometry)
    ctx = StageContext(
        "job",
        "brain-tumor",
        "triton-infer",
        {"volumes": tmp_path / "in"},
        {"masks": tmp_path / "out"},
        {"NVIDIA_TRITON_HTTPURI": triton.http_url},
    )
    summary = logic.run(ctx)
    mask, mask_geometry = read_volume(tmp_path / "out" / "1.2.nii.gz")
    assert summary["backend"] == "triton" and summary["model_version"] == "1"
    volume_geometry = read_volume(tmp_path / "in" / "1.2.nii.gz")[1]
    assert mask.shape == p.t1c.shape
    for field in ("origin", "spacing", "direction"):
        assert np.allclose(
            getattr(mask_geometry, field), getattr(volume_geometry, field), atol=1e-6
        ), field
    assert mask.any()


def test_unknown_model_is_invalid_input_and_a_stopped_server_unavailable(
    triton: TritonServer,
) -> None:
    client = TritonInferenceClient(triton.http_url)
    with pytest.raises(InvalidInput, match="no model 'nope'"):
        client.infer("nope", {"INPUT__0": np.zeros((1, 1, *SIZE), np.float32)}, ["OUTPUT__0"])
    with pytest.raises(InvalidInput, match="rejected"):
        client.infer(MODEL, {"INPUT__0": np.zeros((1, 1, 8, 8, 8), np.float32)}, ["OUTPUT__0"])
    from radflow.engine.ports import free_port

    client.close()
    with pytest.raises(Unavailable, match="unreachable"):
        TritonInferenceClient(f"127.0.0.1:{free_port()}").infer(MODEL, {}, ["OUTPUT__0"])


def test_triton_available_names_a_reason() -> None:
    ok, reason = triton_available()
    assert ok and "tritonserver" in reason


def test_a_model_that_fails_to_load_stops_start_with_the_log_path(tmp_path: Path) -> None:
    repo = tmp_path / "repo" / "broken"
    (repo / "1").mkdir(parents=True)
    (repo / "config.pbtxt").write_text('name: "broken"\nbackend: "python"\nmax_batch_size: 0\n')
    (repo / "1" / "model.py").write_text("raise ImportError('broken on purpose')\n")
    server = TritonServer(tmp_path / "repo", tmp_path / "state")
    with pytest.raises(RuntimeError, match="tritonserver.log"):
        server.start()
    assert "broken on purpose" in server.log_path.read_text()


def test_missing_stub_for_this_python_is_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    from radflow.engine import triton

    monkeypatch.setattr(triton, "_python_version", lambda: "3.99")
    ok, reason = triton.triton_available()
    assert not ok and "no python backend stub for Python 3.99" in reason
