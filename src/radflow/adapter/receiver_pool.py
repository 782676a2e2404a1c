"""The DICOM listener as a pool of receiver processes (``RADFLOW_ADAPTER_RECEIVERS``, default 2).

The adapter process owns the listening socket and the spool index; it accepts each TCP
connection and hands it (the descriptor itself, over a Unix socketpair) to the receiver process
serving the fewest associations, which runs the whole association with pynetdicom
(adapter/receiver_worker.py). This is dcmtk ``storescp --fork``'s model with processes started
once instead of per association: associations no longer share one interpreter's GIL, which is
what limited ingest with parallel associations (docs/adapter.md#figures).

Semantics kept from the in-process listener (``RADFLOW_ADAPTER_RECEIVERS=0``):

* ``max-associations`` counts associations across all receivers; one over the limit is
  rejected by its receiver with A-ASSOCIATE-RJ transient / local-limit-exceeded. A slot is
  taken when the A-ASSOCIATE-RQ arrives (a round trip, ``admit``), not at accept, so
  connections that never associate hold none (the port's deadlines close them,
  adapter/port_guard.py);
* one peer address holds at most ``max_per_host`` connections (associated or not); more are
  closed at accept, before a receiver spends a thread on them;
* a receiver answers C-STORE success only once the file is fsync'd; its index row, the
  association's opening (committed before the first ack) and its release/abort reach the
  index through this process, in order;
* a receiver that dies cuts its associations as a crash of the adapter would: their acknowledged
  instances are indexed and kept (the associations count as released), never discarded, and a
  new receiver takes its place;
* receivers exit when this process goes away (their channel closes), so no instance is ever
  acknowledged that nobody indexes; they run in their own session, so signals to the adapter's
  process group (Ctrl-C, an engine stopping the workload) reach this process only.

Knative mapping: all of this lives in the adapter's pod (Deployment ``dicom-adapter``); the
receivers are processes of the same container, sized by ``RADFLOW_ADAPTER_RECEIVERS`` against
its CPU request (knative/adapter.yaml).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from radflow.adapter.config import AdapterConfig
from radflow.adapter.handlers import StoreHandlers
from radflow.adapter.ipc import Channel, ChannelClosed
from radflow.adapter.port_guard import PortLimits
from radflow.adapter.receiver_worker import write_config
from radflow.adapter.spool import Spool
from radflow.adapter.spool.index import InstanceRecord, PendingUpload
from radflow.sdk.errors import Unavailable

log = logging.getLogger(__name__)

#: how long an accepted connection may wait for a receiver process to be ready
READY_TIMEOUT = 30.0
#: the longest wait before restarting a receiver that keeps dying during start-up
RESTART_MAX_DELAY = 30.0


@dataclass(eq=False)
class _Receiver:
    slot: int
    proc: subprocess.Popen[bytes]
    channel: Channel
    ready: threading.Event = field(default_factory=threading.Event)
    active: int = 0  # connections handed to it and not yet done
    admitted: int = 0  # of which hold a max-associations slot
    open_assocs: set[str] = field(default_factory=set)
    counters: dict[str, int] = field(default_factory=dict)
    reader: threading.Thread | None = None
    hosts: dict[str, int] = field(default_factory=dict)  # its open connections by peer address


class ReceiverPool:
    def __init__(
        self,
        spool: Spool,
        handlers: StoreHandlers,
        config: Callable[[], AdapterConfig],
        *,
        processes: int,
        limits: PortLimits,
        max_per_host: int = 16,
    ) -> None:
        self.spool = spool
        self.handlers = handlers  # the index side: describe() for recovery, on_stored/on_closed
        self.config = config
        self.processes = processes
        self.limits = limits
        self.max_per_host = max_per_host
        self._per_host: dict[str, int] = {}  # open connections by peer address
        self._receivers: list[_Receiver | None] = [None] * processes
        self._quick_exits = [0] * processes  # consecutive exits before becoming ready, per slot
        self._lock = threading.Condition()
        self._retired: dict[str, int] = {}  # counters of receivers that exited
        self._stored = 0
        self._listener: socket.socket | None = None
        self._stopping = False
        self._accept_thread: threading.Thread | None = None

    # -- life cycle ------------------------------------------------------------------------------

    def start(self, host: str, port: int) -> int:
        write_config(self.spool.root, self.config())
        listener = socket.create_server((host, port), backlog=128, reuse_port=False)
        self._listener = listener
        for slot in range(self.processes):
            self._spawn(slot)
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="dicom-accept", daemon=True
        )
        self._accept_thread.start()
        # connections wait in the backlog meanwhile; returning once every receiver is up keeps
        # readiness honest (a receiver takes about half a second to import pynetdicom)
        deadline = time.monotonic() + READY_TIMEOUT
        with self._lock:
            while not all(r is not None and r.ready.is_set() for r in self._receivers):
                if time.monotonic() > deadline:
                    break
                self._lock.wait(0.2)
            none_ready = not any(r is not None and r.ready.is_set() for r in self._receivers)
        if none_ready:
            self.stop()  # no half-started listener or receivers left behind
            raise Unavailable(f"no receiver process became ready within {READY_TIMEOUT:.0f} s")
        return int(listener.getsockname()[1])

    def config_changed(self, config: AdapterConfig) -> None:
        write_config(self.spool.root, config)
        for r in self._alive():
            try:
                r.channel.send({"op": "config"})
            except ChannelClosed:
                pass

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)
        receivers = self._alive()
        for r in receivers:
            r.channel.close()  # EOF: the receiver exits, dropping whatever it still serves
        for r in receivers:
            try:
                r.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                r.proc.kill()
                r.proc.wait(timeout=5)
            if r.reader is not None:
                r.reader.join(timeout=5)

    def counters(self) -> dict[str, int]:
        """SCP counters summed over live and exited receivers (``stored`` counted here)."""
        total: dict[str, int] = dict(self._retired)
        for r in self._alive():
            for k, v in r.counters.items():
                total[k] = total.get(k, 0) + v
        total["stored"] = self._stored
        return total

    def describe(self) -> dict[str, int]:
        """For /health/status: configured, running and ready receivers, connections and
        associations being served."""
        alive = self._alive()
        with self._lock:
            active = sum(r.active for r in alive)
            admitted = sum(r.admitted for r in alive)
        return {
            "processes": self.processes,
            "running": len(alive),
            "ready": sum(r.ready.is_set() for r in alive),
            "connections": active,
            "associations": admitted,
        }

    def ready(self) -> bool:
        return any(r.ready.is_set() for r in self._alive())

    def pids(self) -> list[int]:
        return [r.proc.pid for r in self._alive()]

    def _alive(self) -> list[_Receiver]:
        with self._lock:
            return [r for r in self._receivers if r is not None]

    # -- receivers -------------------------------------------------------------------------------

    def _spawn(self, slot: int) -> None:
        channel, theirs = Channel.pair()
        cmd = [
            sys.executable,
            "-m",
            "radflow.adapter.receiver_worker",
            "--channel-fd",
            str(theirs.fileno()),
            "--spool",
            str(self.spool.root),
            "--max-pdu",
            str(self.limits.max_pdu),
            "--connect-timeout",
            str(self.limits.connect_timeout),
            "--pdu-timeout",
            str(self.limits.pdu_timeout),
        ]
        # own session: a SIGTERM/SIGINT to the adapter's process group (Ctrl-C, an engine stopping
        # the workload) must not cut associations before this process has stopped accepting and
        # can account for them; receivers stop when it closes their channel, or dies
        proc = subprocess.Popen(
            cmd, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, start_new_session=True
        )
        theirs.close()
        receiver = _Receiver(slot, proc, channel)
        with self._lock:
            self._receivers[slot] = receiver
        receiver.reader = threading.Thread(
            target=self._read, args=(receiver,), name=f"receiver-{slot}", daemon=True
        )
        receiver.reader.start()

    def _read(self, r: _Receiver) -> None:
        while True:
            try:
                message, fds = r.channel.recv()
            except (ChannelClosed, ValueError):
                break
            for fd in fds:
                os.close(fd)
            try:
                self._handle(r, message)
            except ChannelClosed:
                break
            except Exception:
                log.exception("receiver message %r failed", message.get("op"))
        self._exited(r)

    def _handle(self, r: _Receiver, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "stored":
            rec = InstanceRecord(**message["rec"])
            self.spool.index.add(rec)
            with self._lock:
                self._stored += 1
            self.handlers.on_stored(PendingUpload(rec.spool_name, rec.key))
        elif op == "open":
            self.spool.associations.open(message["assoc"], message["called"], message["calling"])
            with self._lock:
                r.open_assocs.add(message["assoc"])
            r.channel.send({"op": "reply", "id": message["id"], "value": None})
        elif op == "close":
            count = self.spool.associations.close(
                message["assoc"], released=bool(message["released"])
            )
            with self._lock:
                r.open_assocs.discard(message["assoc"])
            r.channel.send({"op": "reply", "id": message["id"], "value": count})
            self.handlers.on_closed()
        elif op == "admit":
            with self._lock:
                total = sum(x.admitted for x in self._receivers if x is not None)
                admitted = total < self.config().max_associations
                if admitted:
                    r.admitted += 1
            r.channel.send({"op": "reply", "id": message["id"], "value": admitted})
        elif op == "done":
            with self._lock:
                r.active = max(0, r.active - 1)
                if message.get("admitted"):
                    r.admitted = max(0, r.admitted - 1)
                self._host_done(r, str(message.get("host", "")))
                r.counters = {
                    k: int(v) for k, v in message.get("counters", {}).items() if k != "stored"
                }
                self._lock.notify_all()
        elif op == "ready":
            r.ready.set()
            with self._lock:
                self._lock.notify_all()

    def _exited(self, r: _Receiver) -> None:
        code = r.proc.wait()
        with self._lock:
            if self._receivers[r.slot] is r:
                self._receivers[r.slot] = None
            for k, v in r.counters.items():
                self._retired[k] = self._retired.get(k, 0) + v
            cut = set(r.open_assocs)
            for host, n in r.hosts.items():  # its connections died with it
                for _ in range(n):
                    self._host_done(None, host)
            stopping = self._stopping
            self._lock.notify_all()
        if stopping:
            # associations still open are recovered (kept) by the next start, as after a crash
            return
        if cut:
            # cut by us, like a crash: acknowledged instances are kept, never discarded
            reindexed = self.spool.recover_associations(cut, self.handlers.describe)
            log.warning(
                "receiver process exited with %d association(s) open; "
                "their acknowledged instances are kept",
                len(cut),
                extra={"exit_code": code, "reindexed": reindexed},
            )
            self.handlers.on_closed()
        # a receiver that dies before it ever became ready (e.g. an unreadable configuration)
        # is restarted with a growing delay instead of in a tight loop
        self._quick_exits[r.slot] = 0 if r.ready.is_set() else self._quick_exits[r.slot] + 1
        delay = (
            min(RESTART_MAX_DELAY, 0.5 * 2 ** (self._quick_exits[r.slot] - 1))
            if self._quick_exits[r.slot]
            else 0.0
        )
        log.error(
            "receiver process %d exited (code %s); starting a new one in %.1f s",
            r.slot,
            code,
            delay,
        )
        with self._lock:
            self._lock.wait_for(lambda: self._stopping, timeout=delay)
            if self._stopping:
                return
        self._spawn(r.slot)

    # -- dispatch --------------------------------------------------------------------------------

    def _host_done(self, r: _Receiver | None, host: str) -> None:
        """One connection from ``host`` ended (call with the lock held)."""
        if r is not None and r.hosts.get(host, 0) > 0:
            r.hosts[host] -= 1
            if not r.hosts[host]:
                del r.hosts[host]
        left = self._per_host.get(host, 0) - 1
        if left > 0:
            self._per_host[host] = left
        else:
            self._per_host.pop(host, None)

    def _pick(self, host: str) -> _Receiver | None:
        """The ready receiver with the fewest connections (counted against ``host``)."""
        deadline = time.monotonic() + READY_TIMEOUT
        with self._lock:
            while not self._stopping:
                ready = [r for r in self._receivers if r is not None and r.ready.is_set()]
                if ready:
                    chosen = min(ready, key=lambda r: r.active)
                    chosen.active += 1
                    chosen.hosts[host] = chosen.hosts.get(host, 0) + 1
                    self._per_host[host] = self._per_host.get(host, 0) + 1
                    return chosen
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._lock.wait(min(remaining, 0.5))
        return None

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while True:
            try:
                conn, address = self._listener.accept()
            except OSError:
                if self._stopping:
                    return
                time.sleep(0.05)  # e.g. EMFILE: back off rather than spin
                continue
            host = str(address[0])
            try:
                with self._lock:
                    crowded = self._per_host.get(host, 0) >= self.max_per_host
                if crowded:
                    log.warning(
                        "connection closed: the peer holds %d connections already",
                        self.max_per_host,
                        extra={"peer": host},
                    )
                    continue
                receiver = self._pick(host)
                if receiver is None:
                    log.error("no receiver process ready; connection closed (the peer may retry)")
                    continue
                try:
                    receiver.channel.send(
                        {"op": "conn", "addr": [address[0], address[1]]}, [conn.fileno()]
                    )
                except ChannelClosed:
                    with self._lock:
                        receiver.active = max(0, receiver.active - 1)
                        self._host_done(receiver, host)
                    log.error("receiver process %d unreachable; connection closed", receiver.slot)
            finally:
                conn.close()  # the receiver holds its own descriptor of the connection
