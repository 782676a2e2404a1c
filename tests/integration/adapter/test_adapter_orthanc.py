"""Orthanc (Debian package) pushes a study to the adapter: one job with every instance."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from adapter_data import make_study
from test_adapter_rest import call

from radflow.engine.ports import free_port, wait_for_port
from radflow.shared.manifest import StudyManifest

ORTHANC = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)


def _http(port: int, method: str, path: str, body: bytes) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


@pytest.mark.slow
@pytest.mark.skipif(ORTHANC is None, reason="Orthanc is not installed (Debian package 'orthanc')")
def test_orthanc_sends_a_study(adapter_factory, sink, store, tmp_path):
    adapter = adapter_factory(reject_unknown=True)
    # register Orthanc as a source through the Clara REST API first (rejected otherwise)
    assert call(adapter.rest_port, "POST", "/api/config/sourceaetitle", {"aeTitle": "ORTHANC", "hostIp": "127.0.0.1"})[0] == 201
    http_port, dicom_port = free_port(), free_port()
    cfg = {
        "Name": "radflow-test",
        "StorageDirectory": str(tmp_path / "orthanc-db"),
        "IndexDirectory": str(tmp_path / "orthanc-db"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
        "DicomModalities": {"radflow": ["BRAIN", "127.0.0.1", adapter.dicom_port]},
        "DicomScuTimeout": 30,
    }
    (tmp_path / "orthanc.json").write_text(json.dumps(cfg))
    env = {**os.environ, "TCP_NODELAY": "1"}
    proc = subprocess.Popen([ORTHANC, str(tmp_path / "orthanc.json")], env=env, stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "orthanc.log", "wb"), start_new_session=True)
    try:
        assert wait_for_port("127.0.0.1", http_port, 30), (tmp_path / "orthanc.log").read_text()[-2000:]
        study = make_study(tmp_path / "in", series=2, per_series=5, size=64)
        parent = None
        for f in study.files:
            parent = _http(http_port, "POST", "/instances", f.read_bytes())["ParentStudy"]
        job = _http(http_port, "POST", "/modalities/radflow/store", json.dumps({"Resources": [parent], "Synchronous": True}).encode())
        assert job.get("FailedInstancesCount", 0) == 0, job
        events = sink.wait_for(2)  # BRAIN maps to two pipelines
        assert sorted(e["headers"]["ce-radflowpipeline"] for e in events) == ["brain-report", "brain-seg"]
        manifest = StudyManifest.model_validate_json(store.get_bytes(events[0]["data"]["manifest_key"]))
        assert sorted(i.sop_instance_uid for i in manifest.instances) == sorted(study.sop_uids)
        assert manifest.calling_ae == "ORTHANC"
        time.sleep(0.3)
        assert len(sink.events) == 2
    finally:
        proc.terminate()
        proc.wait(timeout=20)
