"""Triton as a scale-to-zero Knative Service, run by the engine exactly as compiled.

The compiled ``brain-tumor-segmentation-triton`` Service (min-scale 0) is started by ``Engine``:
no tritonserver runs until the first inference request, which the activator holds until
``/v2/health/ready`` answers (a real tritonserver from the nvidia-pytriton wheel, reading its
model repository from the embedded SeaweedFS over ``s3://``); after the idle window the process
is gone, and the next request cold-starts a new one.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from radflow.cli.main import main as radflow_cli
from radflow.engine.config import load_engine_config
from radflow.engine.stack import Engine
from radflow.engine.triton import triton_available
from radflow.imaging.inference import TritonInferenceClient
from radflow.sdk.storage import ObjectStore

AVAILABLE, REASON = triton_available()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not AVAILABLE, reason=f"Triton cannot run here: {REASON}"),
]
NAME = "brain-tumor-segmentation-triton"
IDLE_S = 3.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_triton_scales_from_zero_on_the_first_request_and_back_after_idle(
    tmp_path: Path, repo_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    compiled = repo_root / "knative/pipelines/brain-tumor-segmentation/clara-services.yaml"
    (svc,) = [d for d in yaml.safe_load_all(compiled.read_text()) if d and d["kind"] == "Service"]
    assert svc["apiVersion"] == "serving.knative.dev/v1"
    (tmp_path / "knative").mkdir()
    (tmp_path / "knative" / "triton.yaml").write_text(yaml.safe_dump(svc))
    config = load_engine_config(
        None,
        state_dir=tmp_path / "state",
        manifests=tmp_path / "knative",
        workdir=repo_root,
        scale_to_zero_after=IDLE_S,
        prewarm=False,
    )
    volume = np.zeros((1, 1, 32, 64, 64), dtype=np.float32)

    def infer(url: str) -> np.ndarray:
        client = TritonInferenceClient(url, cold_start_timeout=120)
        try:
            return client.infer("brain_tumor_seg", {"INPUT__0": volume}, ["OUTPUT__0"]).outputs[
                "OUTPUT__0"
            ]
        finally:
            client.close()

    async def scenario(engine: Engine) -> None:
        assert engine.host is not None and engine.triton is not None
        url = engine.triton[NAME]

        def revision() -> dict[str, object]:
            assert engine.host is not None
            return next(f for f in engine.host.status() if f["name"] == NAME)

        # scaled to zero from the start: nothing holds the (would-be) GPU
        assert revision()["state"] == "scaled-to-zero" and revision()["instances"] == []
        # the model repository was pushed to the object store that Triton reads
        keys = {o.key for o in ObjectStore(engine.store_settings()).list("models/")}
        assert "models/brain_tumor_seg/configs/cpu.pbtxt" in keys
        assert "models/brain_tumor_seg/1/model.onnx" in keys

        out = await asyncio.to_thread(infer, url)  # cold: held by the activator until ready
        assert out.shape == (1, 2, 32, 64, 64)
        first = revision()
        assert first["cold_starts"] == 1
        (inst,) = first["instances"]  # type: ignore[misc]
        pid = int(inst["pid"])
        assert _alive(pid)

        deadline = time.monotonic() + IDLE_S + 30
        while revision()["instances"] and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert revision()["state"] == "scaled-to-zero"
        assert not _alive(pid), "the idle Triton process is still running"

        out = await asyncio.to_thread(infer, url)  # cold again
        assert out.shape == (1, 2, 32, 64, 64)
        assert revision()["cold_starts"] == 2

    async def main() -> int:
        engine = Engine(config)
        await engine.start()
        try:
            await scenario(engine)
            return await asyncio.to_thread(
                radflow_cli, ["--state-dir", str(config.state_dir), "logs", NAME, "-n", "400"]
            )
        finally:
            await engine.stop()

    assert asyncio.run(main()) == 0, capsys.readouterr().err
    log = capsys.readouterr().out
    # read over s3:// from the embedded store, with the CPU (python backend) config
    assert "s3://http://127.0.0.1:" in log and "--model-config-name=cpu" in log
    assert log.count("Started HTTPService at 127.0.0.1:") == 2
