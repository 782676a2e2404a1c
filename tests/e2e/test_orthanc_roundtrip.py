"""The reference pipeline end to end with a real Orthanc as the hospital's PACS.

Orthanc pushes a synthetic brain MR study to the DICOM adapter (its REST
``/modalities/radflow/store``, i.e. a C-STORE from Orthanc's own SCU), the embedded engine runs
the five stages (dicom-parser -> triton-infer -> seg-writer + rtstruct-writer -> scu-export), and
the DICOM SEG and the RT Structure Set must arrive back in Orthanc in the same study, valid
(``dciodvfy``) and right (Dice against the phantom truth >= 0.85 on phantoms never used in
training), also when the target series is RLE-compressed and InstanceNumbers are shuffled.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from orthanc_server import ORTHANC, SKIP_REASON, OrthancServer
from radflow.cli.jobs import load_job, load_jobs
from radflow.demo.runner import PIPELINE, RTSTRUCT, SEG, adapter_config, dciodvfy, seg_dice
from radflow.demo.study import SyntheticStudy, make_study
from radflow.engine.config import load_engine_config
from radflow.engine.ports import free_port, wait_for_port
from radflow.engine.stack import Engine
from radflow.sdk.manifest import InstanceRef, StudyManifest
from radflow.sdk.storage import ObjectStore

pytestmark = [
    pytest.mark.slow,
    pytest.mark.e2e,
    pytest.mark.skipif(ORTHANC is None, reason=SKIP_REASON),
    # the first test of a case also pays for its fixtures:
    # engine start (<= 180 s) + round trip (<= 300 s)
    pytest.mark.timeout(600),
]

SHAPE = (32, 128, 128)
#: Training used seeds 0-319 and validation 1,000,000-1,000,049
#: (models/brain_tumor_seg.metrics.json, docs/inference.md); tests draw from 3,000,000 up so the
#: model has never seen these phantoms.
CASES = {
    "plain-shuffled": {"seed": 3_000_101, "compression": None},
    "rle-shuffled": {"seed": 3_000_102, "compression": "rle"},
}
STAGES = {"dicom-parser", "triton-infer", "seg-writer", "rtstruct-writer", "scu-export"}
RESULT_TIMEOUT_S = 240
#: The AE title's Clara ``timeout`` (quiet seconds before a study's group closes). Not 0 ("close on
#: release"): Orthanc 1.10 opens a new association whenever an instance needs a presentation context
#: it has not negotiated yet (here the RLE T1c after the uncompressed series), so one push can span
#: several associations; with 0 the first one starts a job on a partial study, which fails.
GROUP_TIMEOUT_S = 2


@dataclass
class Rig:
    engine: Engine
    orthanc: OrthancServer


class _EngineThread:
    """The embedded engine on its own event loop thread (alive until ``stop``, because the
    engine's children get a parent-death signal tied to the thread that spawned them)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="radflow-engine", daemon=True
        )

    def start(self) -> None:
        self.thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.engine.start(), self.loop).result(timeout=180)
        except BaseException:
            self.stop()  # whatever did start is stopped, and the loop thread ends
            raise

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.engine.stop(), self.loop).result(timeout=120)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    work = tmp_path_factory.mktemp("orthanc-e2e")
    adapter_port = free_port()
    orthanc = OrthancServer(
        work / "orthanc", {"radflow": ["BRAINSEG", "127.0.0.1", adapter_port]}, aet="ORTHANC"
    )
    orthanc.start()
    try:
        config = adapter_config(
            work / "dicom-adapter.yaml",
            adapter_port,
            (orthanc.aet, orthanc.dicom_port),
            work / "engine",
            scale_to_zero_after=60,
            group_timeout=GROUP_TIMEOUT_S,
        )
        engine = Engine(load_engine_config(config))
        runner = _EngineThread(engine)
        runner.start()
        try:
            with pytest.MonkeyPatch.context() as mp:
                for (
                    name,
                    value,
                ) in engine.base_env().items():  # jobs_cli reads the store from RADFLOW_S3_*
                    mp.setenv(name, value)
                assert wait_for_port("127.0.0.1", adapter_port, 60), (
                    "the DICOM adapter did not start listening"
                )
                yield Rig(engine, orthanc)
        finally:
            runner.stop()
    finally:
        orthanc.stop()


def _engine_logs(engine: Engine, chars: int = 3000) -> str:
    logs = sorted((engine.state_dir / "logs").rglob("*.log"), key=lambda p: p.stat().st_mtime)
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}" for p in logs[-4:])


def _finished_jobs(study_uid: str, timeout: float) -> list[dict[str, Any]]:
    """The tracker's view of the study's jobs once none is running (or the last seen)."""
    deadline = time.monotonic() + timeout
    while True:
        listed = [
            j
            for j in load_jobs(None)
            if j.get("pipeline") == PIPELINE and j.get("study_instance_uid") == study_uid
        ]
        jobs = [job for job in (load_job(None, j["job_id"]) for j in listed) if job]
        if (jobs and all(j.get("state") != "running" for j in jobs)) or time.monotonic() > deadline:
            return jobs
        time.sleep(0.5)


def _sop_uids(files: tuple[Path, ...]) -> list[str]:
    return [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]


@dataclass
class RoundTrip:
    """One study sent by Orthanc to the adapter and what came back into Orthanc."""

    case: str
    study: SyntheticStudy
    pushed: dict[str, Any]
    found: dict[str, list[dict[str, Any]]]
    files: dict[str, Path]  #: SOP Class UID -> the instance downloaded back from Orthanc
    jobs: list[dict[str, Any]]  #: the tracker's jobs for the study (one expected)
    received: list[InstanceRef]  #: what the adapter stored for the job's study (its manifests)


@pytest.fixture(scope="module", params=list(CASES))
def roundtrip(
    request: pytest.FixtureRequest, rig: Rig, tmp_path_factory: pytest.TempPathFactory
) -> RoundTrip:
    case = request.param
    work = tmp_path_factory.mktemp(case)
    seed, compression = CASES[case]["seed"], CASES[case]["compression"]
    study = make_study(work / "study", SHAPE, seed=seed, compression=compression, shuffle=True)
    orthanc = rig.orthanc
    study_id = orthanc.upload(study.files)
    pushed = orthanc.store_to("radflow", [study_id])
    found = orthanc.wait_for_instances(
        study_id, {"SEG", "RTSTRUCT"}, {SEG, RTSTRUCT}, RESULT_TIMEOUT_S
    )
    if not {SEG, RTSTRUCT} <= set(found):
        pytest.fail(
            f"{case}: after {RESULT_TIMEOUT_S} s Orthanc holds {sorted(found)} "
            f"of SEG/RTSTRUCT for the study\n{_engine_logs(rig.engine)}"
        )
    files: dict[str, Path] = {}
    for sop_class, name in ((SEG, "seg.dcm"), (RTSTRUCT, "rtstruct.dcm")):
        files[sop_class] = work / name
        files[sop_class].write_bytes(
            orthanc.request("GET", f"/instances/{found[sop_class][0]['ID']}/file")
        )
    jobs = _finished_jobs(study.study_instance_uid, 60)
    received: dict[str, InstanceRef] = {}
    store = ObjectStore(rig.engine.store_settings())
    for study_id in {j["study_id"] for j in jobs if j.get("study_id")}:
        for obj in store.list(f"studies/{study_id}/manifests/"):
            for ref in StudyManifest.model_validate_json(store.get_bytes(obj.key)).instances:
                received[ref.sop_instance_uid] = ref
    return RoundTrip(case, study, pushed, found, files, jobs, list(received.values()))


def test_orthanc_pushed_the_whole_study(roundtrip: RoundTrip) -> None:
    assert roundtrip.pushed.get("FailedInstancesCount", 0) == 0, roundtrip.pushed
    assert roundtrip.pushed.get("InstancesCount") == len(roundtrip.study.files), roundtrip.pushed
    # the adapter stored every instance, and the target arrived as sent (Orthanc did not transcode)
    assert {i.sop_instance_uid for i in roundtrip.received} >= set(_sop_uids(roundtrip.study.files))
    target = roundtrip.study.target.series_instance_uid
    syntaxes = {
        i.transfer_syntax_uid for i in roundtrip.received if i.series_instance_uid == target
    }
    assert syntaxes == (
        {RLELossless} if CASES[roundtrip.case]["compression"] == "rle" else {ExplicitVRLittleEndian}
    )


def test_seg_and_rtstruct_arrive_once_in_the_same_study(roundtrip: RoundTrip) -> None:
    assert len(roundtrip.found[SEG]) == 1 and len(roundtrip.found[RTSTRUCT]) == 1, roundtrip.found
    for path in roundtrip.files.values():
        assert (
            dcmread(path, stop_before_pixels=True).StudyInstanceUID
            == roundtrip.study.study_instance_uid
        )


def test_results_reference_the_t1c_target_series(roundtrip: RoundTrip) -> None:
    target_uid = roundtrip.study.target.series_instance_uid
    target_sops = set(_sop_uids(roundtrip.study.target.files))
    seg = dcmread(roundtrip.files[SEG], stop_before_pixels=True)
    assert [str(s.SeriesInstanceUID) for s in seg.ReferencedSeriesSequence] == [target_uid]
    referenced = {
        str(i.ReferencedSOPInstanceUID)
        for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert referenced and referenced <= target_sops
    rtstruct = dcmread(roundtrip.files[RTSTRUCT])
    study_ref = rtstruct.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    assert [str(s.SeriesInstanceUID) for s in study_ref.RTReferencedSeriesSequence] == [target_uid]


@pytest.mark.skipif(
    shutil.which("dciodvfy") is None, reason="dciodvfy not installed (apt-get install dicom3tools)"
)
def test_results_pass_dciodvfy(roundtrip: RoundTrip) -> None:
    for sop_class, path in roundtrip.files.items():
        ok, message = dciodvfy(path)
        assert ok, f"{roundtrip.case} {sop_class}: dciodvfy {message}"


def test_seg_dice_against_the_phantom_truth(roundtrip: RoundTrip) -> None:
    dice = seg_dice(roundtrip.files[SEG], roundtrip.study)
    seed = CASES[roundtrip.case]["seed"]
    assert dice >= 0.85, (
        f"{roundtrip.case}: SEG Dice {dice:.3f} < 0.85 "
        f"against the truth of held-out phantom seed {seed}"
    )


def test_job_tracker_reports_one_job_with_all_stages_completed(roundtrip: RoundTrip) -> None:
    # one study pushed once -> one job (a job started on a partial study would fail or be wasted)
    assert len(roundtrip.jobs) == 1, [
        (j["job_id"], j["state"], j.get("failure") or j.get("error")) for j in roundtrip.jobs
    ]
    job = roundtrip.jobs[0]
    assert job["state"] == "completed", job
    assert set(job["stages"]) == STAGES, sorted(job["stages"])
    assert all(s["state"] == "completed" for s in job["stages"].values()), job["stages"]
