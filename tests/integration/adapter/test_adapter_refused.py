"""An instance the object store refuses: parked in the spool, counted, not retried in a loop."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from test_adapter_ingest import pynetdicom_send
from test_adapter_rest import call

from adapter_data import config_yaml, make_study
from radflow.adapter import uploader
from radflow.engine.ports import free_port
from radflow.sdk.manifest import StudyManifest

REFUSED = (
    r"object store put_object refused: the body does not match its checksum \(\w+\) "
    r"in 3 attempts"
)


def test_a_refused_instance_is_parked_not_retried_and_uploaded_after_a_restart(
    adapter_factory, sink, store, tmp_path, monkeypatch, caplog
):
    # the SHA-256 the uploader sends is not that of the spooled bytes: SeaweedFS refuses the PUT
    real_digest = uploader._digest

    def wrong_sha256(path: Path, algorithm: str) -> str:
        if algorithm == "sha256":
            return hashlib.sha256(b"other bytes").hexdigest()
        return real_digest(path, algorithm)

    monkeypatch.setattr(uploader, "_digest", wrong_sha256)
    caplog.set_level(logging.ERROR, logger="radflow.adapter.uploader")
    adapter = adapter_factory()
    sent: list[str] = []
    real_request = adapter.store._http._pool.request

    def request(method, url, **kwargs):  # the real request, counted
        resp = real_request(method, url, **kwargs)
        sent.append(f"{method} {resp.status}")
        return resp

    monkeypatch.setattr(adapter.store._http._pool, "request", request)
    study = make_study(tmp_path / "in", series=1, per_series=2)
    assert pynetdicom_send(adapter.dicom_port, study.files) == [0, 0]  # acknowledged

    deadline = time.monotonic() + 20
    while adapter.status()["upload_parked"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert adapter.status()["upload_parked"] == 2
    # nothing queued, in flight or scheduled again: parked means not retried
    assert adapter.uploader.wait_idle(5) and adapter.uploader.backlog() == 0
    assert [s for s in sent if s.startswith("PUT")] == ["PUT 400"] * 6  # 3 attempts each
    status, body = call(adapter.rest_port, "GET", "/health/status")
    assert status == 200 and body["upload_parked"] == 2
    [(reason, count)] = body["upload_parked_reasons"].items()
    assert re.fullmatch(REFUSED, reason) and count == 2
    # still in the spool, never dropped; the study waits for it
    assert body["spool"]["spooled"] == 2
    assert len(list((tmp_path / "spool" / "data").iterdir())) == 2
    assert sink.events == [] and adapter.emitter.emitted == 0
    parked = [r for r in caplog.records if "parked" in r.getMessage()]
    assert len(parked) == 2
    text = " ".join(r.getMessage() + str(r.__dict__) for r in parked)
    for uid in [study.study_uid, *study.series_uids, *study.sop_uids]:
        assert uid not in text  # no identifiers in the log line
    assert "Synthetic" not in text

    # the cause fixed, a restart tries each parked instance again: uploaded, one job
    adapter.stop()
    monkeypatch.undo()
    again = adapter_factory(spool=tmp_path / "spool")
    [event] = sink.wait_for(1)
    manifest = StudyManifest.model_validate_json(store.get_bytes(event["data"]["manifest_key"]))
    assert sorted(i.sop_instance_uid for i in manifest.instances) == sorted(study.sop_uids)
    assert again.status()["upload_parked"] == 0 and again.spool.stats()["spooled"] == 0


def test_an_adapter_the_store_refuses_exits_with_2_instead_of_being_restarted(tmp_path, seaweed):
    """Refused at start-up is permanent: exit code 2 (a configuration error), not 3 (restart)."""
    cfg = tmp_path / "adapter.yaml"
    cfg.write_text(config_yaml(free_port()))
    env = {
        **os.environ,
        "RADFLOW_ADAPTER_CONFIG": str(cfg),
        "RADFLOW_ADAPTER_SPOOL_DIR": str(tmp_path / "spool"),
        "RADFLOW_ADAPTER_REST_PORT": str(free_port()),
        "RADFLOW_ADAPTER_DROP_POLL_SECONDS": "0",
        "RADFLOW_S3_ENDPOINT_URL": seaweed.endpoint_url,
        "RADFLOW_S3_BUCKET": "Not_A_Valid_Bucket",  # the store refuses to create it
    }
    proc = subprocess.run(
        [sys.executable, "-m", "radflow.adapter"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert re.search(
        r"the object store refuses the adapter's requests: object store create_bucket refused: "
        r"HTTP 400 InvalidBucketName",
        proc.stderr,
    )
