"""Every DICOM association radflow opens or accepts has Nagle's algorithm off (imaging/dimse.py)."""

from __future__ import annotations

import socket
from pathlib import Path

from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from radflow.demo.pacs import LocalPacs
from radflow.imaging.dimse import NODELAY_HANDLERS


def _nodelay(assoc) -> int:
    return int(assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


def test_requestor_and_acceptor_sockets_have_tcp_nodelay(tmp_path: Path) -> None:
    seen: list[int] = []
    pacs = LocalPacs(tmp_path / "pacs")
    pacs.start()
    # record the acceptor side's option as the SCP sees it, after our handler ran
    pacs._server.bind(evt.EVT_C_ECHO, lambda event: seen.append(_nodelay(event.assoc)) or 0x0000)
    try:
        ae = AE(ae_title="PROBE")
        ae.add_requested_context(Verification)
        plain = ae.associate("127.0.0.1", pacs.port, ae_title=pacs.ae_title)
        assert plain.is_established and _nodelay(plain) == 0  # pynetdicom's own default: Nagle on
        plain.release()
        assoc = ae.associate(
            "127.0.0.1", pacs.port, ae_title=pacs.ae_title, evt_handlers=NODELAY_HANDLERS
        )
        assert assoc.is_established and _nodelay(assoc) == 1
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
    finally:
        pacs.stop()
    assert seen and all(v == 1 for v in seen)
