"""Image sizes and the first-request latency of functions started from their images.

For each image: its size (buildah's uncompressed layer sum) and the layers it shares with the
others (one dependency class = one set of layers). For each function image, ``--runs`` times: a
fresh container from the image (``buildah run``, the image's own entry point, as
tests/images/ does), a real SeaweedFS, and the time from starting the container to (a) its port
accepting connections and (b) the reply to its first request — a binary CloudEvent for a stage
(a placeholder study: the operator answers ``stage.failed`` after staging it, the round trip a
cold start pays for) and ``GET /jobs`` for the job tracker; then the median of ``--warm``
further requests to the warm instance.

    scripts/build-images && .venv/bin/python benchmarks/images.py --runs 3 --warm 20

Uses the storage scripts/build-images wrote to (STORAGE_DRIVER, BUILDAH_ROOT, BUILDAH_RUNROOT).
A container start here is a chroot on a warm page cache, without image pull or pod scheduling;
on a cluster add the pull (the sizes below) and Knative's activator/scheduling time.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "images"))

from containers import buildah, image_size, running  # noqa: E402

from pipeline_support import seed_study, store_env, study_event  # noqa: E402
from radflow.engine.ports import free_port, wait_for_port  # noqa: E402
from radflow.engine.seaweed import SeaweedServer  # noqa: E402
from radflow.functions import registry  # noqa: E402
from radflow.sdk import events  # noqa: E402
from radflow.sdk.pipeline import parse_pipeline, stage_spec  # noqa: E402
from radflow.sdk.settings import StoreSettings  # noqa: E402
from radflow.sdk.storage import ObjectStore  # noqa: E402

BRAIN = yaml.safe_load((REPO / "pipelines/brain-tumor-segmentation.yaml").read_text())


def pipeline_text(image: str) -> str:
    """One root stage running ``image`` with the reference pipeline's inputs (each fed the
    study), outputs and variables, as tests/images/ does."""
    like = next((op for op in BRAIN["operators"] if op["container"]["image"] == image), {})
    op = {
        "name": "only",
        "container": {"image": image},
        "variables": like.get("variables", {}),
        "input": [
            {k: v for k, v in i.items() if k != "from"}
            for i in like.get("input", [{"path": "/input"}])
        ],
        "output": like.get("output", [{"path": "/output"}]),
    }
    return json.dumps({"api-version": "0.4.0", "name": "bench", "operators": [op]})


def layers(image: str) -> list[str]:
    out = subprocess.run(
        [*buildah(), "inspect", "--type", "image", image], check=True, capture_output=True
    ).stdout
    return list(json.loads(out)["OCIv1"]["rootfs"]["diff_ids"])


def request(port: int, event: events.CloudEvent | None) -> int:
    if event is None:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/jobs")
    else:
        headers, body = events.to_binary(event)
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/", data=body, headers=dict(headers), method="POST"
        )
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def one_run(
    entry: registry.OperatorEntry, settings: StoreSettings, warm: int, work: Path
) -> dict[str, Any]:
    store = ObjectStore(settings)
    port = free_port()
    env = {**store_env(settings), "PORT": str(port)}
    if entry.logic:
        p = parse_pipeline(
            pipeline_text(entry.image), source="bench.yaml", functions=registry.names()
        )
        op = p.operator("only")
        env |= {
            "RADFLOW_PIPELINE": p.name,
            "RADFLOW_STAGE": op.name,
            "RADFLOW_STAGE_SPEC": stage_spec(p, op, timeout_seconds=300).to_env(),
        }

    def event() -> events.CloudEvent | None:
        # a new job each time: a repeated one would be answered from its recorded outcome
        return study_event(store, seed_study(store, "bench")) if entry.logic else None

    first = event()
    log = work / f"{entry.kebab}.log"
    t0 = time.monotonic()
    with running(entry.image, env, log) as proc:
        while not wait_for_port("127.0.0.1", port, 0.05):
            if proc.poll() is not None or time.monotonic() - t0 > 180:
                raise RuntimeError(f"{entry.image} did not start:\n{log.read_text()[-2000:]}")
        listening = time.monotonic() - t0
        status = request(port, first)
        replied = time.monotonic() - t0
        warm_ms = []
        for _ in range(warm):
            ev = event()
            t1 = time.monotonic()
            request(port, ev)
            warm_ms.append((time.monotonic() - t1) * 1000)
    return {
        "listening_s": round(listening, 2),
        "first_reply_s": round(replied, 2),
        "first_status": status,
        "warm_median_ms": round(statistics.median(warm_ms), 1) if warm_ms else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warm", type=int, default=20)
    parser.add_argument("--images", nargs="*", help="function images (default: every one)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    entries = [e for e in registry.OPERATORS if not args.images or e.image in args.images]
    everything = [e.image for e in registry.OPERATORS] + ["radflow/dicom-adapter"]
    all_layers = {image: layers(image) for image in everything}
    result: dict[str, Any] = {
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "sizes_mb": {i: round(image_size(i)) for i in everything},
        # the layers of each image that no other image has (what its own pull adds)
        "own_layers": {
            i: sum(1 for d in ds if sum(d in o for o in all_layers.values()) == 1)
            for i, ds in all_layers.items()
        },
        "start": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = SeaweedServer(data_dir=work / "weed", log_path=work / "weed.log")
        server.start()
        try:
            for entry in entries:
                settings = StoreSettings(endpoint_url=server.endpoint_url, bucket="bench")
                ObjectStore(settings).ensure_bucket()
                runs = [one_run(entry, settings, args.warm, work) for _ in range(args.runs)]
                result["start"][entry.image] = {
                    "runs": runs,
                    "median_first_reply_s": statistics.median(r["first_reply_s"] for r in runs),
                }
                print(entry.image, json.dumps(result["start"][entry.image]), flush=True)
        finally:
            server.stop()
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
