"""The DICOM port under hostile peers: connections that stall, lie about PDU sizes or trickle
bytes are closed by the adapter, and a real study is stored meanwhile (adapter/port_guard.py,
the per-host limit in adapter/receiver_pool.py)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]

from adapter_data import make_study, wait_settled
from radflow.sdk.manifest import StudyManifest

CONNECT_TIMEOUT = 8.0
#: PDU type 0x01 (A-ASSOCIATE-RQ) declaring 4 GB, then 30 bytes of it: 36 bytes in all
FOUR_GB_RQ = struct.pack(">BBL", 0x01, 0, 0xFFFFFFF0) + b"\x00\x01" + b"\x00" * 28
#: P-DATA-TF before any association, declaring 4 GB
FOUR_GB_PDATA = struct.pack(">BBL", 0x04, 0, 0xFFFFFFF0) + b"\x00" * 30
#: an A-ASSOCIATE-RQ header of a plausible size whose body then arrives a byte at a time
LORIS_HEADER = struct.pack(">BBL", 0x01, 0, 200)


def _connect(port: int, source: str) -> socket.socket:
    s = socket.socket()
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def _closed_by_peer(s: socket.socket, wait: float) -> bool:
    """True once the adapter closed (or reset) the connection within ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        s.settimeout(left)
        try:
            if not s.recv(4096):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False


def _still_open(s: socket.socket) -> bool:
    return not _closed_by_peer(s, 0.05)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def test_fifty_hostile_connections_do_not_block_a_real_study(
    adapter_factory, sink, store, tmp_path
):
    adapter = adapter_factory(connect_timeout=CONNECT_TIMEOUT)  # max-associations: 8
    assert adapter.receivers is not None
    pids = adapter.receivers.pids()
    rss_before = {pid: _rss_kib(pid) for pid in pids}
    port = adapter.dicom_port
    # 10 source addresses, 5 connections each: under the per-host limit, so every one of them
    # reaches a receiver and has to be closed by the deadlines, not at accept
    sources = [f"127.0.0.{2 + i % 10}" for i in range(50)]
    headers = [_connect(port, src) for src in sources[:17]]
    for i, s in enumerate(headers):
        s.sendall(FOUR_GB_RQ if i % 2 else FOUR_GB_PDATA)
    idle = [_connect(port, src) for src in sources[17:34]]
    loris = [_connect(port, src) for src in sources[34:]]
    for s in loris:
        s.sendall(LORIS_HEADER)
    stop = threading.Event()

    def trickle() -> None:
        while not stop.is_set():
            for s in loris:
                try:
                    s.send(b"\x00")
                except OSError:
                    pass
            stop.wait(0.5)

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        # a real sender, while all 50 are open (the 4 GB headers are refused at once)
        study = make_study(tmp_path / "in", series=2, per_series=5, size=64)
        started = time.monotonic()
        res = subprocess.run(
            [
                "/usr/bin/storescu",
                "-v",
                "-aet",
                "STORESCU",
                "-aec",
                "RADFLOW",
                "--max-pdu",
                "131072",
                "127.0.0.1",
                str(port),
                *map(str, study.files),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "TCP_NODELAY": "1"},
            timeout=60,
        )
        took = time.monotonic() - started
        assert res.returncode == 0, res.stderr
        log = res.stdout + res.stderr
        assert log.count("Received Store Response (Success)") == 10, log[-2000:]
        assert took < CONNECT_TIMEOUT - 2, f"storescu took {took:.1f} s"
        # the stalling connections were still open while the study went in
        assert all(_still_open(s) for s in idle + loris)
        events = sink.wait_for(1)
        manifest = StudyManifest.model_validate_json(
            store.get_bytes(events[0]["data"]["manifest_key"])
        )
        assert sorted(i.sop_instance_uid for i in manifest.instances) == sorted(study.sop_uids)
        for inst in manifest.instances:
            assert store.head(inst.key).size == inst.size
        # every hostile connection is closed by the adapter: the 4 GB headers at once (an
        # A-ABORT, nothing read), idle and trickling ones at the connect deadline
        assert all(_closed_by_peer(s, 2.0) for s in headers)
        assert all(_closed_by_peer(s, CONNECT_TIMEOUT + 3) for s in idle + loris)
    finally:
        stop.set()
        trickler.join(timeout=5)
        for s in headers + idle + loris:
            s.close()
    wait_settled(adapter.status)
    # every connection handed to a receiver has ended there (no thread left holding one)
    deadline = time.monotonic() + 10
    while adapter.status()["receivers"]["connections"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert adapter.status()["receivers"]["connections"] == 0
    assert adapter.status()["receivers"]["associations"] == 0
    for pid in pids:
        grown = _rss_kib(pid) - rss_before[pid]
        assert grown < 48 * 1024, f"receiver {pid} grew by {grown} KiB"


def test_a_pdu_over_the_limit_is_aborted_at_its_header(adapter_factory, tmp_path):
    """After a real association: a P-DATA-TF declaring 256 MB is answered with A-ABORT before
    its body is read; the receiver's memory does not grow by what the peer streams."""
    adapter = adapter_factory()
    assert adapter.receivers is not None
    pids = adapter.receivers.pids()
    rss_before = {pid: _rss_kib(pid) for pid in pids}
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", adapter.dicom_port, ae_title="RADFLOW")
    assert assoc.is_established
    raw = assoc.dul.socket.socket
    assoc.dul._kill_thread = True  # from here on this test speaks on the socket itself
    time.sleep(0.2)
    raw.settimeout(10)
    raw.sendall(struct.pack(">BBL", 0x04, 0, 256 * 1024 * 1024))
    sent = 0
    try:
        chunk = b"\x00" * (1 << 20)
        while sent < 64 * (1 << 20):
            raw.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass
    reply = b""
    try:
        while True:
            data = raw.recv(4096)
            if not data:
                break
            reply += data
    except OSError:
        pass
    assert sent < 64 * (1 << 20), "the adapter kept reading a PDU over its limit"
    assert reply.startswith(b"\x07"), f"no A-ABORT: {reply[:16]!r}"
    for pid in pids:
        grown = _rss_kib(pid) - rss_before[pid]
        assert grown < 16 * 1024, f"receiver {pid} grew by {grown} KiB"


@pytest.mark.parametrize("receivers", [2, 0], ids=["receiver-processes", "in-process"])
def test_one_host_cannot_take_more_than_its_connections(adapter_factory, tmp_path, receivers):
    adapter = adapter_factory(
        max_connections_per_host=4, connect_timeout=CONNECT_TIMEOUT, receivers=receivers
    )
    held = [_connect(adapter.dicom_port, "127.0.0.20") for _ in range(4)]
    time.sleep(0.5)  # accepted and handed over, in order
    extra = [_connect(adapter.dicom_port, "127.0.0.20") for _ in range(2)]
    assert all(_closed_by_peer(s, 2.0) for s in extra)
    assert all(_still_open(s) for s in held)
    # another host is served meanwhile
    study = make_study(tmp_path / "in", series=1, per_series=2)
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", adapter.dicom_port, ae_title="RADFLOW")
    assert assoc.is_established
    assert [int(assoc.send_c_store(f).Status) for f in study.files] == [0, 0]
    assoc.release()
    for s in held + extra:
        s.close()


def test_a_pdu_trickled_after_association_is_cut_at_the_pdu_deadline(adapter_factory):
    """Past the A-ASSOCIATE-RQ, a PDU must still arrive whole within PDU_TIMEOUT, however
    steadily its bytes trickle in."""
    adapter = adapter_factory(pdu_timeout=2.0)
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", adapter.dicom_port, ae_title="RADFLOW")
    assert assoc.is_established
    raw = assoc.dul.socket.socket
    assoc.dul._kill_thread = True  # from here on this test speaks on the socket itself
    time.sleep(0.2)
    raw.sendall(struct.pack(">BBL", 0x04, 0, 100))
    started = time.monotonic()
    closed_after = None
    raw.settimeout(0.3)
    for _ in range(40):  # a byte every 0.3 s: 12 s if nobody stops it
        try:
            raw.send(b"\x00")
            if raw.recv(4096) == b"":
                closed_after = time.monotonic() - started
                break
        except TimeoutError:
            continue
        except OSError:
            closed_after = time.monotonic() - started
            break
    assert closed_after is not None, "the trickled PDU was never cut"
    assert 1.5 < closed_after < 5, f"cut after {closed_after:.1f} s"
