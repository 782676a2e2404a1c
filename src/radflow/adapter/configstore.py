"""The live configuration: one immutable AdapterConfig, swapped atomically, persisted in S3.

Rule (documented in docs/adapter.md): at start-up, if ``config/dicom-adapter.json`` exists in
the bucket, its ``ae-titles``, ``sources``, ``destinations`` and ``pipeline-mappings`` win over
the YAML's (they hold the REST changes); the YAML still decides the port, TLS,
``reject-unknown-sources`` and ``max-associations``. If the key does not exist it is seeded
from the YAML. Every REST change is written back (compare-and-swap on the ETag, so two
replicas cannot silently overwrite each other) before it takes effect; readers call
:meth:`ConfigStore.current` per association, so changes apply without a restart.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

from radflow.adapter.config import CONFIG_KEY, AdapterConfig
from radflow.sdk.errors import ConfigError, Unavailable
from radflow.sdk.retry import retrying
from radflow.sdk.storage import AlreadyExists, NotFound, ObjectStore

log = logging.getLogger(__name__)


class ConfigStore:
    def __init__(self, base: AdapterConfig, store: ObjectStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._etag: str | None = None
        self._config = base
        self._listeners: list[Callable[[AdapterConfig], None]] = []

    def load(self, attempts: int = 8) -> AdapterConfig:
        """Apply the persisted document (or seed it from the YAML); retries a flaky store.

        ``attempts`` in all, 0.1 s apart at first, doubling up to 2 s; then the last
        :class:`Unavailable` is raised.
        """
        policy = retrying(attempts=attempts, on=Unavailable, first_delay=0.1, max_delay=2.0)
        return policy(self._load)

    def _load(self) -> AdapterConfig:
        try:
            blob, etag = self.store.get_with_etag(CONFIG_KEY)
        except NotFound:
            body = json.dumps(self._config.effective_document(), indent=1).encode()
            try:
                self._etag = self.store.put_if_absent(CONFIG_KEY, body)
                log.info("effective configuration seeded from the YAML", extra={"key": CONFIG_KEY})
                return self._config
            except AlreadyExists:
                blob, etag = self.store.get_with_etag(CONFIG_KEY)
        try:
            doc = json.loads(blob)
        except ValueError:
            raise ConfigError(
                f"{CONFIG_KEY}: not valid JSON; fix or delete it to re-seed from the YAML"
            ) from None
        self._config = self._config.with_document(doc)
        self._etag = etag
        log.info("effective configuration loaded from the object store", extra={"key": CONFIG_KEY})
        return self._config

    def current(self) -> AdapterConfig:
        return self._config

    def subscribe(self, fn: Callable[[AdapterConfig], None]) -> None:
        self._listeners.append(fn)

    def update(self, change: Callable[[AdapterConfig], AdapterConfig]) -> AdapterConfig:
        """Apply ``change`` (which validates and may raise InvalidInput), persist, then publish."""
        with self._lock:
            new = change(self._config)
            body = json.dumps(new.effective_document(), indent=1).encode()
            try:
                if self._etag:
                    self._etag = self.store.put_if_match(CONFIG_KEY, body, self._etag)
                else:
                    self._etag = self.store.put_bytes(CONFIG_KEY, body)
            except AlreadyExists:
                # someone else changed it: reload and re-apply on top of theirs
                blob, etag = self.store.get_with_etag(CONFIG_KEY)
                self._config = self._config.with_document(json.loads(blob))
                new = change(self._config)
                body = json.dumps(new.effective_document(), indent=1).encode()
                self._etag = self.store.put_if_match(CONFIG_KEY, body, etag)
            self._config = new
        for fn in self._listeners:
            fn(new)
        return new
