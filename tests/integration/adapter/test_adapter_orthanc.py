"""Orthanc (Debian package) pushes a study to the adapter: one job with every instance."""

from __future__ import annotations

import pytest
from test_adapter_rest import call

from adapter_data import make_study, wait_settled
from orthanc_server import ORTHANC, SKIP_REASON, OrthancServer
from radflow.sdk.manifest import StudyManifest


@pytest.mark.slow
@pytest.mark.skipif(ORTHANC is None, reason=SKIP_REASON)
def test_orthanc_sends_a_study(adapter_factory, sink, store, tmp_path):
    adapter = adapter_factory(reject_unknown=True)
    # register Orthanc as a source through the Clara REST API first (rejected otherwise)
    assert (
        call(
            adapter.rest_port,
            "POST",
            "/api/config/sourceaetitle",
            {"aeTitle": "ORTHANC", "hostIp": "127.0.0.1"},
        )[0]
        == 201
    )
    with OrthancServer(
        tmp_path / "orthanc", {"radflow": ["BRAIN", "127.0.0.1", adapter.dicom_port]}
    ) as orthanc:
        study = make_study(tmp_path / "in", series=2, per_series=5, size=64)
        parent = orthanc.upload(study.files)
        job = orthanc.store_to("radflow", [parent])
        assert job.get("FailedInstancesCount", 0) == 0, job
        events = sink.wait_for(2)  # BRAIN maps to two pipelines
        assert sorted(e["headers"]["ce-radflowpipeline"] for e in events) == [
            "brain-report",
            "brain-seg",
        ]
        manifest = StudyManifest.model_validate_json(
            store.get_bytes(events[0]["data"]["manifest_key"])
        )
        assert sorted(i.sop_instance_uid for i in manifest.instances) == sorted(study.sop_uids)
        assert manifest.calling_ae == "ORTHANC"
        wait_settled(adapter.status)
        assert len(sink.events) == 2
