"""``radflow demo``: the reference pipeline end to end on the embedded engine.

1. starts a local PACS (``MYPACS``, a pynetdicom Storage SCP) and the embedded engine with a
   Clara adapter configuration mapping AE title ``BRAINSEG`` to ``brain-tumor-segmentation``;
2. writes a synthetic multi-series brain MR study (T1, T1c, a "T1c ref" and a "3x3" decoy, a
   localizer, FLAIR; shuffled InstanceNumbers) and sends it to the adapter with C-STORE;
3. waits for the DICOM SEG and the RT Structure Set at the PACS, validates them (same study,
   ``dciodvfy`` when installed, Dice against the phantom's truth) and prints a per-stage table.

The model is a demo model trained on synthetic phantoms: not for clinical use.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydicom import dcmread
from pynetdicom import AE

from radflow.demo.pacs import LocalPacs
from radflow.demo.study import SyntheticStudy, make_study
from radflow.engine.config import load_engine_config
from radflow.engine.ports import free_port, wait_for_port
from radflow.engine.stack import Engine
from radflow.imaging.dimse import NODELAY_HANDLERS

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT = "1.2.840.10008.5.1.4.1.1.481.3"
PIPELINE = "brain-tumor-segmentation"


def adapter_config(
    path: Path,
    dicom_port: int,
    destination: tuple[str, int],
    state: Path,
    scale_to_zero_after: float = 120,
    group_timeout: float = 0,
) -> Path:
    """Write the Clara adapter configuration: BRAINSEG -> the pipeline, results to ``MYPACS``.

    ``destination`` is the (AE title, port) of the PACS on 127.0.0.1 that receives the results.
    ``group_timeout`` is the AE title's Clara ``timeout``: 0 closes a study's group when the
    association is released (the demo sends in one association); senders that split a study
    over several associations (Orthanc does, per new transfer syntax) need a quiet period.
    """
    ae_title, port = destination
    doc = {
        "dicom": {
            "scp": {
                "port": dicom_port,
                "ae-titles": [{"ae-title": "BRAINSEG", "timeout": group_timeout}],
                "max-associations": 4,
                "reject-unknown-sources": False,
            },
            "scu": {
                "ae-title": "RADFLOW",
                "destinations": [
                    {"name": "MYPACS", "ae-title": ae_title, "host-ip": "127.0.0.1", "port": port}
                ],
            },
        },
        "pipeline-mappings": [
            {"name": "brain", "clara-ae-title": "BRAINSEG", "pipeline-id": PIPELINE}
        ],
        "radflow": {"state-dir": str(state), "scale-to-zero-after": scale_to_zero_after},
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def send_study(study: SyntheticStudy, port: int) -> tuple[float, float]:
    """C-STORE every file to BRAINSEG in one association; returns (start, release) times."""
    ae = AE(ae_title="DEMO-MODALITY")
    ae.maximum_pdu_size = 0
    contexts: dict[str, set[str]] = {}
    for path in study.files:
        ds = dcmread(path, stop_before_pixels=True)
        contexts.setdefault(str(ds.SOPClassUID), set()).add(str(ds.file_meta.TransferSyntaxUID))
    for sop_class, syntaxes in contexts.items():
        for syntax in syntaxes:
            ae.add_requested_context(sop_class, syntax)
    start = time.time()
    assoc = ae.associate("127.0.0.1", port, ae_title="BRAINSEG", evt_handlers=NODELAY_HANDLERS)
    if not assoc.is_established:
        raise RuntimeError("the adapter refused the association")
    try:
        for path in study.files:
            status = assoc.send_c_store(path)
            if not status or status.Status != 0x0000:
                raise RuntimeError(f"C-STORE of {path.name} failed: {status}")
    finally:
        assoc.release()
    return start, time.time()


def dciodvfy(path: Path) -> tuple[bool, str]:
    tool = shutil.which("dciodvfy")
    if tool is None:
        return True, "dciodvfy not installed (apt-get install dicom3tools): skipped"
    out = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
    errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
    return not errors, (f"{len(errors)} errors: {errors[:3]}" if errors else "no errors")


def seg_dice(path: Path, study: SyntheticStudy) -> float:
    """Dice of the returned SEG against the phantom truth, slices matched by SOP Instance UID."""
    from radflow.imaging.seg import read_segmentation_mask

    mask, uids = read_segmentation_mask(str(path), 1)
    by_uid = {
        str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in study.target.files
    }
    ipp = {
        uid: np.asarray(dcmread(by_uid[uid], stop_before_pixels=True).ImagePositionPatient, float)
        for uid in uids
    }
    origin = np.asarray(study.geometry.origin)
    normal = np.asarray(study.geometry.direction, float).reshape(3, 3)[:, 2]
    predicted = np.zeros_like(study.label, dtype=bool)
    for k, uid in enumerate(uids):
        z = int(round(float((ipp[uid] - origin) @ normal) / study.geometry.spacing[2]))
        predicted[z] = mask[k] > 0
    truth = study.label > 0
    denominator = predicted.sum() + truth.sum()
    return 1.0 if denominator == 0 else float(2 * (predicted & truth).sum() / denominator)


def stage_table(job: dict[str, Any], released: float, arrived: float) -> str:
    rows = [("stage", "state", "start (s)", "duration (s)")]
    stages = sorted(job.get("stages", {}).items(), key=lambda kv: kv[1].get("started_at") or "~")
    inference = 0.0
    for name, entry in stages:
        started = entry.get("started_at")
        rel = _epoch(started) - released if started else float("nan")
        duration = (entry.get("duration_ms") or 0.0) / 1000
        if "infer" in name:
            inference += duration
        rows.append((name, entry.get("state", "?"), f"{rel:8.2f}", f"{duration:8.2f}"))
    total = arrived - released
    rows.append(("last instance released -> SEG+RTSTRUCT at PACS", "", "", f"{total:8.2f}"))
    rows.append(("platform overhead (minus inference)", "", "", f"{total - inference:8.2f}"))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{r[0]:<{width}}  {r[1]:<10} {r[2]:>10} {r[3]:>12}" for r in rows)


def _epoch(iso: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _job_for(engine: Engine, timeout: float) -> dict[str, Any] | None:
    from radflow.engine.jobs import load_jobs

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [
            j
            for j in load_jobs(None)
            if j.get("pipeline") == PIPELINE and j.get("state") != "running"
        ]
        if jobs:
            from radflow.engine.jobs import load_job

            return load_job(None, jobs[0]["job_id"])
        time.sleep(0.5)
    return None


async def _demo(work: Path, slices: int) -> int:
    pacs = LocalPacs(work / "pacs")
    pacs.start()
    dicom_port = free_port()
    config_path = adapter_config(
        work / "dicom-adapter.yaml", dicom_port, (pacs.ae_title, pacs.port), work / "engine"
    )
    engine = Engine(load_engine_config(config_path))
    print(f"starting the embedded engine (state in {work / 'engine'}) ...", flush=True)
    t0 = time.time()
    await engine.start()
    try:
        import os

        for name, value in engine.base_env().items():
            os.environ.setdefault(name, value)
        if not await asyncio.to_thread(wait_for_port, "127.0.0.1", dicom_port, 60):
            print("the DICOM adapter did not start listening; see radflow logs", file=sys.stderr)
            return 1
        print(
            f"engine up in {time.time() - t0:.1f} s; writing a synthetic brain MR study ...",
            flush=True,
        )
        study = await asyncio.to_thread(
            make_study, work / "study", (slices, 128, 128), seed=20261122
        )
        print(
            f"sending {len(study.files)} instances in {len(study.series)} series "
            f"to BRAINSEG@127.0.0.1:{dicom_port}",
            flush=True,
        )
        sent_at, released = await asyncio.to_thread(send_study, study, dicom_port)
        found = await asyncio.to_thread(
            pacs.wait_for, {SEG, RTSTRUCT}, study.study_instance_uid, 600
        )
        if set(found) != {SEG, RTSTRUCT}:
            print(f"timed out: the PACS has {sorted(found)} for the study", file=sys.stderr)
            return 1
        arrived = max(r.at for r in found.values())
        ok = True
        print()
        for label, sop in (("SEG", SEG), ("RTSTRUCT", RTSTRUCT)):
            good, message = dciodvfy(found[sop].path)
            ok &= good
            print(f"{label:<9} {found[sop].path.name}  same study: yes  dciodvfy: {message}")
        dice = seg_dice(found[SEG].path, study)
        print(f"SEG Dice against the phantom truth: {dice:.3f}")
        job = await asyncio.to_thread(_job_for, engine, 30)
        print()
        print(stage_table(job or {}, released, arrived))
        print(f"\nsend (C-STORE of {len(study.files)} instances): {released - sent_at:.2f} s")
        print(
            "The segmentation model is a demo model trained on synthetic phantoms: "
            "not for clinical use."
        )
        return 0 if ok and dice >= 0.5 else 1
    finally:
        await engine.stop()
        pacs.stop()


async def _cancellable(coro: Any) -> int:
    """Run ``coro``; SIGTERM/SIGINT cancel it so its ``finally`` stops the engine and the PACS."""
    import signal

    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return int(await task)
    except asyncio.CancelledError:
        print("interrupted: stopped the engine", file=sys.stderr)
        return 130


def run_demo(args: argparse.Namespace) -> int:
    work = (
        Path(".radflow-demo").resolve()
        if args.keep
        else Path(tempfile.mkdtemp(prefix="radflow-demo-"))
    )
    try:
        return asyncio.run(_cancellable(_demo(work, args.slices or 32)))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
