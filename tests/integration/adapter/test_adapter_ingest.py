"""C-STORE ingest end to end on loopback: real SCUs -> adapter -> SeaweedFS + job events."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from adapter_data import make_study
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]

from radflow.shared.events import EventType
from radflow.shared.manifest import StudyManifest


def pynetdicom_send(port: int, files: list[Path], *, called: str = "RADFLOW", calling: str = "PYSCU", abort: bool = False) -> list[int]:
    ae = AE(ae_title=calling)
    ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established, "association was not accepted"
    statuses = []
    for f in files:
        rsp = assoc.send_c_store(f)
        statuses.append(int(rsp.Status) if rsp else -1)
    if abort:
        assoc.abort()
    else:
        assoc.release()
    return statuses


def storescu(port: int, files: list[Path], *, called: str = "RADFLOW", calling: str = "STORESCU") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TCP_NODELAY": "1"}
    return subprocess.run(
        ["storescu", "-aet", calling, "-aec", called, "--max-pdu", "131072", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True, text=True, env=env, timeout=60,
    )


def test_pynetdicom_study_stored_and_one_job_event(adapter_factory, sink, store, tmp_path):
    adapter = adapter_factory()
    study = make_study(tmp_path / "in", series=2, per_series=3)
    assert pynetdicom_send(adapter.dicom_port, study.files) == [0] * 6
    events = sink.wait_for(1)
    assert len(events) == 1
    ev = events[0]
    h = ev["headers"]
    assert h["ce-type"] == EventType.STUDY_RECEIVED
    assert h["ce-source"] == "/radflow/dicom-adapter/RADFLOW"
    assert h["ce-radflowpipeline"] == "brain-seg"
    assert h["ce-id"] == h["ce-radflowjob"] == ev["data"]["job_id"]
    manifest = StudyManifest.model_validate_json(store.get_bytes(store.key_from_uri(h["ce-dataref"])))
    assert sorted(i.sop_instance_uid for i in manifest.instances) == sorted(study.sop_uids)
    assert manifest.study_instance_uid == study.study_uid
    for inst, f in zip(sorted(manifest.instances, key=lambda i: i.sop_instance_uid), sorted(study.files), strict=False):
        pass
    originals = {f.read_bytes()[132:][-512:] for f in study.files}
    for inst in manifest.instances:
        blob = store.get_bytes(inst.key)
        assert len(blob) == inst.size
        assert blob[-512:] in originals  # stored byte for byte (pixel data tail)
    # no PHI or UIDs in the event
    raw = str(ev)
    assert study.study_uid not in raw and "Synthetic" not in raw and "SYNTH-0001" not in raw
    time.sleep(0.3)
    assert len(sink.events) == 1


import time  # noqa: E402
