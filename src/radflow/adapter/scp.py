"""The DICOM listener: one pynetdicom AE serving every configured Clara AE title on one port.

Fast path (shared/docs/performance-baselines.md): datasets are streamed by pynetdicom into a
temp file in the spool's ``tmp/`` (same filesystem, so accepting it is a rename), never decoded;
the maximum PDU is 128 KiB; identifiers of requests are not logged. Every storage SOP class
(and private/unknown ones) is accepted with whichever transfer syntax the peer proposes first,
since instances are stored byte for byte.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import ssl
import tempfile
import threading
from collections.abc import Callable
from typing import Any

from pynetdicom import AE, _config, dimse_messages
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from radflow.adapter.config import TlsConfig
from radflow.adapter.handlers import StoreHandlers
from radflow.adapter.port_guard import GuardedRequestHandler, PortLimits
from radflow.adapter.spool.files import SpoolFiles
from radflow.sdk.errors import ConfigError

log = logging.getLogger("radflow.adapter.port")

VERIFICATION_SYNTAXES = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"]


_SWITCHES = {
    "STORE_RECV_CHUNKED_DATASET": True,
    "UNRESTRICTED_STORAGE_SERVICE": True,
    "LOG_REQUEST_IDENTIFIERS": False,
    "LOG_RESPONSE_IDENTIFIERS": False,
    "LOG_HANDLER_LEVEL": "none",
}
_saved: dict[str, object] = {}


def _any_uid(value: str) -> tuple[bool, str]:
    return True, ""


def configure_pynetdicom(spool: SpoolFiles) -> None:
    """Process-wide pynetdicom switches for the fast path (set once, by the composition root)."""
    for name, value in _SWITCHES.items():
        _saved.setdefault(name, getattr(_config, name))
        setattr(_config, name, value)
    # the handlers check UIDs themselves (adapter/uids.py) and refuse a bad one with a reason;
    # pynetdicom's own check ran when the C-STORE response echoed the request's Affected SOP
    # Instance UID, so an over-long one left the sender without any answer (and was logged)
    _saved.setdefault("VALIDATORS.UI", _config.VALIDATORS["UI"])
    _config.VALIDATORS["UI"] = _any_uid
    # pynetdicom creates its NamedTemporaryFile in the default temp dir: point pynetdicom's (and
    # only pynetdicom's) at the spool's tmp/ so accepting an instance is a rename, not a copy
    dimse_messages.NamedTemporaryFile = functools.partial(  # type: ignore[assignment]
        tempfile.NamedTemporaryFile, dir=str(spool.tmp_dir)
    )


def restore_pynetdicom() -> None:
    """Undo the switches and the temp-dir redirection (tests start adapters in one process)."""
    dimse_messages.NamedTemporaryFile = tempfile.NamedTemporaryFile
    for name, value in _saved.items():
        if name == "VALIDATORS.UI":
            _config.VALIDATORS["UI"] = value  # type: ignore[assignment]
        else:
            setattr(_config, name, value)
    _saved.clear()


def tls_context(tls: TlsConfig) -> tuple[ssl.SSLContext, Callable[[Any], bool] | None]:
    """Server TLS context and, with an allow-list, the check for the client certificate."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(tls.certificate), str(tls.private_key))
        if tls.ca_certificate:
            ctx.load_verify_locations(str(tls.ca_certificate))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"dicom.scp.tls: cannot load certificate/key: {exc}") from None
    if not tls.allowed_client_certificates:
        ctx.verify_mode = ssl.CERT_OPTIONAL if tls.ca_certificate else ssl.CERT_NONE
        return ctx, None
    if not tls.ca_certificate:
        raise ConfigError(
            "dicom.scp.tls: allowed-client-certificates needs ca-certificate to verify clients"
        )
    ctx.verify_mode = ssl.CERT_REQUIRED
    allowed = {a.replace(":", "").lower() for a in tls.allowed_client_certificates}

    def check(der: Any) -> bool:
        if not der:
            return False
        if hashlib.sha256(der).hexdigest() in allowed:
            return True
        return _common_name(der) in {a.lower() for a in tls.allowed_client_certificates}

    return ctx, check


def _common_name(der: bytes) -> str:
    """Subject CN of a DER certificate (no extra dependency: search the OID 2.5.4.3)."""
    marker = b"\x06\x03\x55\x04\x03"
    idx = der.rfind(marker)  # the subject comes after the issuer
    if idx < 0:
        return ""
    pos = idx + len(marker) + 1  # skip the string type byte
    length = der[pos]
    return der[pos + 1 : pos + 1 + length].decode("utf-8", "replace").lower()


class _PortServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the receiver pool's per-host connection limit, for the
    in-process mode (``RADFLOW_ADAPTER_RECEIVERS=0``)."""

    max_per_host = 16

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._hosts: dict[str, int] = {}
        self._hosts_lock = threading.Lock()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        host = str(client_address[0])
        with self._hosts_lock:
            if self._hosts.get(host, 0) >= self.max_per_host:
                log.warning(
                    "connection closed: the peer holds %d connections already",
                    self.max_per_host,
                    extra={"peer": host},
                )
                return False
            self._hosts[host] = self._hosts.get(host, 0) + 1
        return True

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        host = str(client_address[0])
        try:
            super().process_request_thread(request, client_address)
            # the association runs in its own thread: the connection counts until it ends
            for assoc in self.active_associations:
                if getattr(assoc.dul.socket, "socket", None) is request:
                    assoc.join()
        finally:
            with self._hosts_lock:
                left = self._hosts.get(host, 0) - 1
                if left > 0:
                    self._hosts[host] = left
                else:
                    self._hosts.pop(host, None)


class DicomServer:
    """Owns the pynetdicom AE and its listening socket."""

    def __init__(
        self,
        handlers: StoreHandlers,
        *,
        max_pdu: int,
        max_associations: int,
        limits: PortLimits | None = None,
        max_per_host: int = 16,
    ) -> None:
        self.handlers = handlers
        self.max_per_host = max_per_host
        self.limits = limits or PortLimits(max_pdu=max_pdu)
        self.ae = AE(ae_title="RADFLOW")
        self.ae.maximum_pdu_size = max_pdu
        self.ae.maximum_associations = max_associations
        self.ae.require_called_aet = False  # checked against every Clara AE title in EVT_REQUESTED
        self.ae.add_supported_context(Verification, VERIFICATION_SYNTAXES)
        self.ae.network_timeout = 60
        self.ae.dimse_timeout = 60
        # pynetdicom's ARTIM: an idle connection that never sends its A-ASSOCIATE-RQ is closed
        # (a peer that sends part of one is cut by the guarded socket, adapter/port_guard.py)
        self.ae.acse_timeout = self.limits.connect_timeout
        self._server: Any = None
        self._detached = False

    def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> int:
        # start_server() without its own request handler: every connection reads through the
        # guarded socket (deadlines, PDU limits)
        self._server = self.ae.make_server(
            (host, port),
            evt_handlers=self.handlers.bindings(),
            ssl_context=ssl_context,
            server_class=_PortServer,
            request_handler=GuardedRequestHandler,
        )
        self._server.port_limits = self.limits
        self._server.max_per_host = self.max_per_host
        self.ae._servers.append(self._server)  # as start_server() does: shutdown() removes it
        threading.Thread(
            target=self._server.serve_forever, name="dicom-acceptor", daemon=True
        ).start()
        return int(self._server.server_address[1])

    def set_max_associations(self, value: int) -> None:
        self.ae.maximum_associations = value

    def detach(self) -> None:
        """Serve connections handed over by :meth:`serve_connection` instead of listening.

        A receiver process gets its connections from the adapter process, which owns the
        listening socket; pynetdicom's server object is still what runs each association (its
        event handlers, contexts, timeouts), only its own listening socket is closed unused.
        """
        self._server = self.ae.make_server(
            ("127.0.0.1", 0),
            evt_handlers=self.handlers.bindings(),
            request_handler=GuardedRequestHandler,
        )
        self._server.port_limits = self.limits
        self._server.socket.close()
        self._detached = True

    def serve_connection(self, sock: Any, address: tuple[str, int]) -> None:
        """Run one association on ``sock`` (already TLS-wrapped if needed) until it ends."""
        self._server.finish_request(sock, address)  # starts the association's thread
        for assoc in self._server.active_associations:
            if getattr(assoc.dul.socket, "socket", None) is sock:
                assoc.join()

    def stop(self) -> None:
        if self._server is not None and not self._detached:
            self._server.shutdown()
        self._server = None
