"""Wires the adapter together: spool, uploader, emitter, outbox, SCP, REST API, drop trigger.

``Adapter(settings, config, store).start()`` is what ``python -m radflow.adapter`` runs and what
integration tests start in-process; ``stop()`` shuts everything down in reverse order. Start-up
first recovers the spool (a previous process may have been killed) so uploads and events
resume before new associations are accepted.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from radflow.adapter import metrics
from radflow.adapter.api import RestApi
from radflow.adapter.config import AdapterConfig
from radflow.adapter.config_watch import ConfigFileWatcher
from radflow.adapter.configstore import ConfigStore
from radflow.adapter.drop import DropWatcher
from radflow.adapter.emitter import Emitter
from radflow.adapter.handlers import StoreHandlers
from radflow.adapter.outbox import Outbox
from radflow.adapter.port_guard import PortLimits
from radflow.adapter.receiver_pool import ReceiverPool
from radflow.adapter.scp import DicomServer, configure_pynetdicom, restore_pynetdicom, tls_context
from radflow.adapter.settings import AdapterSettings
from radflow.adapter.spool import Spool
from radflow.adapter.uploader import Uploader
from radflow.sdk.errors import StoreRefused, Unavailable
from radflow.sdk.metrics import exposition
from radflow.sdk.storage import ObjectStore

log = logging.getLogger(__name__)


class Adapter:
    def __init__(
        self,
        settings: AdapterSettings,
        config: AdapterConfig,
        store: ObjectStore,
        config_path: Path | None = None,
    ) -> None:
        """``config`` is the configuration file's content (read from ``config_path``, which is
        then watched for edits: :mod:`radflow.adapter.config_watch`)."""
        self.settings = settings
        self.store = store
        self.configs = ConfigStore(config, store)
        self.config_watch = (
            ConfigFileWatcher(config_path, self.configs, settings.config_poll_seconds)
            if config_path is not None
            else None
        )
        self.spool = Spool(settings.spool_dir)
        self.emitter = Emitter(
            self.spool.groups,
            store,
            self.configs.current,
            on_queued=self._events_queued,
            tick=settings.tick_seconds,
        )
        self.uploader = Uploader(
            self.spool, store, workers=settings.upload_workers, on_uploaded=self.emitter.wake
        )
        self.outbox = Outbox(
            self.spool.outbox, lambda: self.settings.sink, max_backoff=settings.outbox_max_backoff
        )
        self.handlers = StoreHandlers(
            self.spool,
            self.configs.current,
            on_stored=self.uploader.enqueue,
            on_closed=self.emitter.wake,
        )
        self.scp: DicomServer | None = None
        self.receivers: ReceiverPool | None = None
        self.api = RestApi(
            self.configs,
            ready=self.ready,
            status=self.status,
            known_pipelines=settings.known_pipelines,
            metrics=lambda: exposition(self.metrics),
        )
        self.drop = DropWatcher(
            self, settings.drop_prefix, settings.drop_poll_seconds, settings.drop_settle_seconds
        )
        self.metrics = metrics.registry(self)
        self.dicom_port: int | None = None
        self.rest_port: int | None = None
        self.started_at = time.time()
        self._listening = threading.Event()

    def _events_queued(self) -> None:
        self.outbox.wake()

    def start(self) -> Adapter:
        self.store.ensure_bucket()
        cfg = self.configs.load()
        stats = self.spool.recover(self.handlers.describe)
        if any(stats.values()):
            log.info("spool recovered after restart", extra=stats)
        self.uploader.start()
        self.emitter.start()
        self.outbox.start()
        try:
            self.rest_port = self.api.start(self.settings.host, self.settings.rest_port)
        except OSError as exc:
            # e.g. Clara's 5000 taken on a developer machine: keep ingesting, say where the API is
            self.rest_port = self.api.start(self.settings.host, 0)
            log.warning(
                "REST port %d unavailable (%s); REST API on port %d instead",
                self.settings.rest_port,
                exc.strerror,
                self.rest_port,
            )
        port = self.settings.dicom_port if self.settings.dicom_port is not None else cfg.port
        ssl_ctx = None
        if cfg.tls is not None:
            ssl_ctx, allowed = tls_context(
                cfg.tls
            )  # also validates the files before receivers start
            self.handlers.cert_allowed = allowed
        limits = PortLimits(
            connect_timeout=self.settings.connect_timeout,
            pdu_timeout=self.settings.pdu_timeout,
            max_pdu=self.settings.max_pdu,
        )
        if self.settings.receivers > 0:
            self.receivers = ReceiverPool(
                self.spool,
                self.handlers,
                self.configs.current,
                processes=self.settings.receivers,
                limits=limits,
                max_per_host=self.settings.max_connections_per_host,
            )
            self.configs.subscribe(self.receivers.config_changed)
            self.dicom_port = self.receivers.start(self.settings.host, port)
        else:
            configure_pynetdicom(self.spool.files)
            self.scp = DicomServer(
                self.handlers,
                max_pdu=self.settings.max_pdu,
                max_associations=cfg.max_associations,
                limits=limits,
                max_per_host=self.settings.max_connections_per_host,
            )
            self.configs.subscribe(
                lambda c: self.scp.set_max_associations(c.max_associations) if self.scp else None
            )
            self.dicom_port = self.scp.start(self.settings.host, port, ssl_ctx)
        self.drop.start()
        if self.config_watch is not None:
            self.config_watch.start()
        self._listening.set()
        log.info(
            "dicom adapter listening",
            extra={"dicom_port": self.dicom_port, "rest_port": self.rest_port},
        )
        return self

    def stop(self) -> None:
        self._listening.clear()
        if self.config_watch is not None:
            self.config_watch.stop()
        self.drop.stop()
        if self.receivers is not None:
            self.receivers.stop()
        if self.scp is not None:
            self.scp.stop()
            restore_pynetdicom()
        self.api.stop()
        self.uploader.stop()
        self.emitter.stop()
        self.outbox.stop()
        self.spool.close()

    def ready(self) -> bool:
        if not self._listening.is_set():
            return False
        if self.receivers is not None and not self.receivers.ready():
            return False
        try:
            self.store.ensure_bucket()
        except (Unavailable, StoreRefused):
            return False
        return True

    def scp_counters(self) -> dict[str, int]:
        """stored / rejected_associations / refused_instances / ignored, over all receivers."""
        own = self.handlers.snapshot()
        if self.receivers is None:
            return own
        pooled = self.receivers.counters()
        return {k: own.get(k, 0) + pooled.get(k, 0) for k in own.keys() | pooled.keys()}

    def status(self) -> dict[str, Any]:
        return {
            "uptime_s": round(time.time() - self.started_at, 1),
            "spool": self.spool.stats(),
            "upload_backlog": self.uploader.backlog(),
            "uploaded": self.uploader.uploaded,
            "upload_parked": sum(self.uploader.parked().values()),
            "upload_parked_reasons": self.uploader.parked(),
            "groups_emitted": self.emitter.emitted,
            "outbox": self.spool.outbox.counts(),
            "events_sent": self.outbox.sent,
            "scp": self.scp_counters(),
            "receivers": self.receivers.describe()
            if self.receivers is not None
            else {"processes": 0, "ready": 0},
            "sink_configured": bool(self.settings.sink),
            "config": {
                "rest_changes": self.configs.rest_changes(),
                "notes": self.configs.notes,
                "file_problem": self.config_watch.problem if self.config_watch else None,
            },
        }
