"""kill -9 during ingest: every acknowledged instance survives and lands in exactly one job."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]

from adapter_data import config_yaml, make_study, wait_settled
from radflow.engine.ports import free_port, wait_for_port
from radflow.sdk.events import EventType
from radflow.sdk.manifest import StudyManifest


def _spawn(
    tmp_path: Path, store_settings, sink_url: str, dicom_port: int, rest_port: int, log_name: str
) -> subprocess.Popen:
    cfg = tmp_path / "adapter.yaml"
    cfg.write_text(config_yaml(dicom_port, timeout=0))
    env = {
        **os.environ,
        "RADFLOW_ADAPTER_CONFIG": str(cfg),
        "RADFLOW_ADAPTER_SPOOL_DIR": str(tmp_path / "spool"),
        "RADFLOW_ADAPTER_REST_PORT": str(rest_port),
        "RADFLOW_ADAPTER_UPLOAD_WORKERS": "1",
        "RADFLOW_ADAPTER_DROP_POLL_SECONDS": "0",
        "RADFLOW_S3_ENDPOINT_URL": store_settings.endpoint_url,
        "RADFLOW_S3_BUCKET": store_settings.bucket,
        "K_SINK": sink_url,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "radflow.adapter"],
        env=env,
        stderr=open(tmp_path / log_name, "wb"),
        start_new_session=True,
    )
    assert wait_for_port("127.0.0.1", dicom_port, 30), (tmp_path / log_name).read_text()[-2000:]
    return proc


@pytest.mark.slow
def test_kill_9_mid_association_then_restart(tmp_path, store_settings, store, sink):
    dicom_port, rest_port = free_port(), free_port()
    study = make_study(tmp_path / "in", series=2, per_series=20, size=256)  # 40 x ~130 KB
    proc = _spawn(tmp_path, store_settings, sink.url, dicom_port, rest_port, "run1.log")
    acked: list[str] = []
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", dicom_port, ae_title="RADFLOW")
    assert assoc.is_established
    for f, uid in zip(study.files, study.sop_uids, strict=True):
        rsp = assoc.send_c_store(f)
        if rsp and int(rsp.Status) == 0:
            acked.append(uid)
        if len(acked) == 30:
            os.killpg(proc.pid, signal.SIGKILL)  # no release, no clean shutdown
            break
    proc.wait(timeout=10)
    assoc.abort()
    assert len(acked) == 30
    assert sink.events == []  # the association never ended: nothing was emitted

    proc2 = _spawn(tmp_path, store_settings, sink.url, dicom_port, rest_port, "run2.log")
    try:
        events = sink.wait_for(1, timeout=30)
        assert len(events) == 1, (tmp_path / "run2.log").read_text()[-3000:]
        ev = events[0]
        assert ev["headers"]["ce-type"] == EventType.STUDY_RECEIVED
        manifest = StudyManifest.model_validate_json(store.get_bytes(ev["data"]["manifest_key"]))
        in_job = [i.sop_instance_uid for i in manifest.instances]
        assert set(acked) <= set(in_job)
        assert len(in_job) == len(set(in_job))
        for inst in manifest.instances:
            assert store.head(inst.key).size == inst.size

        def status() -> dict:
            url = f"http://127.0.0.1:{rest_port}/health/status"
            with urllib.request.urlopen(url, timeout=5) as r:
                return dict(json.load(r))

        assert wait_settled(status)["spool"]["spooled"] == 0  # recovered, uploaded, emitted
        assert len(sink.events) == 1  # exactly one job for the group, no duplicate after restart
    finally:
        proc2.send_signal(signal.SIGTERM)
        assert proc2.wait(timeout=20) == 0
    log = (tmp_path / "run2.log").read_text()
    recovered = [json.loads(line) for line in log.splitlines() if "spool recovered" in line]
    assert recovered and recovered[0]["interrupted_associations"] == 1
    print(
        "recovery:", {k: recovered[0][k] for k in ("interrupted_associations", "pending_uploads")}
    )
    assert study.study_uid not in log and "Synthetic" not in log  # no PHI / UIDs in logs


def test_main_without_yaml_serves_the_persisted_configuration(tmp_path, store_settings, store):
    """`radflow up` without --config: the adapter runs from config/dicom-adapter.json alone."""
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    doc = {
        "ae-titles": [{"name": "SAVED", "ae-title": "SAVED", "timeout": 0}],
        "sources": [],
        "destinations": [],
        "pipeline-mappings": [],
    }
    store.put_bytes("config/dicom-adapter.json", json.dumps(doc).encode())
    dicom_port, rest_port = free_port(), free_port()
    env = {
        **os.environ,
        "RADFLOW_ADAPTER_CONFIG": str(tmp_path / "missing.yaml"),
        "RADFLOW_ADAPTER_SPOOL_DIR": str(tmp_path / "spool"),
        "RADFLOW_ADAPTER_DICOM_PORT": str(dicom_port),
        "RADFLOW_ADAPTER_REST_PORT": str(rest_port),
        "RADFLOW_S3_ENDPOINT_URL": store_settings.endpoint_url,
        "RADFLOW_S3_BUCKET": store_settings.bucket,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "radflow.adapter"],
        env=env,
        stderr=open(tmp_path / "run.log", "wb"),
        start_new_session=True,
    )
    try:
        assert wait_for_port("127.0.0.1", dicom_port, 30), (tmp_path / "run.log").read_text()[
            -2000:
        ]
        ae = AE(ae_title="ANY")
        ae.add_requested_context(Verification)
        refused = ae.associate("127.0.0.1", dicom_port, ae_title="SAVED")
        assert (
            refused.is_rejected
        )  # reject-unknown-sources defaults to true (Clara) and ANY is unknown
        body = json.dumps({"aeTitle": "ANY", "hostIp": "127.0.0.1"}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{rest_port}/api/config/sourceaetitle", data=body, method="POST"
        )
        assert wait_for_port("127.0.0.1", rest_port, 10)
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 201
        assoc = ae.associate("127.0.0.1", dicom_port, ae_title="SAVED")
        assert assoc.is_established
        assoc.release()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_killed_receiver_keeps_what_it_acknowledged_and_is_replaced(
    adapter_factory, sink, store, tmp_path
):
    """SIGKILL of the receiver process serving an association: its acked instances are kept (cut
    by us, like a crash of the adapter), the job starts with them, a new receiver serves the next
    peer."""
    adapter = adapter_factory(receivers=2)
    before = set(adapter.receivers.pids())
    study = make_study(tmp_path / "in", series=1, per_series=12, size=64)
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", adapter.dicom_port, ae_title="RADFLOW")
    assert assoc.is_established
    acked = []
    for f, uid in zip(study.files[:8], study.sop_uids[:8], strict=True):
        rsp = assoc.send_c_store(f)
        assert rsp and int(rsp.Status) == 0
        acked.append(uid)
    for pid in before:
        os.kill(pid, signal.SIGKILL)  # whichever serves us, with no release and no abort
    deadline = time.monotonic() + 10
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not assoc.is_established
    ev = sink.wait_for(1, timeout=20)[0]
    manifest = StudyManifest.model_validate_json(store.get_bytes(ev["data"]["manifest_key"]))
    assert sorted(i.sop_instance_uid for i in manifest.instances) == sorted(acked)
    deadline = time.monotonic() + 20
    while (
        len(adapter.receivers.pids()) < 2 or not adapter.ready()
    ) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(set(adapter.receivers.pids()) - before) == 2
    again = ae.associate("127.0.0.1", adapter.dicom_port, ae_title="RADFLOW")
    assert again.is_established
    rsp = again.send_c_store(study.files[8])
    assert rsp and int(rsp.Status) == 0
    again.release()
    assert len(sink.wait_for(2, timeout=20)) == 2


def test_receivers_exit_when_the_adapter_process_is_killed(tmp_path, store_settings, store, sink):
    dicom_port, rest_port = free_port(), free_port()
    proc = _spawn(tmp_path, store_settings, sink.url, dicom_port, rest_port, "run.log")
    try:
        deadline = time.monotonic() + 30
        while len(_children(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        receivers = _children(proc.pid)
        assert len(receivers) == 2  # the default RADFLOW_ADAPTER_RECEIVERS
        os.kill(proc.pid, signal.SIGKILL)  # the adapter process only, not its process group
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in receivers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(p) for p in receivers), "a receiver outlived the adapter process"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_receiver_that_cannot_start_is_retried_with_backoff(adapter_factory, tmp_path, caplog):
    """A receiver dying during start-up (here: its configuration file is garbage) is restarted with
    a growing delay, not in a tight loop, and serves again once it can start."""
    caplog.set_level(logging.ERROR, logger="radflow.adapter.receiver_pool")
    adapter = adapter_factory(receivers=1)
    config_file = tmp_path / "spool" / "receiver-config.json"
    good = config_file.read_text()
    config_file.write_text("not json")
    (victim,) = adapter.receivers.pids()
    os.kill(victim, signal.SIGKILL)

    def restart_delays() -> list[float]:
        """The delay the pool announced before each restart (its log line's last argument)."""
        return [
            float(r.args[-1])  # type: ignore[index]
            for r in caplog.records
            if r.name == "radflow.adapter.receiver_pool" and "starting a new one" in r.msg
        ]

    deadline = time.monotonic() + 30
    while len(restart_delays()) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    # the victim had served: replaced at once; each failed start doubles the wait from 0.5 s
    assert restart_delays()[:4] == [0.0, 0.5, 1.0, 2.0]
    assert (
        not adapter.ready()
    )  # no receiver can serve: not ready, as a readiness probe should see it
    config_file.write_text(good)
    deadline = time.monotonic() + 30
    while not adapter.ready() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert adapter.ready()
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", adapter.dicom_port, ae_title="RADFLOW")
    assert assoc.is_established
    assoc.release()


def test_sigterm_to_the_process_group_stops_cleanly(tmp_path, store_settings, store, sink):
    """Ctrl-C or an engine stopping the workload signals the whole group: receivers leave the
    shutdown to the adapter process (no receiver dies first and gets restarted meanwhile)."""
    dicom_port, rest_port = free_port(), free_port()
    proc = _spawn(tmp_path, store_settings, sink.url, dicom_port, rest_port, "run.log")
    deadline = time.monotonic() + 30
    while len(_children(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    receivers = _children(proc.pid)
    assert len(receivers) == 2
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in receivers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in receivers)
    log = (tmp_path / "run.log").read_text()
    assert "starting a new one" not in log, log[-2000:]
