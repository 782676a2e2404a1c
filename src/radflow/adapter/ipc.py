"""Messages between the adapter process and its receiver processes: JSON over a Unix socketpair.

``SOCK_SEQPACKET`` keeps message boundaries and carries file descriptors (``SCM_RIGHTS``), so an
accepted DICOM connection is handed to a receiver as a real socket, with a small JSON header
saying where it came from. Messages stay small (an instance's index row is the largest); bulky
documents such as the configuration travel as files and a message saying "read it again".
"""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

#: larger than any message we send; a truncated message is a bug, reported as such
MAX_MESSAGE = 64 * 1024


class ChannelClosed(ConnectionError):
    """The other end went away (its process exited or was killed)."""


class Channel:
    """One end of the socketpair: thread-safe ``send``; ``recv`` from one reader thread only."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send_lock = threading.Lock()

    @staticmethod
    def pair() -> tuple[Channel, socket.socket]:
        """This end as a Channel, and the other end's socket (inheritable, for the child)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        theirs.set_inheritable(True)
        return Channel(ours), theirs

    def send(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        data = json.dumps(message, separators=(",", ":")).encode()
        if len(data) > MAX_MESSAGE:
            raise ValueError(
                f"IPC message {message.get('op')!r} is {len(data)} bytes (limit {MAX_MESSAGE})"
            )
        try:
            with self._send_lock:
                if fds:
                    socket.send_fds(self.sock, [data], fds)
                else:
                    self.sock.send(data)
        except OSError as exc:
            raise ChannelClosed(str(exc)) from exc

    def recv(self) -> tuple[dict[str, Any], list[int]]:
        try:
            data, fds, flags, _ = socket.recv_fds(self.sock, MAX_MESSAGE, 4)
        except OSError as exc:
            raise ChannelClosed(str(exc)) from exc
        if not data:
            for fd in fds:
                socket.close(fd)
            raise ChannelClosed("peer closed the channel")
        if flags & socket.MSG_TRUNC:
            raise ValueError("IPC message truncated")
        return json.loads(data), list(fds)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
