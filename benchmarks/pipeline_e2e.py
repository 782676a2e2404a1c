"""The reference pipeline end to end: per-stage durations and the platform overhead (issue 5).

For each of ``--runs`` synthetic 200-slice 512x512 brain MR studies (distinct seeds, so distinct
StudyInstanceUIDs), sent one after the other to the embedded engine started in-process exactly as
``radflow demo`` does (demo/runner.py), it records

* the C-STORE send time (one association, the modality's pacing; not platform overhead);
* last instance released -> the adapter's ``study.received`` event (the job request);
* per stage, from the job tracker's document and the stage's ``completed.json`` marker:
  hop/queue wait (upstream reply -> request received by the function, includes any cold start),
  claim, stage-in (S3 GETs), logic, stage-out (S3 PUTs + marker);
* last instance released -> both the SEG and the RTSTRUCT received at the local PACS;
* platform overhead = that minus the triton-infer logic time (goal G10/issue 5: p90 <= 5 s);
* cold starts of function processes during the run (run 1 starts every function from zero).

    .venv/bin/python benchmarks/pipeline_e2e.py --runs 5 --out pipeline_e2e.json

Series -> volume vs SimpleITK is measured separately by benchmarks/volume_load.py.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from radflow.demo.pacs import LocalPacs
from radflow.demo.runner import PIPELINE, RTSTRUCT, SEG, adapter_config, send_study
from radflow.demo.study import make_study
from radflow.engine.config import load_engine_config
from radflow.engine.ports import free_port, wait_for_port
from radflow.engine.stack import Engine
from radflow.functions import registry
from radflow.sdk.pipeline import load_pipeline
from radflow.sdk.storage import Keys, NotFound, ObjectStore

INFER = "triton-infer"


def epoch(iso: str | None) -> float | None:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() if iso else None


def cold_starts(engine: Engine) -> dict[str, int]:
    assert engine.host is not None
    return {str(s["name"]): int(s.get("cold_starts") or 0) for s in engine.host.status()}


def _descendants(root: int) -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) for every live process under ``root`` (from /proc)."""
    procs: dict[int, tuple[int, str]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        procs[int(d.name)] = (ppid, cmd)
    out, frontier = {}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, cmd) in procs.items():
            if ppid == parent and pid not in out:
                out[pid] = (ppid, cmd)
                frontier.append(pid)
    return out


def cpu_by_part(engine: Engine) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each part of the engine, this process included.

    Functions are named from the host's instance pids, the adapter from the workload runner;
    everything else from its command line (SeaweedFS, Triton and its python backend stubs).
    """
    tick = os.sysconf("SC_CLK_TCK")
    names: dict[int, str] = {os.getpid(): "benchmark process (PACS, sender, engine control)"}
    assert engine.host is not None and engine.workloads is not None
    for rev in engine.host.status():
        for inst in rev.get("instances", []):
            names[int(inst["pid"])] = str(rev["name"]).replace(f"{PIPELINE}-", "")
    for w in engine.workloads.status():
        if w.get("pid"):
            names[int(w["pid"])] = str(w["name"])
    totals: dict[str, float] = {}
    tree = {**_descendants(os.getpid()), os.getpid(): (0, "")}
    for pid, (_ppid, cmd) in tree.items():
        label, up = names.get(pid), pid
        while (
            label is None and up in tree and up != os.getpid()
        ):  # e.g. a function's server workers
            up = tree[up][0]
            label = names.get(up) if up != os.getpid() else None
        if label is None:
            label = "seaweedfs" if "weed" in cmd else "triton" if "triton" in cmd else "other"
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        totals[label] = totals.get(label, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return totals


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {
        k: round(v - before.get(k, 0.0), 2)
        for k, v in sorted(after.items())
        if v - before.get(k, 0.0) >= 0.01
    }


def find_job(study_uid: str, timeout: float) -> dict[str, Any] | None:
    """The finished job document of ``study_uid`` (the tracker writes it just after the last
    stage)."""
    from radflow.cli.jobs import load_job, load_jobs

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for j in load_jobs(None):
            if j.get("study_instance_uid") == study_uid and j.get("state") != "running":
                return load_job(None, j["job_id"])
        time.sleep(0.25)
    return None


def stage_timings(
    store: ObjectStore, job: dict[str, Any], dag: dict[str, list[str]]
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Per stage (seconds): hop (ready -> received), claim, stage_in, logic, stage_out;
    ready/replied epochs.

    Also returns each stage's summary (what ``logic.run`` returned) from its completed marker.
    """
    marks: dict[str, dict[str, float]] = {}
    summaries: dict[str, Any] = {}
    for stage in dag:
        try:
            doc = json.loads(
                store.get_bytes(Keys.stage_marker(job["job_id"], stage, "completed.json"))
            )
        except NotFound:
            marks[stage] = {}
            continue
        marks[stage] = doc["timings"]
        summaries[stage] = (doc["event"].get("data") or {}).get("summary", {})
    requested = epoch(job.get("requested_at")) or epoch(job.get("created_at")) or 0.0
    out: dict[str, dict[str, float]] = {}
    for stage, ups in dag.items():
        t = marks[stage]
        if not t:
            continue
        ready = (
            max((marks[u].get("replied", 0.0) for u in ups), default=requested)
            if ups
            else requested
        )
        out[stage] = {
            "ready": ready,
            "hop": t["received"] - ready,
            "claim": t["claimed"] - t["received"],
            "stage_in": t["logic_start"] - t["claimed"],
            "logic": t["logic_end"] - t["logic_start"],
            "stage_out": t["replied"] - t["logic_end"],
            "replied": t["replied"],
        }
    return out, summaries


async def one_run(
    engine: Engine,
    pacs: LocalPacs,
    store: ObjectStore,
    dag: dict[str, list[str]],
    work: Path,
    port: int,
    seed: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    shape = (args.slices, args.size, args.size)
    t = time.perf_counter()
    study = await asyncio.to_thread(
        make_study,
        work / f"study-{seed}",
        shape,
        seed=seed,
        phantom_factor=4,
        decoys=True,
        other_series=False,
    )
    generate_s = time.perf_counter() - t
    before = cold_starts(engine)
    cpu_before = cpu_by_part(engine)
    sent_at, released = await asyncio.to_thread(send_study, study, port)
    cpu_released = cpu_by_part(engine)
    found = await asyncio.to_thread(
        pacs.wait_for, {SEG, RTSTRUCT}, study.study_instance_uid, args.timeout
    )
    if set(found) != {SEG, RTSTRUCT}:
        raise RuntimeError(f"seed {seed}: timed out, the PACS has {sorted(found)}")
    arrived = max(r.at for r in found.values())
    cpu_after = cpu_by_part(engine)
    job = await asyncio.to_thread(find_job, study.study_instance_uid, 60)
    if job is None:
        raise RuntimeError(f"seed {seed}: no finished job document for the study")
    stages, summaries = await asyncio.to_thread(stage_timings, store, job, dag)
    after = cold_starts(engine)
    requested = epoch(job.get("requested_at"))
    inference = stages.get(INFER, {}).get("logic", 0.0)
    total = arrived - released
    shutil.rmtree(study.root, ignore_errors=True)
    return {
        "seed": seed,
        "instances": len(study.files),
        "generate_s": generate_s,
        "send_s": released - sent_at,
        "released_to_job_event_s": (requested - released) if requested else None,
        "stages": {
            k: {m: v for m, v in s.items() if m not in ("ready", "replied")}
            for k, s in stages.items()
        },
        "scu_export_replied_after_pacs_s": stages.get("scu-export", {}).get("replied", arrived)
        - arrived,
        "released_to_seg_and_rtstruct_s": total,
        "inference_s": inference,
        "platform_overhead_s": total - inference,
        "model_call_s": float(summaries.get(INFER, {}).get("inference_seconds", 0.0)),
        "overhead_minus_model_call_only_s": total
        - float(summaries.get(INFER, {}).get("inference_seconds", 0.0)),
        "infer_backend": summaries.get(INFER, {}).get("backend"),
        "cold_starts": {
            k: after.get(k, 0) - before.get(k, 0)
            for k in after
            if after.get(k, 0) != before.get(k, 0)
        },
        "job_state": job.get("state"),
        "cpu_s_send": _delta(cpu_before, cpu_released),
        "cpu_s_released_to_arrival": _delta(cpu_released, cpu_after),
    }


def p90(values: list[float]) -> float:
    """Nearest-rank 90th percentile (with 4-5 samples this is the maximum)."""
    ordered = sorted(values)
    return ordered[max(0, -(-9 * len(ordered) // 10) - 1)]


def render(results: list[dict[str, Any]], order: list[str]) -> str:
    """Per run: send, job event, each stage's wall time (wait + claim + in + logic + out),
    totals."""
    short = {s: s.replace("-writer", "").replace("-", "")[:9] for s in order}
    lines = [
        f"{'run':>3} {'cold':>4} {'send':>6} {'->job':>6} "
        + " ".join(f"{short[s]:>9}" for s in order)
        + f" {'e2e':>6} {'infer':>6} {'overhead':>8}"
    ]
    for i, r in enumerate(results, 1):
        walls = [sum(r["stages"][s].values()) if s in r["stages"] else float("nan") for s in order]
        lines.append(
            f"{i:>3} {sum(r['cold_starts'].values()):>4} {r['send_s']:>6.2f} "
            f"{r['released_to_job_event_s'] or float('nan'):>6.2f} "
            + " ".join(f"{w:>9.2f}" for w in walls)
            + f" {r['released_to_seg_and_rtstruct_s']:>6.2f} {r['inference_s']:>6.2f} "
            f"{r['platform_overhead_s']:>8.2f}"
        )
    lines.append("")
    lines.append(
        f"{'stage (s)':<16} {'run':>4} {'wait':>6} {'claim':>6} "
        f"{'S3 in':>6} {'logic':>6} {'S3 out':>6}"
    )
    for i, r in enumerate(results, 1):
        for s in order:
            st = r["stages"].get(s)
            if st:
                lines.append(
                    f"{s:<16} {i:>4} {st['hop']:>6.2f} {st['claim']:>6.2f} "
                    f"{st['stage_in']:>6.2f} {st['logic']:>6.2f} {st['stage_out']:>6.2f}"
                )
    return "\n".join(lines)


def summarize(results: list[dict[str, Any]], order: list[str]) -> dict[str, Any]:
    warm = [r for r in results if not r["cold_starts"]] or results[1:]
    out: dict[str, Any] = {
        "cold_overhead_s": [r["platform_overhead_s"] for r in results if r["cold_starts"]]
    }
    if warm:
        ovh = [r["platform_overhead_s"] for r in warm]
        out.update(
            warm_runs=len(warm),
            overhead_median_s=statistics.median(ovh),
            overhead_p90_s=p90(ovh),
            e2e_median_s=statistics.median(r["released_to_seg_and_rtstruct_s"] for r in warm),
            inference_median_s=statistics.median(r["inference_s"] for r in warm),
            model_call_median_s=statistics.median(r.get("model_call_s", 0.0) for r in warm),
            overhead_minus_model_call_only_p90_s=p90(
                [r.get("overhead_minus_model_call_only_s", 0.0) for r in warm]
            ),
            send_median_s=statistics.median(r["send_s"] for r in warm),
            released_to_job_event_median_s=statistics.median(
                r["released_to_job_event_s"] or 0 for r in warm
            ),
            stage_median_s={
                s: {
                    m: statistics.median(r["stages"][s][m] for r in warm if s in r["stages"])
                    for m in ("hop", "claim", "stage_in", "logic", "stage_out")
                }
                for s in order
            },
        )
    return out


def machine() -> dict[str, Any]:
    model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "?",
    )
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "loadavg_start": os.getloadavg(),
        "python": platform.python_version(),
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="radflow-bench-e2e-"))
    info = machine()
    pacs = LocalPacs(work / "pacs")
    pacs.start()
    port = free_port()
    engine = Engine(
        load_engine_config(
            adapter_config(
                work / "dicom-adapter.yaml", port, (pacs.ae_title, pacs.port), work / "engine"
            )
        )
    )
    t0 = time.time()
    await engine.start()
    try:
        for name, value in engine.base_env().items():
            os.environ.setdefault(name, value)
        if not await asyncio.to_thread(wait_for_port, "127.0.0.1", port, 60):
            raise RuntimeError("the DICOM adapter did not start listening")
        info["engine_start_s"] = time.time() - t0
        info["triton"] = engine.triton is not None
        store = ObjectStore(engine.store_settings())
        pipe = load_pipeline(Path("pipelines") / f"{PIPELINE}.yaml", functions=registry.names())
        dag = {s: pipe.operator(s).upstream() for s in pipe.stage_names()}
        results = []
        for k in range(args.runs):
            r = await one_run(engine, pacs, store, dag, work, port, args.seed + k, args)
            results.append(r)
            print(
                f"run {k + 1}: e2e {r['released_to_seg_and_rtstruct_s']:.2f} s, "
                f"inference {r['inference_s']:.2f} s, "
                f"overhead {r['platform_overhead_s']:.2f} s, cold starts {r['cold_starts']}",
                flush=True,
            )
        info["loadavg_end"] = os.getloadavg()
        order = list(dag)
        return {
            "machine": info,
            "args": vars(args),
            "stage_order": order,
            "runs": results,
            "summary": summarize(results, order),
        }
    finally:
        await engine.stop()
        pacs.stop()
        shutil.rmtree(work, ignore_errors=True)


async def _stoppable(coro: Any) -> Any:
    """SIGTERM/SIGINT cancel the run so the engine and its processes are stopped (background jobs
    ignore SIGINT)."""
    import signal

    task = asyncio.ensure_future(coro)
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
    return await task


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--slices", type=int, default=200)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=5000)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)
    doc = asyncio.run(_stoppable(bench(args)))
    print()
    print(render(doc["runs"], doc["stage_order"]))
    print()
    print(json.dumps({"machine": doc["machine"], "summary": doc["summary"]}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(doc, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
