"""An instance the object store refuses: parked in the spool, counted, not retried in a loop."""

from __future__ import annotations

import hashlib
import logging
import re
import time
from pathlib import Path

from test_adapter_ingest import pynetdicom_send
from test_adapter_rest import call

from adapter_data import make_study
from radflow.adapter import uploader
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
