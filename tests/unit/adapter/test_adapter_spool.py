"""Spool recovery after kill -9: acked-but-unindexed files are re-indexed, temp files dropped."""

from __future__ import annotations

from pydicom.uid import generate_uid

from adapter_data import make_instance
from radflow.adapter.config import parse_yaml_text
from radflow.adapter.handlers import StoreHandlers
from radflow.adapter.spool import PendingUpload, Spool

CFG = parse_yaml_text(
    "dicom:\n  scp:\n    ae-titles:\n      - ae-title: BRAIN\n        timeout: 0\n"
)


def test_recover_reindexes_acked_files_and_drops_partial_receives(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.open_association("assoc1", "BRAIN", "MODALITY")
    study, series = generate_uid(), generate_uid()
    sops = []
    for i in range(3):
        src = spool.tmp_dir / f"rx{i}.dcm"
        sops.append(make_instance(src, study_uid=study, series_uid=series, index=i))
        spool.take_file(src, "assoc1")  # durable and acked; the index row never written ("crash")
    (spool.tmp_dir / "half-received.dcm").write_bytes(b"\0" * 300)
    spool.close()

    spool = Spool(tmp_path / "spool")
    handlers = StoreHandlers(spool, lambda: CFG, on_stored=lambda _p: None, on_closed=lambda: None)
    stats = spool.recover(handlers.describe)
    assert stats["reindexed"] == 3 and stats["interrupted_associations"] == 1
    assert list(spool.tmp_dir.iterdir()) == []
    pending = spool.pending_uploads()
    assert len(pending) == 3 and all(isinstance(p, PendingUpload) for p in pending)
    (row,) = spool.group_rows()
    assert row.ready_instances == 3 and row.open_instances == 0 and row.called_ae == "BRAIN"
    # a second recovery changes nothing (idempotent)
    assert spool.recover(handlers.describe)["reindexed"] == 0
    spool.close()


def test_unreadable_spool_file_is_quarantined_not_lost(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.open_association("assoc2", "BRAIN", "MODALITY")
    src = spool.tmp_dir / "x.dcm"
    src.write_bytes(b"not dicom" * 10)
    name = spool.take_file(src, "assoc2")
    spool.close()
    spool = Spool(tmp_path / "spool")
    handlers = StoreHandlers(spool, lambda: CFG, on_stored=lambda _p: None, on_closed=lambda: None)
    assert spool.recover(handlers.describe)["reindexed"] == 0
    assert (spool.root / "quarantine" / name).exists()
    spool.close()
