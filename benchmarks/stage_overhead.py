"""Per-stage overhead of the function runtime for the 5-stage fan-out/fan-in example pipeline.

    .venv/bin/python benchmarks/stage_overhead.py --jobs 30

Runs ``pipelines/examples/fan-in-example.yaml`` (ingest -> left, right -> join -> report) with
every stage as a real functions-framework process against a real SeaweedFS, through the engine's
durable broker and function host (the tests' ``PipelineEngine``). Jobs run one after another.
For each stage it reports, from the timestamps the runtime stores in the stage's completed marker:

- **in**: event sent to the stage (the upstream's reply, or the job request) -> operator start
  (HTTP hop, decode, fan-in check, claim, staging inputs from S3);
- **out**: operator end -> completion event sent (uploading outputs, log, completed marker);
- **operator**: the operator itself (here a ``python3 -c`` subprocess, i.e. process start-up);
- **hop**: the part of **in** before the stage's handler saw the request (upstream reply ->
  broker store -> dispatch -> activator -> function).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from pipeline_support import (  # noqa: E402
    FAN_IN_EXAMPLE,
    PipelineEngine,
    compile_to,
    seed_study,
    store_env,
    study_event,
)
from radflow.engine.seaweed import SeaweedServer  # noqa: E402
from radflow.sdk.settings import StoreSettings  # noqa: E402
from radflow.sdk.storage import Keys, ObjectStore  # noqa: E402

STAGES = ["ingest", "left", "right", "join", "report"]
UPSTREAM = {
    "ingest": [],
    "left": ["ingest"],
    "right": ["ingest"],
    "join": ["left", "right"],
    "report": ["join"],
}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the raw samples here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="radflow-bench-"))
    weed = SeaweedServer(data_dir=work / "s3", log_path=work / "weed.log")
    weed.start()
    broker = None
    try:
        settings = StoreSettings(
            endpoint_url=weed.endpoint_url, bucket=f"bench{uuid.uuid4().hex[:8]}"
        )
        store = ObjectStore(settings)
        store.ensure_bucket()
        kn = compile_to(FAN_IN_EXAMPLE, work / "knative")
        broker = PipelineEngine(kn, work / "state", base_env=store_env(settings))
        broker.start()
        samples: dict[str, dict[str, list[float]]] = {
            s: {"in": [], "hop": [], "out": [], "operator": []} for s in STAGES
        }
        for i in range(args.warmup + args.jobs):
            req = seed_study(store, "fan-in-example", series=1, instances=4)
            sent = time.time()
            broker.publish(study_event(store, req))
            broker.wait_idle()
            t = {
                s: json.loads(store.get_bytes(Keys.stage_marker(req.job_id, s, "completed.json")))[
                    "timings"
                ]
                for s in STAGES
            }
            if i < args.warmup:
                continue  # cold processes, first S3 connections
            for s in STAGES:
                started_by = max((t[u]["replied"] for u in UPSTREAM[s]), default=sent)
                samples[s]["in"].append((t[s]["logic_start"] - started_by) * 1000)
                samples[s]["hop"].append((t[s]["received"] - started_by) * 1000)
                samples[s]["out"].append((t[s]["replied"] - t[s]["logic_end"]) * 1000)
                samples[s]["operator"].append((t[s]["logic_end"] - t[s]["logic_start"]) * 1000)
        driver = "engine (BrokerRuntime + FunctionHost)"
        med = statistics.median
        print(
            f"machine: {platform.node()} {platform.machine()} "
            f"python {platform.python_version()}, jobs={args.jobs}, driver: {driver}"
        )
        print(
            f"{'stage':<8} {'in median':>10} {'in p99':>8} {'out median':>11} {'out p99':>8} "
            f"{'operator median':>16} {'hop median':>11}  (ms)"
        )
        for s in STAGES:
            x = samples[s]
            print(
                f"{s:<8} {med(x['in']):>10.1f} {pct(x['in'], 99):>8.1f} "
                f"{med(x['out']):>11.1f} {pct(x['out'], 99):>8.1f} "
                f"{med(x['operator']):>16.1f} {med(x['hop']):>11.1f}"
            )
        all_in = [v for s in STAGES for v in samples[s]["in"]]
        all_out = [v for s in STAGES for v in samples[s]["out"]]
        print(
            f"{'all':<8} {med(all_in):>10.1f} {pct(all_in, 99):>8.1f} "
            f"{med(all_out):>11.1f} {pct(all_out, 99):>8.1f}"
        )
        if args.json:
            args.json.write_text(json.dumps(samples, indent=1))
    finally:
        if broker:
            broker.stop()
        weed.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
