"""Spool recovery after kill -9: acked-but-unindexed files are re-indexed, temp files dropped."""

from __future__ import annotations

import sqlite3

from pydicom.uid import generate_uid

from adapter_data import make_instance
from radflow.adapter.config import parse_yaml_text
from radflow.adapter.handlers import StoreHandlers
from radflow.adapter.spool import Spool
from radflow.adapter.spool.index import PendingUpload

CFG = parse_yaml_text(
    "dicom:\n  scp:\n    ae-titles:\n      - ae-title: BRAIN\n        timeout: 0\n"
)


def test_recover_reindexes_acked_files_and_drops_partial_receives(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.open_association("assoc1", "BRAIN", "MODALITY")
    study, series = generate_uid(), generate_uid()
    sops = []
    for i in range(3):
        src = spool.files.tmp_dir / f"rx{i}.dcm"
        sops.append(make_instance(src, study_uid=study, series_uid=series, index=i))
        spool.take_file(src, "assoc1")  # durable and acked; the index row never written ("crash")
    (spool.files.tmp_dir / "half-received.dcm").write_bytes(b"\0" * 300)
    spool.close()

    spool = Spool(tmp_path / "spool")
    handlers = StoreHandlers(spool, lambda: CFG, on_stored=lambda _p: None, on_closed=lambda: None)
    stats = spool.recover(handlers.describe)
    assert stats["reindexed"] == 3 and stats["interrupted_associations"] == 1
    assert list(spool.files.tmp_dir.iterdir()) == []
    pending = spool.index.pending_uploads()
    assert len(pending) == 3 and all(isinstance(p, PendingUpload) for p in pending)
    (row,) = spool.groups.rows()
    assert row.ready_instances == 3 and row.open_instances == 0 and row.called_ae == "BRAIN"
    # a second recovery changes nothing (idempotent)
    assert spool.recover(handlers.describe)["reindexed"] == 0
    spool.close()


def test_unreadable_spool_file_is_quarantined_not_lost(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.open_association("assoc2", "BRAIN", "MODALITY")
    src = spool.files.tmp_dir / "x.dcm"
    src.write_bytes(b"not dicom" * 10)
    name = spool.take_file(src, "assoc2")
    spool.close()
    spool = Spool(tmp_path / "spool")
    handlers = StoreHandlers(spool, lambda: CFG, on_stored=lambda _p: None, on_closed=lambda: None)
    assert spool.recover(handlers.describe)["reindexed"] == 0
    assert (spool.root / "quarantine" / name).exists()
    spool.close()


# The index as the single-module spool (before the split) created it; never edit: existing
# spools on adapters' volumes look like this and must keep opening.
SCHEMA_V0 = """
CREATE TABLE IF NOT EXISTS associations (
    id TEXT PRIMARY KEY, called_ae TEXT NOT NULL, calling_ae TEXT NOT NULL,
    state TEXT NOT NULL, opened REAL NOT NULL, closed REAL
);
CREATE TABLE IF NOT EXISTS instances (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    assoc_id TEXT NOT NULL, group_id TEXT NOT NULL, called_ae TEXT NOT NULL,
    study_uid TEXT NOT NULL, series_uid TEXT NOT NULL, sop_uid TEXT NOT NULL,
    sop_class TEXT NOT NULL, ts_uid TEXT NOT NULL, spool_name TEXT NOT NULL, key TEXT NOT NULL,
    size INTEGER, sha256 TEXT, uploaded INTEGER NOT NULL DEFAULT 0,
    discarded INTEGER NOT NULL DEFAULT 0, received REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_group ON instances(group_id);
CREATE INDEX IF NOT EXISTS instances_assoc ON instances(assoc_id);
CREATE UNIQUE INDEX IF NOT EXISTS instances_spool ON instances(spool_name);
CREATE TABLE IF NOT EXISTS groups (
    id TEXT PRIMARY KEY, called_ae TEXT NOT NULL, study_uid TEXT NOT NULL,
    calling_ae TEXT NOT NULL DEFAULT '', next_revision INTEGER NOT NULL DEFAULT 0,
    last_activity REAL NOT NULL, last_manifest TEXT
);
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY, event BLOB NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL, created REAL NOT NULL, sent REAL, last_error TEXT
);
CREATE TABLE IF NOT EXISTS drop_seen (key TEXT PRIMARY KEY, etag TEXT NOT NULL, outcome TEXT NOT NULL);
"""  # noqa: E501  (kept byte for byte)


def test_a_spool_written_before_the_split_opens_with_its_state(tmp_path):
    root = tmp_path / "spool"
    (root / "data").mkdir(parents=True)
    with sqlite3.connect(root / "index.sqlite3") as conn:
        conn.executescript(SCHEMA_V0)
        conn.execute(
            "INSERT INTO associations VALUES ('a1', 'BRAIN', 'MODALITY', 'released', 1.0, 2.0)"
        )
        conn.execute(
            "INSERT INTO instances(assoc_id, group_id, called_ae, study_uid, series_uid, sop_uid,"
            " sop_class, ts_uid, spool_name, key, received)"
            " VALUES ('a1', 'g1', 'BRAIN', '1.2', '1.2.3', '1.2.3.4', '1.2.840.10008.5.1.4.1.1.4',"
            " '1.2.840.10008.1.2.1', 'a1-x.dcm', 'studies/s/series/1.2.3/1.2.3.4.dcm', 1.5)"
        )
        conn.execute(
            "INSERT INTO groups(id, called_ae, study_uid, calling_ae, last_activity)"
            " VALUES ('g1', 'BRAIN', '1.2', 'MODALITY', 1.5)"
        )
        conn.execute(
            "INSERT INTO outbox(id, event, state, next_at, created)"
            " VALUES ('e1', x'7b7d', 'pending', 0, 0)"
        )
        conn.execute("INSERT INTO drop_seen VALUES ('inbox/BRAIN/x.dcm', 'etag1', 'indexed')")
    (root / "data" / "a1-x.dcm").write_bytes(b"acknowledged")

    spool = Spool(root)
    try:
        handlers = StoreHandlers(
            spool, lambda: CFG, on_stored=lambda _p: None, on_closed=lambda: None
        )
        stats = spool.recover(handlers.describe)
        assert stats == {
            "interrupted_associations": 0,
            "pending_uploads": 1,
            "pending_events": 1,
            "reindexed": 0,
        }
        assert spool.index.pending_uploads() == [
            PendingUpload("a1-x.dcm", "studies/s/series/1.2.3/1.2.3.4.dcm")
        ]
        (row,) = spool.groups.rows()
        assert (row.group_id, row.ready_instances, row.unuploaded) == ("g1", 1, 1)
        assert spool.outbox.due(now=1.0) == [("e1", b"{}", 0)]
        assert spool.drops.etag("inbox/BRAIN/x.dcm") == "etag1"
        assert spool.stats() == {
            "indexed": 1,
            "spooled": 1,
            "discarded": 0,
            "open_associations": 0,
        }
    finally:
        spool.close()


def test_an_emission_commits_events_rows_and_revision_together(tmp_path):
    spool = Spool(tmp_path / "spool")
    try:
        spool.open_association("a1", "BRAIN", "MODALITY")
        src = spool.files.tmp_dir / "rx.dcm"
        make_instance(src, study_uid=generate_uid(), series_uid=generate_uid(), index=0)
        handlers = StoreHandlers(
            spool, lambda: CFG, on_stored=lambda _p: None, on_closed=lambda: None
        )
        name = spool.take_file(src, "a1")
        row = spool.associations.rows()["a1"]
        rec = handlers.describe(spool.files.path(name), row)
        assert rec is not None
        spool.index.add(rec, wait=True)
        spool.close_association("a1", released=True)
        assert spool.index.mark_uploaded(name, 10, "0" * 64)
        (group,) = spool.groups.rows()
        (ready,) = spool.groups.ready_instances(group.group_id)
        events = [("job-1", b'{"id": "job-1"}')]
        assert spool.groups.commit_emission(group.group_id, 0, "manifest-key", [ready.id], events)
        # the same revision again (a second emitter, a repeat after a crash) changes nothing
        assert not spool.groups.commit_emission(group.group_id, 0, "other", [ready.id], events)
        assert spool.outbox.counts() == {"pending": 1}
        assert spool.groups.rows() == []
        assert spool.stats()["indexed"] == 0
        assert spool.associations.rows() == {}  # released and emptied: gone
    finally:
        spool.close()
