"""Latency of one volume through the demo model: Triton (HTTP, binary tensors) vs ONNX Runtime in
process.

    .venv/bin/python benchmarks/inference.py [--repeat 20] [--shape 48,96,96]

Times (median and 90th percentile, ms): ``infer`` = the client call alone on a preprocessed
tensor; ``volume`` = preprocess + infer + postprocess back to the source grid, what the
triton-infer operator does per series. Triton is the real tritonserver from the nvidia-pytriton
wheel with the committed model repository (python backend wrapping ONNX Runtime, 2 threads);
start-up time is reported separately. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from radflow.demo.phantom import brain_phantom
from radflow.engine.triton import MODEL_REPOSITORY, TritonServer, triton_available
from radflow.functions.triton_infer.preprocess import postprocess, preprocess
from radflow.imaging.inference import InferenceClient, OnnxRuntimeClient, TritonInferenceClient

MODEL, SIZE = "brain_tumor_seg", (32, 64, 64)


def _times(fn: Callable[[], object], repeat: int) -> dict[str, float]:
    fn()  # warm-up
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return {
        "median_ms": round(statistics.median(samples), 2),
        "p90_ms": round(samples[int(0.9 * (len(samples) - 1))], 2),
    }


def measure(
    client: InferenceClient, volume: np.ndarray, repeat: int
) -> dict[str, dict[str, float]]:
    x = preprocess(volume, SIZE)

    def infer() -> object:
        return client.infer(MODEL, {"INPUT__0": x}, ["OUTPUT__0"])

    def whole() -> object:
        out = client.infer(MODEL, {"INPUT__0": preprocess(volume, SIZE)}, ["OUTPUT__0"])
        return postprocess(out.outputs["OUTPUT__0"], volume.shape)

    return {"infer": _times(infer, repeat), "volume": _times(whole, repeat)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--shape", default="48,96,96", help="source volume z,y,x")
    args = ap.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    volume = brain_phantom(shape, seed=4_000_000).t1c  # type: ignore[arg-type]
    result: dict[str, object] = {
        "machine": (
            f"{platform.machine()} {platform.processor() or ''} cpus={__import__('os').cpu_count()}"
        ).strip(),
        "python": platform.python_version(),
        "volume_shape": list(shape),
        "repeat": args.repeat,
        "onnxruntime_in_process": measure(
            OnnxRuntimeClient(MODEL_REPOSITORY, threads=2), volume, args.repeat
        ),
    }
    ok, reason = triton_available()
    if ok:
        with tempfile.TemporaryDirectory() as tmp:
            server = TritonServer(MODEL_REPOSITORY, Path(tmp))
            t0 = time.perf_counter()
            server.start()
            try:
                result["triton_start_s"] = round(time.perf_counter() - t0, 2)
                client = TritonInferenceClient(server.http_url)
                result["triton_http"] = measure(client, volume, args.repeat)
                client.close()
            finally:
                server.stop()
    else:
        result["triton_http"] = f"skipped: {reason}"
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
