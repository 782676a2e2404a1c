"""Defences of the DICOM port against peers that connect and then stall or lie.

pynetdicom reads a PDU as "6 header bytes, then as many bytes as the header declares" on a
blocking socket, and its ARTIM timer is only checked between PDUs. So a peer that sends a header
claiming 4 GB and then nothing held a receiver thread (and an association slot) for ever, and a
peer that streamed the claimed bytes made the receiver buffer them all. This module owns what
stops that, on every accepted connection, before pynetdicom sees the bytes:

* a connection must deliver its complete A-ASSOCIATE-RQ within ``connect_timeout`` seconds of
  being accepted (the ARTIM rule of PS3.8 9.1.5, also for a peer that trickles bytes);
* a PDU, once its header arrived, must arrive completely within ``pdu_timeout`` seconds, which
  is also the send timeout (a peer that stops reading cannot hold a thread either);
* a PDU whose declared length exceeds what we accept (P-DATA-TF: the maximum PDU we advertise;
  any other PDU: :data:`CONTROL_PDU_LIMIT`) is answered with A-ABORT at its header, never read.

The adapter process adds the per-host connection limit (adapter/receiver_pool.py); together
they bound the memory an association can cost to about one PDU.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

from pynetdicom.transport import AssociationSocket, RequestHandler

log = logging.getLogger("radflow.adapter.port")

#: A-ASSOCIATE-RQ/AC/RJ, A-RELEASE and A-ABORT: an association request with hundreds of
#: presentation contexts and a 64 KiB user identity stays well below this
CONTROL_PDU_LIMIT = 256 * 1024
#: the P-DATA-TF limit when the SCP advertises no maximum PDU (``max_pdu`` 0)
PDATA_CEILING = 16 * 1024 * 1024
P_DATA_TF = 0x04
A_ASSOCIATE_RQ = 0x01
#: A-ABORT, source 2 (service provider), reason 6 (invalid PDU parameter value)
ABORT_INVALID_PARAMETER = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 2, 6])


@dataclass(frozen=True)
class PortLimits:
    connect_timeout: float = 10.0
    pdu_timeout: float = 30.0
    max_pdu: int = 131072

    def limit_for(self, pdu_type: int) -> int:
        if pdu_type == P_DATA_TF:
            return self.max_pdu or PDATA_CEILING
        return CONTROL_PDU_LIMIT


class PortRefused(OSError):
    """The connection broke a limit of the port; pynetdicom treats it as a closed transport."""


class GuardedAssociationSocket(AssociationSocket):
    """pynetdicom's socket with deadlines and PDU limits on what the peer sends.

    pynetdicom's DUL calls ``recv(6)`` for a header and ``recv(length)`` for the body; this
    class follows that rhythm to check the header before the body is read.
    """

    limits: PortLimits
    _connect_deadline: float
    _pdu_deadline: float
    _pdu_type: int | None
    _associated: bool
    _peer: str

    def guard(self, limits: PortLimits, peer: str) -> None:
        self.limits = limits
        self._connect_deadline = time.monotonic() + limits.connect_timeout
        self._pdu_deadline = self._connect_deadline
        self._pdu_type = None  # None: the next recv is a header
        self._associated = False
        self._peer = peer
        if self.socket is not None:
            self.socket.settimeout(limits.pdu_timeout)  # also bounds sends

    def recv(self, nr_bytes: int) -> bytearray:
        if self._pdu_type is None:
            now = time.monotonic()
            self._pdu_deadline = (
                self._connect_deadline if not self._associated else now + self.limits.pdu_timeout
            )
            data = self._read(nr_bytes)
            if len(data) == 6:
                pdu_type, _, length = struct.unpack(">BBL", data)
                if 0x01 <= pdu_type <= 0x07:
                    if length > self.limits.limit_for(pdu_type):
                        self._refuse(pdu_type, length)
                    self._pdu_type = pdu_type
            return data
        data = self._read(nr_bytes)
        if self._pdu_type == A_ASSOCIATE_RQ and len(data) == nr_bytes:
            self._associated = True
        self._pdu_type = None
        return data

    def _read(self, nr_bytes: int) -> bytearray:
        sock: Any = self.socket
        out = bytearray()
        try:
            while len(out) < nr_bytes:
                left = self._pdu_deadline - time.monotonic()
                if left <= 0:
                    what = "a PDU" if self._associated else "the A-ASSOCIATE-RQ"
                    limit = (
                        self.limits.pdu_timeout if self._associated else self.limits.connect_timeout
                    )
                    log.warning(
                        "connection closed: %s did not arrive within %.0f s",
                        what,
                        limit,
                        extra={"peer": self._peer},
                    )
                    raise PortRefused(f"{what} did not arrive within {limit:.0f} s")
                sock.settimeout(left)
                chunk = sock.recv(min(nr_bytes - len(out), 65536))
                if not chunk:
                    break
                out.extend(chunk)
        finally:
            if self.socket is not None:
                self.socket.settimeout(self.limits.pdu_timeout)
        return out

    def _refuse(self, pdu_type: int, length: int) -> None:
        limit = self.limits.limit_for(pdu_type)
        log.warning(
            "connection aborted: PDU type 0x%02X declares %d bytes, over the limit of %d",
            pdu_type,
            length,
            limit,
            extra={"peer": self._peer},
        )
        try:
            if self.socket is not None:
                self.socket.settimeout(1.0)
                self.socket.sendall(ABORT_INVALID_PARAMETER)
                self.socket.shutdown(socket.SHUT_RDWR)  # nothing more is read from it
        except OSError:
            pass
        raise PortRefused(f"PDU of {length} bytes over the limit of {limit}")


class GuardedRequestHandler(RequestHandler):
    """pynetdicom's request handler whose association reads through the guarded socket.

    The server it runs for carries the limits as ``port_limits``. pynetdicom creates the socket
    inside ``_create_association`` (queuing its "connection open" event), so the socket is
    turned into the guarded class in place rather than created a second time.
    """

    def _create_association(self) -> Any:
        assoc = super()._create_association()
        sock: Any = assoc.dul.socket
        sock.__class__ = GuardedAssociationSocket
        sock.guard(getattr(self.server, "port_limits", PortLimits()), str(self.client_address[0]))
        return assoc
