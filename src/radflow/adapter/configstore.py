"""The live configuration: the file as base, REST changes as an overlay, swapped atomically.

Rule (docs/adapter.md, "Precedence"; :mod:`radflow.adapter.overlay`): **the configuration file
is the base at every start and every reload; REST changes are an overlay of entries by name**,
persisted at ``config/dicom-adapter.rest.json``. Where the file changed an entry after a REST
change to it, the file wins and the log says which REST change was dropped. A file edit takes
effect at the next start or, while the adapter runs, at the next poll of the file
(:class:`radflow.adapter.app.ConfigFileWatcher` calls :meth:`ConfigStore.rebase`).

Every REST change is written to the overlay (compare-and-swap on the ETag, so two replicas
cannot silently overwrite each other) before it takes effect. The effective configuration is
published at ``config/dicom-adapter.json`` (scu-export reads its ``destinations``); readers
call :meth:`ConfigStore.current` per association, so changes apply without a restart.

An effective document written before the overlay existed (no ``rest-overlay`` marker) is
migrated once: its entries that differ from the file become the overlay, so REST changes made
before the upgrade are kept.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from radflow.adapter import overlay
from radflow.adapter.config import CONFIG_KEY, AdapterConfig
from radflow.sdk.errors import ConfigError, Unavailable
from radflow.sdk.retry import retrying
from radflow.sdk.storage import AlreadyExists, NotFound, ObjectStore

log = logging.getLogger(__name__)


class ConfigStore:
    def __init__(self, base: AdapterConfig, store: ObjectStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._base = base
        self._overlay: dict[str, Any] = overlay.empty()
        self._etag: str | None = None
        self._config = base
        self._listeners: list[Callable[[AdapterConfig], None]] = []
        #: what the last start or reload said about REST changes the file overrode
        self.notes: list[str] = []

    def load(self, attempts: int = 8) -> AdapterConfig:
        """Apply the persisted overlay to the file (migrating an older document, or starting
        empty); retries a flaky store.

        ``attempts`` in all, 0.1 s apart at first, doubling up to 2 s; then the last
        :class:`Unavailable` is raised.
        """
        policy = retrying(attempts=attempts, on=Unavailable, first_delay=0.1, max_delay=2.0)
        return policy(self._load)

    def _load(self) -> AdapterConfig:
        with self._lock:
            doc, self._etag = self._read_overlay()
            if doc is None:
                doc = self._migrated()
                try:
                    self._etag = self.store.put_if_absent(OVERLAY_KEY, _dump(doc))
                except AlreadyExists:  # another replica was first
                    doc, self._etag = self._read_overlay()
                    assert doc is not None
            self._set(self._base, doc, "start")
        return self._config

    def _read_overlay(self) -> tuple[dict[str, Any] | None, str | None]:
        try:
            blob, etag = self.store.get_with_etag(OVERLAY_KEY)
        except NotFound:
            return None, None
        try:
            return dict(json.loads(blob)), etag
        except (ValueError, TypeError):
            raise ConfigError(
                f"{OVERLAY_KEY}: not valid JSON; fix it, or delete it to drop the REST changes"
            ) from None

    def _migrated(self) -> dict[str, Any]:
        """The overlay of an effective document written before overlays existed (else empty)."""
        try:
            blob = self.store.get_bytes(CONFIG_KEY)
        except NotFound:
            return overlay.empty()
        try:
            old = json.loads(blob)
        except ValueError:
            raise ConfigError(
                f"{CONFIG_KEY}: not valid JSON; fix or delete it to start from the file"
            ) from None
        if not isinstance(old, dict) or old.get("rest-overlay"):
            return overlay.empty()  # written by this version: the overlay was deleted on purpose
        doc = overlay.overlay_of(self._base, self._base.with_document(old))
        if overlay.changed_names(doc):
            log.warning(
                "configuration: entries of the persisted configuration that differ from the "
                "file are kept as REST changes: %s",
                ", ".join(overlay.changed_names(doc)),
                extra={"key": OVERLAY_KEY},
            )
        return doc

    def _set(self, base: AdapterConfig, doc: dict[str, Any], why: str) -> None:
        """Make ``base`` + ``doc`` current (lock held): persist what changed, say what the file
        overrode."""
        effective, kept, notes = overlay.apply(base, doc)
        for note in notes:
            log.warning("configuration: %s", note)
        if kept != doc:
            self._put_overlay(kept)
        self._base, self._overlay, self._config, self.notes = base, kept, effective, notes
        self._publish_effective()
        changes = overlay.changed_names(kept)
        log.info(
            "configuration %s: the file%s",
            "loaded" if why == "start" else "reloaded",
            f" plus {len(changes)} REST change(s): {', '.join(changes)}" if changes else " alone",
            extra={"key": OVERLAY_KEY},
        )

    def _put_overlay(self, doc: dict[str, Any]) -> None:
        body = _dump(doc)
        if self._etag:
            self._etag = self.store.put_if_match(OVERLAY_KEY, body, self._etag)
        else:
            self._etag = self.store.put_bytes(OVERLAY_KEY, body)

    def _publish_effective(self) -> None:
        doc = {**self._config.effective_document(), "rest-overlay": OVERLAY_KEY}
        self.store.put_bytes(CONFIG_KEY, json.dumps(doc, indent=1).encode())

    def current(self) -> AdapterConfig:
        return self._config

    def base(self) -> AdapterConfig:
        """The configuration file's part (the last one loaded)."""
        return self._base

    def rest_changes(self) -> list[str]:
        """``list/name`` of the entries REST changes now (``/health/status``)."""
        return overlay.changed_names(self._overlay)

    def subscribe(self, fn: Callable[[AdapterConfig], None]) -> None:
        self._listeners.append(fn)

    def rebase(self, base: AdapterConfig) -> AdapterConfig:
        """The configuration file changed: ``base`` + the overlay becomes current."""
        with self._lock:
            try:
                self._set(base, self._overlay, "reload")
            except AlreadyExists:  # another replica changed the overlay meanwhile
                doc, self._etag = self._read_overlay()
                self._set(base, doc or overlay.empty(), "reload")
            new = self._config
        for fn in self._listeners:
            fn(new)
        return new

    def update(self, change: Callable[[AdapterConfig], AdapterConfig]) -> AdapterConfig:
        """Apply ``change`` (which validates and may raise InvalidInput), persist it in the
        overlay, then publish."""
        with self._lock:
            new = change(self._config)
            doc = overlay.overlay_of(self._base, new)
            try:
                self._put_overlay(doc)
            except AlreadyExists:
                # another replica changed it: reload and re-apply on top of theirs
                theirs, self._etag = self._read_overlay()
                self._config, self._overlay, _ = overlay.apply(
                    self._base, theirs or overlay.empty()
                )
                new = change(self._config)
                doc = overlay.overlay_of(self._base, new)
                self._put_overlay(doc)
            self._overlay, self._config = doc, new
            self._publish_effective()
        for fn in self._listeners:
            fn(new)
        return new


OVERLAY_KEY = overlay.OVERLAY_KEY


def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=1, sort_keys=True).encode()
