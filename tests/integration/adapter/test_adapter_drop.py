"""Object-store drop trigger: files put under inbox/<AE>/ start jobs like a C-STORE push."""

from __future__ import annotations

from adapter_data import make_study
from radflow.sdk.events import EventType
from radflow.sdk.manifest import StudyManifest


def test_dropped_study_is_grouped_and_starts_one_job(adapter_factory, sink, store, tmp_path):
    adapter = adapter_factory()
    study = make_study(tmp_path / "in", series=2, per_series=2)
    for i, f in enumerate(study.files):
        store.put_bytes(f"inbox/RADFLOW/upload-1/{i}.dcm", f.read_bytes())
    store.put_bytes("inbox/RADFLOW/upload-1/notes.txt", b"not dicom at all" * 20)
    store.put_bytes("inbox/NOSUCHAE/x.dcm", study.files[0].read_bytes())
    assert adapter.drop.poll_once() == 4
    ev = sink.wait_for(1)[0]
    assert ev["headers"]["ce-type"] == EventType.STUDY_RECEIVED
    manifest = StudyManifest.model_validate_json(store.get_bytes(ev["data"]["manifest_key"]))
    assert sorted(i.sop_instance_uid for i in manifest.instances) == sorted(study.sop_uids)
    assert manifest.calling_ae == "S3-DROP"
    left = sorted(o.key for o in store.list("inbox/"))
    assert left == []
    quarantined = sorted(o.key for o in store.list("quarantine/"))
    assert quarantined == [
        "quarantine/inbox/NOSUCHAE/x.dcm",
        "quarantine/inbox/RADFLOW/upload-1/notes.txt",
    ]
    # a second pass finds nothing new and emits nothing
    assert adapter.drop.poll_once() == 0


def test_drop_and_push_of_the_same_study_share_one_group(adapter_factory, sink, store, tmp_path):
    from test_adapter_ingest import pynetdicom_send

    adapter = adapter_factory()
    study = make_study(tmp_path / "in", series=1, per_series=4)
    pynetdicom_send(adapter.dicom_port, study.files[:2])
    first = sink.wait_for(1)[0]
    for i, f in enumerate(study.files[2:]):
        store.put_bytes(f"inbox/RADFLOW/{i}.dcm", f.read_bytes())
    adapter.drop.poll_once()
    second = sink.wait_for(2)[1]
    assert second["headers"]["ce-type"] == EventType.STUDY_REVISED
    assert second["data"]["group_id"] == first["data"]["group_id"]
    assert second["data"]["instance_count"] == 4


def test_a_dropped_instance_with_an_invalid_uid_is_quarantined(
    adapter_factory, sink, store, tmp_path
):
    """The same PS3.5 9.1 rule as C-STORE (adapter/uids.py): the file is moved to quarantine/,
    its valid siblings make the job."""
    import pytest

    from adapter_data import make_instance

    adapter = adapter_factory()
    study = make_study(tmp_path / "in", series=1, per_series=2)
    bad = tmp_path / "bad.dcm"
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):
        make_instance(bad, study_uid=study.study_uid, series_uid="1.2.3/..", sop_uid="1.2.4")
    for i, f in enumerate([*study.files, bad]):
        store.put_bytes(f"inbox/RADFLOW/upload-2/{i}.dcm", f.read_bytes())
    assert adapter.drop.poll_once() == 2
    ev = sink.wait_for(1)[0]
    assert ev["data"]["instance_count"] == 2
    assert [o.key for o in store.list("quarantine/")] == ["quarantine/inbox/RADFLOW/upload-2/2.dcm"]


def test_a_study_copied_in_slowly_makes_one_job_with_every_instance(
    adapter_factory, sink, store, tmp_path
):
    """Files appear one by one over several seconds while the trigger polls every 0.2 s; an
    uploader's temporary file sits beside them meanwhile. The folder is taken once it is quiet:
    one job, all instances, the temporary file never taken."""
    import time

    from adapter_data import wait_settled

    adapter = adapter_factory(drop_poll_seconds=0.2, drop_settle_seconds=2.5)
    study = make_study(tmp_path / "in", series=2, per_series=4)
    for i, f in enumerate(study.files):
        store.put_bytes(f"inbox/RADFLOW/slow/{i}.dcm.part", f.read_bytes()[:100])
        time.sleep(0.5)  # the copy is slow: passes of the trigger run in between
        store.put_bytes(f"inbox/RADFLOW/slow/{i}.dcm", f.read_bytes())
        store.delete(f"inbox/RADFLOW/slow/{i}.dcm.part")
    store.put_bytes("inbox/RADFLOW/slow/.DS_Store", b"finder")
    ev = sink.wait_for(1, timeout=60)[0]
    wait_settled(adapter.status)
    assert len(sink.events) == 1
    assert ev["data"]["instance_count"] == len(study.files)
    manifest = StudyManifest.model_validate_json(store.get_bytes(ev["data"]["manifest_key"]))
    assert sorted(i.sop_instance_uid for i in manifest.instances) == sorted(study.sop_uids)
    assert [o.key for o in store.list("inbox/")] == ["inbox/RADFLOW/slow/.DS_Store"]
    assert list(store.list("quarantine/")) == []
