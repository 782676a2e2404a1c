"""The reference pipeline end to end: a synthetic brain MR study in, SEG + RTSTRUCT at MYPACS.

Everything real: the compiled ``knative/`` Services as functions-framework processes run by the
engine's function host, events delivered by the engine's broker (tests/pipeline_support.py:
``PipelineEngine``), SeaweedFS, the model in ONNX Runtime (triton-infer's in-process backend, so
no Triton server is needed), dcmtk's ``storescp`` as MYPACS, ``dciodvfy`` on what arrives.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from pipeline_support import REPO, PipelineEngine, compile_to, store_env, study_event
from radflow.engine.ports import free_port, wait_for_port
from radflow.sdk import events
from radflow.sdk.manifest import InstanceRef, StudyManifest
from radflow.sdk.settings import StoreSettings
from radflow.sdk.storage import Keys, ObjectStore

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
MODELS = REPO / "models/triton"


@pytest.mark.skipif(shutil.which("storescp") is None, reason="dcmtk storescp is not installed")
@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) missing")
def test_brain_study_to_seg_and_rtstruct_at_mypacs(
    tmp_path: Path, store_settings: StoreSettings, store: ObjectStore
) -> None:
    import pydicom

    from radflow.demo.study import make_study  # type: ignore[import-not-found]

    study = make_study(tmp_path / "study")
    refs = []
    for f in study.files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        sid = events.deterministic_id("study", ds.StudyInstanceUID)
        key = Keys.instance(sid, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        data = f.read_bytes()
        store.put_bytes(key, data)
        refs.append(
            InstanceRef(
                sop_instance_uid=ds.SOPInstanceUID,
                sop_class_uid=ds.SOPClassUID,
                series_instance_uid=ds.SeriesInstanceUID,
                transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
                key=key,
                size=len(data),
                sha256="0" * 64,
            )
        )
    study_uid = str(ds.StudyInstanceUID)
    sid, gid = (
        events.deterministic_id("study", study_uid),
        events.deterministic_id("group", study_uid),
    )
    manifest = StudyManifest(
        study_id=sid,
        study_instance_uid=study_uid,
        group_id=gid,
        called_ae="RADFLOW",
        instances=refs,
    )
    store.put_bytes(Keys.manifest(sid, gid), manifest.model_dump_json().encode())
    req = events.JobRequested(
        job_id=events.deterministic_id(gid, "brain-tumor-segmentation", "0"),
        pipeline="brain-tumor-segmentation",
        study_id=sid,
        group_id=gid,
        manifest_key=Keys.manifest(sid, gid),
        instance_count=len(refs),
        called_ae="RADFLOW",
    )

    port = free_port()
    pacs = tmp_path / "pacs"
    pacs.mkdir()
    # +uf: one file per reception, so an object sent twice is counted twice
    scp = subprocess.Popen(
        ["storescp", "+uf", "-aet", "MYPACS", "-od", str(pacs), str(port)],
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    assert wait_for_port("127.0.0.1", port, 10)
    store.put_bytes(
        "config/dicom-adapter.json",
        json.dumps(
            {
                "destinations": [
                    {"name": "MYPACS", "ae-title": "MYPACS", "host-ip": "127.0.0.1", "port": port}
                ]
            }
        ).encode(),
    )
    # no Triton server here: triton-infer's in-process ONNX Runtime backend, set in the pipeline
    # (a Service's env wins over the engine's base env, as on Knative)
    src = tmp_path / "brain-tumor-segmentation.yaml"
    text = (REPO / "pipelines/brain-tumor-segmentation.yaml").read_text()
    src.write_text(
        text.replace("TRITON_BACKEND: triton", "TRITON_BACKEND: onnxruntime").replace(
            'TRITON_MODEL_REPOSITORY: ""', f"TRITON_MODEL_REPOSITORY: {MODELS}"
        )
    )
    kn = compile_to(src, tmp_path / "knative")
    env = {**store_env(store_settings), "TCP_NODELAY": "1"}
    try:
        with PipelineEngine(kn, tmp_path / "state", base_env=env) as engine:
            original = study_event(store, req)
            engine.publish(original)
            engine.wait_idle(timeout=300)
            status = engine.job_status(req.job_id)
            seen = {e["type"] for e in engine.seen}
            first = sorted(pacs.iterdir())
            # the same job request replayed under a new ce-id: no stage runs, nothing exported
            engine.publish(events.with_attributes(original, id=str(uuid.uuid4())))
            engine.wait_idle(timeout=300)
            after_replay = sorted(pacs.iterdir())
            # the study re-sent with changes: revision 1 of the same group, a new job
            manifest_r1 = manifest.model_copy(update={"revision": 1})
            key_r1 = Keys.manifest(sid, f"{gid}-r1")
            store.put_bytes(key_r1, manifest_r1.model_dump_json().encode())
            req_r1 = req.model_copy(
                update={
                    "revision": 1,
                    "manifest_key": key_r1,
                    "job_id": events.job_id_for(gid, "brain-tumor-segmentation", 1),
                }
            )
            engine.publish(
                events.with_attributes(
                    study_event(store, req_r1), type=events.EventType.STUDY_REVISED.value
                )
            )
            engine.wait_idle(timeout=300)
            status_r1 = engine.job_status(req_r1.job_id)
    finally:
        scp.terminate()
        scp.wait(timeout=10)
    assert status["state"] == "completed", json.dumps(status["stages"], indent=1)
    assert status["study_instance_uid"] == study_uid
    assert [p.name[:3] for p in first] == ["RS.", "SG."]
    assert after_replay == first  # nothing sent again
    assert status_r1["state"] == "completed", json.dumps(status_r1["stages"], indent=1)
    received = sorted(pacs.iterdir())
    assert len(received) == 4, received
    datasets = {p: pydicom.dcmread(p, stop_before_pixels=True) for p in received}
    for path in received:
        out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        assert "Error" not in out.stdout + out.stderr, out.stderr[-2000:]
    revised = [ds for p, ds in datasets.items() if p not in first]
    originals = [ds for p, ds in datasets.items() if p in first]
    # revision 1's SEG and RTSTRUCT: new UIDs, the same study, naming their revision
    assert {ds.SOPInstanceUID for ds in revised}.isdisjoint(ds.SOPInstanceUID for ds in originals)
    assert {ds.SeriesInstanceUID for ds in revised}.isdisjoint(
        ds.SeriesInstanceUID for ds in originals
    )
    assert {ds.StudyInstanceUID for ds in datasets.values()} == {study_uid}
    assert sorted(ds.Modality for ds in revised) == ["RTSTRUCT", "SEG"]
    assert all(" rev 1 - " in ds.SeriesDescription for ds in revised)
    assert not any(" rev " in ds.SeriesDescription for ds in originals)
    assert events.EventType.JOB_COMPLETED.value in seen
    assert status["dead_letters"] == []
