"""pynetdicom socket tuning shared by every DICOM peer radflow runs (adapter, export, demo).

pynetdicom leaves Nagle's algorithm on. A C-STORE is written as several small PDU writes, so
without ``TCP_NODELAY`` each instance can wait for the peer's delayed ACK (~40-50 ms on Linux),
the same stall Debian's dcmtk shows unless ``TCP_NODELAY=1`` is set. Bind
:func:`set_tcp_nodelay` to ``evt.EVT_CONN_OPEN`` of every association, as requestor or acceptor.
"""

from __future__ import annotations

import socket
from typing import Any

from pynetdicom import evt
from pynetdicom.events import EventHandlerType


def set_tcp_nodelay(event: Any) -> None:
    """``EVT_CONN_OPEN`` handler: disable Nagle on the association's socket."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # the peer may already have gone; nothing to tune then
            pass


#: ready to pass as (part of) ``evt_handlers`` to ``AE.associate`` / ``AE.start_server``
NODELAY_HANDLERS: list[EventHandlerType] = [(evt.EVT_CONN_OPEN, set_tcp_nodelay)]
