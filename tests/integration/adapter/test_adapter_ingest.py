"""C-STORE ingest end to end on loopback: real SCUs -> adapter -> SeaweedFS + job events."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]

from adapter_data import make_study, wait_counter, wait_settled
from radflow.sdk.events import EventType
from radflow.sdk.manifest import StudyManifest


def pynetdicom_send(
    port: int,
    files: list[Path],
    *,
    called: str = "RADFLOW",
    calling: str = "PYSCU",
    abort: bool = False,
) -> list[int]:
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


def storescu(
    port: int, files: list[Path], *, called: str = "RADFLOW", calling: str = "STORESCU"
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TCP_NODELAY": "1"}
    return subprocess.run(
        [
            "storescu",
            "-aet",
            calling,
            "-aec",
            called,
            "--max-pdu",
            "131072",
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.mark.parametrize("receivers", [2, 0], ids=["receiver-processes", "in-process"])
def test_pynetdicom_study_stored_and_one_job_event(
    adapter_factory, sink, store, tmp_path, receivers
):
    adapter = adapter_factory(receivers=receivers)
    assert (adapter.receivers is None) == (receivers == 0)
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
    manifest = StudyManifest.model_validate_json(
        store.get_bytes(store.key_from_uri(h["ce-dataref"]))
    )
    assert sorted(i.sop_instance_uid for i in manifest.instances) == sorted(study.sop_uids)
    assert manifest.study_instance_uid == study.study_uid
    originals = {f.read_bytes()[132:][-512:] for f in study.files}
    for inst in manifest.instances:
        blob = store.get_bytes(inst.key)
        assert len(blob) == inst.size
        assert blob[-512:] in originals  # stored byte for byte (pixel data tail)
    # no PHI or UIDs in the event
    raw = str(ev)
    assert study.study_uid not in raw and "Synthetic" not in raw and "SYNTH-0001" not in raw
    status = wait_settled(adapter.status)  # processed to the end: no event can follow
    assert len(sink.events) == 1 and status["outbox"] == {"sent": 1}


def test_dcmtk_storescu_two_pipelines_one_event_each(adapter_factory, sink, store, tmp_path):
    adapter = adapter_factory()
    study = make_study(tmp_path / "in", series=1, per_series=4)
    res = storescu(adapter.dicom_port, study.files, called="BRAIN")
    assert res.returncode == 0, res.stderr
    events = sink.wait_for(2)
    assert sorted(e["headers"]["ce-radflowpipeline"] for e in events) == [
        "brain-report",
        "brain-seg",
    ]
    assert len({e["headers"]["ce-id"] for e in events}) == 2
    assert {e["data"]["group_id"] for e in events} == {events[0]["data"]["group_id"]}
    assert all(e["data"]["instance_count"] == 4 for e in events)
    wait_settled(adapter.status)
    assert len(sink.events) == 2


@pytest.mark.parametrize("receivers", [2, 0], ids=["receiver-processes", "in-process"])
def test_aborted_association_is_discarded_and_starts_no_job(
    adapter_factory, sink, store, tmp_path, receivers
):
    adapter = adapter_factory(receivers=receivers)
    study = make_study(tmp_path / "in", series=1, per_series=3)
    assert pynetdicom_send(adapter.dicom_port, study.files, abort=True) == [0, 0, 0]
    # settled: the abort was processed and what it left (rows, spool files) was cleaned up
    status = wait_settled(adapter.status)
    assert sink.events == [] and status["outbox"] == {}  # no event, none queued
    assert status["spool"]["discarded"] == 0
    assert list((adapter.settings.spool_dir / "data").iterdir()) == []
    # a complete send afterwards yields exactly one job with exactly the study's instances
    assert pynetdicom_send(adapter.dicom_port, study.files) == [0, 0, 0]
    events = sink.wait_for(1)
    assert events[0]["data"]["revision"] == 0 and events[0]["data"]["instance_count"] == 3
    status = wait_settled(adapter.status)
    assert len(sink.events) == 1 and status["outbox"] == {"sent": 1}
    assert adapter.uploader.clean_discarded() == 0  # nothing left behind to clean


def test_late_instances_make_a_revision_not_a_new_job(adapter_factory, sink, store, tmp_path):
    adapter = adapter_factory()
    study = make_study(tmp_path / "in", series=1, per_series=3)
    pynetdicom_send(adapter.dicom_port, study.files[:2])
    first = sink.wait_for(1)[0]
    pynetdicom_send(adapter.dicom_port, study.files[2:])
    events = sink.wait_for(2)
    second = events[1]
    assert second["headers"]["ce-type"] == EventType.STUDY_REVISED
    assert second["data"]["group_id"] == first["data"]["group_id"]
    assert second["data"]["revision"] == 1 and second["data"]["instance_count"] == 3
    assert second["headers"]["ce-id"] != first["headers"]["ce-id"]
    m0 = StudyManifest.model_validate_json(store.get_bytes(first["data"]["manifest_key"]))
    assert len(m0.instances) == 2  # revision 0's manifest is not overwritten
    # re-sending the same instances changes nothing: no event
    assert pynetdicom_send(adapter.dicom_port, study.files) == [0, 0, 0]
    status = wait_settled(adapter.status)  # the re-sent group was processed
    assert len(sink.events) == 2 and status["outbox"] == {"sent": 2}


def test_timeout_groups_across_associations(adapter_factory, sink, tmp_path):
    adapter = adapter_factory(timeout=1.5)
    study = make_study(tmp_path / "in", series=3, per_series=2)
    for i in range(3):
        last_send = time.time()  # the group's last activity is after this
        assert pynetdicom_send(adapter.dicom_port, study.files[2 * i : 2 * i + 2]) == [0, 0]
    events = sink.wait_for(1, timeout=10)
    assert len(events) == 1 and events[0]["data"]["instance_count"] == 6
    assert events[0]["at"] >= last_send + 1.5  # emitted no sooner than the quiet timeout
    wait_settled(adapter.status)
    assert len(sink.events) == 1


def test_outbox_retries_until_broker_accepts(adapter_factory, sink, tmp_path):
    sink.fail_next = 3
    adapter = adapter_factory()
    study = make_study(tmp_path / "in", series=1, per_series=2)
    pynetdicom_send(adapter.dicom_port, study.files)
    events = sink.wait_for(1, timeout=20)
    assert len(events) == 1
    deadline = time.monotonic() + 5
    while adapter.spool.outbox.counts() != {"sent": 1} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert adapter.spool.outbox.counts() == {"sent": 1}


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize(
    ("study_uid", "series_uid", "sop_uid"),
    [
        ("../../etc", "1.2.3", "1.2.4"),
        ("1.2.3", "a/../../b", "1.2.4"),
        ("1.2.3", "1.2.4", "1.2.3/.."),
        ("1.2.3", "1.2.4", ".."),
        ("1.2..3", "1.2.4", "1.2.5"),  # empty component
        ("1.2." + "9" * 62, "1.2.4", "1.2.5"),  # 66 characters
        ("1.2.3", "1.2." + "9" * 62, "1.2.5"),
    ],
    ids=[
        "study-dotdot",
        "series-slash",
        "sop-slash",
        "sop-dotdot",
        "empty-component",
        "long-study",
        "long-series",
    ],
)
def test_invalid_uids_are_refused_and_nothing_is_stored(
    adapter_factory, sink, store, tmp_path, caplog, study_uid, series_uid, sop_uid
):
    """PS3.5 9.1 UIDs only: anything else gets 0xA900 with a reason naming the tag, not the
    value, and leaves nothing behind (no object, no spool file, no event)."""
    from adapter_data import make_instance

    adapter = adapter_factory(receivers=0)  # in-process: the refusal's log line is captured
    f = tmp_path / "bad.dcm"
    make_instance(f, study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid)
    with caplog.at_level("WARNING", logger="radflow.adapter"):
        assert pynetdicom_send(adapter.dicom_port, [f]) == [0xA900]
    refusals = [r.getMessage() for r in caplog.records if "instance refused" in r.getMessage()]
    assert len(refusals) == 1
    assert "Instance UID" in refusals[0] and "PS3.5 9.1" in refusals[0]
    assert not any(v in refusals[0] for v in (study_uid, series_uid, sop_uid))
    status = wait_settled(adapter.status)
    assert status["scp"]["refused_instances"] == 1
    assert sink.events == []
    assert [o.key for o in store.list("studies/")] == []
    assert list((adapter.settings.spool_dir / "data").iterdir()) == []


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_a_uid_with_leading_zeros_from_an_older_modality_is_kept(adapter_factory, store, tmp_path):
    """``1.2.03`` breaks PS3.5 9.1's no-leading-zero rule but is digits and dots: refusing it
    would lose the instance for nothing, so it is acknowledged and stored."""
    from adapter_data import make_instance

    adapter = adapter_factory(receivers=0)
    f = tmp_path / "old.dcm"
    make_instance(f, study_uid="1.2.03", series_uid="1.2.004", sop_uid="1.2.5")
    assert pynetdicom_send(adapter.dicom_port, [f]) == [0x0000]
    wait_settled(adapter.status)
    assert any(o.key.endswith("1.2.5.dcm") for o in store.list("studies/"))


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_an_over_long_affected_sop_instance_uid_is_answered_not_left_waiting(
    adapter_factory, sink, store, tmp_path, monkeypatch
):
    """The C-STORE response echoes the Affected SOP Instance UID: with 70 characters it used to
    fail to encode, and the sender waited out its DIMSE timeout. Now it gets 0xA900 at once, and
    the association goes on."""
    from pynetdicom import _config

    from adapter_data import make_instance

    adapter = adapter_factory()  # receivers in their own processes: the patch below is the SCU's
    # the sender misbehaves: pynetdicom would refuse to send this request
    monkeypatch.setitem(_config.VALIDATORS, "UI", lambda value: (True, ""))
    bad = tmp_path / "long.dcm"
    make_instance(bad, study_uid="1.2.3", series_uid="1.2.4", sop_uid="1.2." + "7" * 66)
    good = make_study(tmp_path / "in", series=1, per_series=1)
    ae = AE(ae_title="PYSCU")
    ae.dimse_timeout = 20
    ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", adapter.dicom_port, ae_title="RADFLOW")
    assert assoc.is_established
    started = time.monotonic()
    rsp = assoc.send_c_store(bad)
    elapsed = time.monotonic() - started
    assert rsp is not None and "Status" in rsp, "no C-STORE response"
    assert int(rsp.Status) == 0xA900
    assert elapsed < 5, f"answered after {elapsed:.1f} s"
    assert int(assoc.send_c_store(good.files[0]).Status) == 0
    assoc.release()
    ev = sink.wait_for(1)[0]
    assert ev["data"]["instance_count"] == 1


def test_truncated_and_non_dicom_datasets_are_refused(adapter_factory, sink, tmp_path):
    """The peer gets a failure status (nothing acked), the association and the adapter go on."""
    adapter = adapter_factory()
    study = make_study(tmp_path / "in", series=1, per_series=2, size=64)
    blob = study.files[0].read_bytes()
    meta_end = 132 + 12 + struct.unpack_from("<I", blob, 132 + 8)[0]
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", adapter.dicom_port, ae_title="RADFLOW")
    assert assoc.is_established
    status_trunc = _send_raw(assoc, blob[:-1000], tmp_path / "t.dcm")
    status_garbage = _send_raw(assoc, blob[:meta_end] + os.urandom(4000), tmp_path / "g.dcm")
    status_empty = _send_raw(assoc, blob[:meta_end], tmp_path / "e.dcm")
    status_ok = int(assoc.send_c_store(study.files[1]).Status)
    assoc.release()
    assert status_trunc == 0xC000
    assert status_garbage in (0xC000, 0xA900)
    assert status_empty == 0xA900  # no Study/Series/SOP Instance UID at all
    assert status_ok == 0
    ev = sink.wait_for(1)[0]
    assert ev["data"]["instance_count"] == 1
    assert wait_counter(adapter, "refused_instances", 3) == 3


def _send_raw(assoc, part10: bytes, path: Path) -> int:
    """C-STORE the data set of ``part10`` as given (pynetdicom's chunked send, no encoding)."""
    from pynetdicom import _config

    path.write_bytes(part10)
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        rsp = assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old
    return int(rsp.Status) if rsp else -1


def test_garbage_bytes_and_malformed_pdus_do_not_hurt_the_port(adapter_factory, sink, tmp_path):
    adapter = adapter_factory()
    payloads = [
        os.urandom(2000),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x01\x00\x00\x00\xff\xff\xff\xff" + os.urandom(64),  # A-ASSOCIATE-RQ claiming 4 GiB
        b"\x04\x00\x00\x00\x00\x10" + os.urandom(16),  # P-DATA before any association
        b"\x01",
    ]
    for p in payloads:
        with socket.create_connection(("127.0.0.1", adapter.dicom_port), timeout=5) as s:
            s.sendall(p)
            s.settimeout(1)
            try:
                s.recv(1024)
            except (TimeoutError, ConnectionResetError):
                pass
    study = make_study(tmp_path / "in", series=1, per_series=2)
    assert pynetdicom_send(adapter.dicom_port, study.files) == [0, 0]
    assert len(sink.wait_for(1)) == 1


@pytest.mark.parametrize("overwrite", [False, True])
def test_resent_instance_with_other_bytes_never_replaces_the_stored_copy(
    adapter_factory, sink, store, tmp_path, overwrite
):
    """Same SOP Instance UID, different bytes: the first object stays as the first manifest says;
    the new copy is kept beside it, and only overwrite-same-instance puts it in a revision."""
    import io

    import pydicom
    from pydicom.uid import generate_uid

    from adapter_data import config_yaml, make_instance

    def number(key: str) -> int:  # which copy an object holds (stored bytes carry a new file meta)
        return int(pydicom.dcmread(io.BytesIO(store.get_bytes(key))).InstanceNumber)

    text = config_yaml(104)
    if overwrite:
        text = text.replace(
            "      - ae-title: RADFLOW\n        timeout: 0\n",
            "      - ae-title: RADFLOW\n        timeout: 0\n"
            "        overwrite-same-instance: true\n",
        )
        assert "overwrite-same-instance: true" in text
    adapter = adapter_factory(yaml_text=text)
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    first, second = tmp_path / "v1.dcm", tmp_path / "v2.dcm"
    make_instance(first, study_uid=study, series_uid=series, sop_uid=sop, index=0)
    make_instance(second, study_uid=study, series_uid=series, sop_uid=sop, index=5)
    assert first.read_bytes() != second.read_bytes()
    assert pynetdicom_send(adapter.dicom_port, [first]) == [0]
    m0 = StudyManifest.model_validate_json(
        store.get_bytes(sink.wait_for(1)[0]["data"]["manifest_key"])
    )
    assert pynetdicom_send(adapter.dicom_port, [second]) == [0]
    deadline = time.monotonic() + 10
    while (
        len(list(store.list(m0.instances[0].key.removesuffix(".dcm")))) < 2
        and time.monotonic() < deadline
    ):
        time.sleep(0.1)  # the second copy's upload
    assert number(m0.instances[0].key) == 1  # the first copy was never replaced
    if overwrite:
        m1 = StudyManifest.model_validate_json(
            store.get_bytes(sink.wait_for(2)[1]["data"]["manifest_key"])
        )
        assert [i.sop_instance_uid for i in m1.instances] == [sop]
        assert m1.instances[0].key != m0.instances[0].key
        assert number(m1.instances[0].key) == 6
    else:
        wait_settled(adapter.status)
        assert len(sink.events) == 1  # the first copy stands: no revision
        copies = sorted(number(o.key) for o in store.list(m0.instances[0].key.removesuffix(".dcm")))
        assert copies == [1, 6]  # ... and the second is kept beside it, not lost
    # the same bytes again change nothing and store nothing new
    before = len(list(store.list("studies/")))
    assert pynetdicom_send(adapter.dicom_port, [second]) == [0]
    wait_settled(adapter.status)
    assert adapter.uploader.wait_idle(10)
    assert len(list(store.list("studies/"))) == before
