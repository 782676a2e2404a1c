"""Live reload of the configuration file: an edit takes effect without a restart, or says why not.

Every ``interval`` seconds the file's size and modification time are checked; when they
change, the file is parsed again. A valid file becomes the new base of the live configuration
(:meth:`ConfigStore.rebase`: REST changes stay on top, docs/adapter.md "Precedence"); AE titles,
sources, destinations, pipeline mappings, ``reject-unknown-sources``, ``max-associations`` and
``verification`` apply to the next association. The port and TLS settings need a restart: the
reload says so in one warning. An invalid file is not applied: one error line names the file,
the key and the rule, and the running configuration stays until the file is fixed.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from radflow.adapter.config import AdapterConfig, load_yaml
from radflow.adapter.configstore import ConfigStore
from radflow.sdk.errors import ConfigError, RadflowError

log = logging.getLogger(__name__)

#: settings a running adapter cannot change (its listening socket is bound)
RESTART_ONLY = ("port", "tls")


class ConfigFileWatcher:
    def __init__(self, path: Path, configs: ConfigStore, interval: float) -> None:
        self.path = path
        self.configs = configs
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="config-watch", daemon=True)
        self._seen = self._signature()
        self.problem: str | None = None  # the file's current error, if it has one
        self.reloads = 0

    def _signature(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def start(self) -> None:
        if self.interval > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except RadflowError as exc:  # the store failed while persisting: next poll again
                log.warning("configuration reload not finished: %s", exc)
                self._seen = None

    def check(self) -> bool:
        """Reload the file if it changed since the last check; True when a new base applies."""
        signature = self._signature()
        if signature == self._seen:
            return False
        self._seen = signature
        try:
            new = load_yaml(self.path)
        except ConfigError as exc:
            self.problem = str(exc)
            log.error("configuration file not applied, the running configuration stays: %s", exc)
            return False
        self.problem = None
        old = self.configs.base()
        if new == old:
            return False
        restart = [name for name in RESTART_ONLY if getattr(new, name) != getattr(old, name)]
        if restart:
            log.warning(
                "configuration file: %s changed; takes effect at the next restart",
                ", ".join(_yaml_name(n) for n in restart),
            )
            keep = {name: getattr(old, name) for name in restart}
            new = AdapterConfig.model_validate(
                {**new.model_dump(by_alias=True), **_aliased(keep, old)}
            )
        try:
            self.configs.rebase(new)
        except ConfigError as exc:  # the file and the REST changes contradict each other
            self.problem = str(exc)
            log.error("configuration file not applied, the running configuration stays: %s", exc)
            return False
        self.reloads += 1
        return True


def _yaml_name(field: str) -> str:
    return {"port": "dicom.scp.port", "tls": "dicom.scp.tls"}.get(field, field)


def _aliased(values: dict[str, object], model: AdapterConfig) -> dict[str, object]:
    dumped = model.model_dump(by_alias=True)
    fields = AdapterConfig.model_fields
    return {(fields[k].alias or k): dumped[fields[k].alias or k] for k in values}
