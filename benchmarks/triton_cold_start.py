"""Triton cold start: the first inference with Triton scaled to zero vs one on a warm server.

The engine runs the compiled Triton Knative Service (``knative/pipelines/brain-tumor-segmentation/
clara-services.yaml``, min-scale 0) exactly as ``radflow up`` does: SeaweedFS, the model
repository pushed to it, the wheel's tritonserver reading it over ``s3://`` with the CPU config.
Each run:

- **cold**: Triton is scaled to zero; time from sending ``infer`` (the client's readiness check,
  held by the activator, then the inference) to the answer;
- **ready**: the host's own spawn -> ``/v2/health/ready`` 200 for that instance;
- **warm**: right after, the same request again on the now-warm server;

then the engine's idle window (``--idle``, seconds) passes until the process is gone.

    .venv/bin/python benchmarks/triton_cold_start.py --runs 5      # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from radflow.engine.config import load_engine_config
from radflow.engine.stack import Engine
from radflow.engine.triton import triton_available
from radflow.imaging.inference import TritonInferenceClient

REPO = Path(__file__).resolve().parents[1]
NAME = "brain-tumor-segmentation-triton"
COMPILED = REPO / "knative/pipelines/brain-tumor-segmentation/clara-services.yaml"


def infer_once(url: str, volume: np.ndarray) -> float:
    t0 = time.perf_counter()
    client = TritonInferenceClient(url, cold_start_timeout=300)
    try:
        client.infer("brain_tumor_seg", {"INPUT__0": volume}, ["OUTPUT__0"])
    finally:
        client.close()
    return time.perf_counter() - t0


async def bench(runs: int, idle: float, workdir: Path) -> dict[str, Any]:
    (svc,) = [d for d in yaml.safe_load_all(COMPILED.read_text()) if d]
    (workdir / "knative").mkdir()
    (workdir / "knative" / "triton.yaml").write_text(yaml.safe_dump(svc))
    config = load_engine_config(
        None,
        state_dir=workdir / "state",
        manifests=workdir / "knative",
        workdir=REPO,
        scale_to_zero_after=idle,
        prewarm=False,
    )
    volume = np.random.default_rng(0).normal(size=(1, 1, 32, 64, 64)).astype(np.float32)
    engine = Engine(config)
    await engine.start()
    cold: list[float] = []
    ready: list[float] = []
    warm: list[float] = []
    try:
        assert engine.host is not None and engine.triton is not None
        url = engine.triton[NAME]

        def revision() -> dict[str, Any]:
            assert engine.host is not None
            return next(f for f in engine.host.status() if f["name"] == NAME)

        for _ in range(runs):
            while revision()["instances"]:  # scaled to zero before each cold run
                await asyncio.sleep(0.1)
            cold.append(await asyncio.to_thread(infer_once, url, volume))
            ready.append(float(revision()["last_cold_start_s"]))
            warm.append(await asyncio.to_thread(infer_once, url, volume))
        starts = revision()["cold_starts"]
    finally:
        await engine.stop()
    assert starts == runs, f"expected {runs} cold starts, saw {starts}"

    def med(xs: list[float]) -> float:
        return round(statistics.median(xs), 3)

    return {
        "runs": runs,
        "cold_first_inference_s": {"median": med(cold), "all": [round(x, 3) for x in cold]},
        "spawn_to_ready_s": {"median": med(ready), "all": [round(x, 3) for x in ready]},
        "warm_first_inference_s": {"median": med(warm), "all": [round(x, 3) for x in warm]},
        "model_config": "cpu (python backend, ONNX Runtime), repository over s3:// from SeaweedFS",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle", type=float, default=1.0, help="scale-to-zero-after seconds")
    parser.add_argument("--out", type=Path, help="write the JSON result here too")
    args = parser.parse_args()
    ok, reason = triton_available()
    if not ok:
        raise SystemExit(f"Triton cannot run here: {reason}")
    with tempfile.TemporaryDirectory(prefix="triton-cold-") as tmp:
        result = asyncio.run(bench(args.runs, args.idle, Path(tmp)))
    result["machine"] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "gpu": "none",
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
