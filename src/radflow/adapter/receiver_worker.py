"""A receiver process: runs the DICOM associations the adapter process hands over to it.

``python -m radflow.adapter.receiver_worker --channel-fd N --spool DIR`` is started by
:class:`~radflow.adapter.receiver_pool.ReceiverPool`, never by hand. Why processes: pynetdicom
runs two polling threads per association, so associations in one interpreter contend for the
GIL (4 parallel associations cost twice the CPU per instance of one); dcmtk's ``storescp
--fork`` runs one process per association for the same reason.

What it does here, and what it asks the adapter process for:

* admission, C-ECHO and C-STORE exactly as in-process (:class:`StoreHandlers`), with the
  configuration the adapter process writes to ``<spool>/receiver-config.json`` and re-reads
  when told;
* a received instance is made durable *here* (rename into ``data/`` + fsync), then its index
  row is sent to the adapter process and the C-STORE is answered: the fsync'd file is the
  durable record, as in-process, so the row may arrive after the ack;
* opening and closing an association are round trips: the association row is committed
  before its first instance is acknowledged, and its release or abort is ordered after the
  rows of its instances (one ordered channel);
* if the adapter process goes away, this process exits at once (its channel reaches EOF), so no
  instance is acknowledged that nobody indexes.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import os
import socket
import ssl
import sys
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from radflow.adapter.config import AdapterConfig
from radflow.adapter.handlers import StoreHandlers
from radflow.adapter.ipc import Channel, ChannelClosed
from radflow.adapter.port_guard import PortLimits
from radflow.adapter.scp import DicomServer, configure_pynetdicom, tls_context
from radflow.adapter.settings import AdapterSettings
from radflow.adapter.spool.files import SpoolFiles
from radflow.adapter.spool.index import InstanceRecord
from radflow.sdk.logging import configure_logging

log = logging.getLogger("radflow.adapter.receiver")

CONFIG_FILE = "receiver-config.json"
#: how long a round trip to the adapter process may take before the C-STORE is refused
CALL_TIMEOUT = 30.0


def write_config(spool_root: Path, config: AdapterConfig) -> None:
    """Atomically publish the configuration the receiver processes serve."""
    tmp = spool_root / f".{CONFIG_FILE}.tmp"
    tmp.write_text(config.model_dump_json())
    os.replace(tmp, spool_root / CONFIG_FILE)


def read_config(spool_root: Path) -> AdapterConfig:
    return AdapterConfig.model_validate_json((spool_root / CONFIG_FILE).read_text())


class RemoteSpool:
    """The spool as a receiver process sees it: files local, index in the adapter process."""

    def __init__(self, files: SpoolFiles, channel: Channel) -> None:
        self.files = files
        self.channel = channel
        self._ids = itertools.count(1)
        self._pending: dict[int, Future[Any]] = {}
        self._lock = threading.Lock()

    def call(self, message: dict[str, Any]) -> Any:
        call_id = next(self._ids)
        future: Future[Any] = Future()
        with self._lock:
            self._pending[call_id] = future
        try:
            self.channel.send({**message, "id": call_id})
            return future.result(timeout=CALL_TIMEOUT)
        except TimeoutError:
            raise ChannelClosed(
                f"the adapter process did not answer {message['op']!r} in {CALL_TIMEOUT:.0f} s"
            ) from None
        finally:
            with self._lock:
                self._pending.pop(call_id, None)

    def resolve(self, call_id: int, value: Any) -> None:
        with self._lock:
            future = self._pending.get(call_id)
        if future is not None:
            future.set_result(value)

    # -- SpoolPort -------------------------------------------------------------------------------

    def take_file(self, src: Path, assoc_id: str) -> str:
        return self.files.take_file(src, assoc_id)

    def open_association(self, assoc_id: str, called_ae: str, calling_ae: str) -> None:
        self.call({"op": "open", "assoc": assoc_id, "called": called_ae, "calling": calling_ae})

    def add_instance(self, rec: InstanceRecord) -> None:
        self.channel.send({"op": "stored", "rec": dataclasses.asdict(rec)})

    def close_association(self, assoc_id: str, *, released: bool) -> int:
        return int(self.call({"op": "close", "assoc": assoc_id, "released": released}))


class Receiver:
    def __init__(self, channel: Channel, spool_root: Path, limits: PortLimits) -> None:
        self.channel = channel
        self.spool_root = spool_root
        self.limits = limits
        self.files = SpoolFiles(spool_root)
        self.remote = RemoteSpool(self.files, channel)
        self._config = read_config(spool_root)
        self._admitted: set[int] = set()  # id() of the sockets holding an association slot
        configure_pynetdicom(self.files)
        self.handlers = StoreHandlers(
            self.remote,
            lambda: self._config,
            on_stored=lambda _p: None,  # the adapter process queues the upload when the row arrives
            on_closed=lambda: None,  # ... and wakes its emitter when the close arrives
            over_limit=self._over_limit,
        )
        self.ssl_context: ssl.SSLContext | None = None
        if self._config.tls is not None:
            self.ssl_context, self.handlers.cert_allowed = tls_context(self._config.tls)
        self.server = DicomServer(
            self.handlers, max_pdu=limits.max_pdu, max_associations=1 << 20, limits=limits
        )
        self.server.detach()

    def _over_limit(self, assoc: Any) -> bool:
        """Ask the adapter process for one of the ``max-associations`` slots (counted across
        receivers). Only an A-ASSOCIATE-RQ takes a slot: a connection that never sends one
        holds none, and is closed by the port's deadline (adapter/port_guard.py)."""
        try:
            admitted = bool(self.remote.call({"op": "admit"}))
        except ChannelClosed:
            return True
        if admitted:
            self._admitted.add(id(getattr(assoc.dul.socket, "socket", None)))
        return not admitted

    def run(self) -> None:
        try:
            self.channel.send({"op": "ready", "pid": os.getpid()})
        except ChannelClosed:
            return  # the adapter stopped while we started
        while True:
            try:
                message, fds = self.channel.recv()
            except ChannelClosed:
                return  # the adapter process is gone: stop acknowledging anything
            op = message.get("op")
            if op == "conn" and fds:
                sock = socket.socket(fileno=fds[0])
                address = (str(message["addr"][0]), int(message["addr"][1]))
                threading.Thread(
                    target=self._serve,
                    args=(sock, address),
                    name="receiver-conn",
                    daemon=True,
                ).start()
            elif op == "reply":
                self.remote.resolve(int(message["id"]), message.get("value"))
            elif op == "config":
                self._config = read_config(self.spool_root)
            else:
                for fd in fds:
                    os.close(fd)

    def _serve(self, sock: socket.socket, address: tuple[str, int]) -> None:
        conn: Any = sock
        try:
            if self.ssl_context is not None:
                # the TLS handshake counts against the connect deadline too
                sock.settimeout(self.limits.connect_timeout)
                conn = self.ssl_context.wrap_socket(sock, server_side=True)
            self.server.serve_connection(conn, address)
        except (OSError, ssl.SSLError) as exc:
            log.warning("connection failed before the association started: %s", type(exc).__name__)
        finally:
            admitted = id(conn) in self._admitted
            self._admitted.discard(id(conn))
            try:
                conn.close()
            except OSError:
                pass
            try:
                self.channel.send(
                    {
                        "op": "done",
                        "host": address[0],
                        "admitted": admitted,
                        "counters": self.handlers.snapshot(),
                    }
                )
            except ChannelClosed:
                pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m radflow.adapter.receiver_worker", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--channel-fd", type=int, required=True)
    parser.add_argument("--spool", type=Path, required=True)
    parser.add_argument("--max-pdu", type=int, default=131072)
    parser.add_argument("--connect-timeout", type=float, default=PortLimits.connect_timeout)
    parser.add_argument("--pdu-timeout", type=float, default=PortLimits.pdu_timeout)
    args = parser.parse_args(argv)
    settings = AdapterSettings()
    configure_logging("dicom-receiver", settings.log_level, settings.log_format)
    channel = Channel(socket.socket(fileno=args.channel_fd))
    limits = PortLimits(
        connect_timeout=args.connect_timeout, pdu_timeout=args.pdu_timeout, max_pdu=args.max_pdu
    )
    Receiver(channel, args.spool, limits).run()
    # threads serving associations die with the process: their peers see the connection drop
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
