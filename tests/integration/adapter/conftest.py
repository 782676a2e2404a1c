"""Fixtures of the adapter's integration tests: an event sink on loopback and a running adapter."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from adapter_data import config_yaml
from radflow.adapter.app import Adapter
from radflow.adapter.config import parse_yaml_text
from radflow.adapter.settings import AdapterSettings
from radflow.engine.ports import free_port
from radflow.sdk.settings import StoreSettings
from radflow.sdk.storage import ObjectStore


class EventSink:
    """A tiny real HTTP receiver that records binary-mode CloudEvents (headers + JSON body)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.fail_next = 0  # answer 503 to this many requests first
        self.cond = threading.Condition()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with sink.cond:
                    if sink.fail_next > 0:
                        sink.fail_next -= 1
                        status = 503
                    else:
                        status = 202
                        headers = {k.lower(): v for k, v in self.headers.items()}
                        sink.events.append(
                            {"headers": headers, "data": json.loads(body), "at": time.time()}
                        )
                        sink.cond.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/default/radflow"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, n: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.events) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            return list(self.events)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


AdapterFactory = Callable[..., Adapter]


@pytest.fixture
def sink() -> Iterator[EventSink]:
    s = EventSink()
    yield s
    s.close()


@pytest.fixture
def adapter_factory(
    tmp_path: Path, store_settings: StoreSettings, sink: EventSink
) -> Iterator[AdapterFactory]:
    started: list[Adapter] = []

    def make(
        *,
        timeout: float = 0,
        reject_unknown: bool = False,
        spool: Path | None = None,
        extra_ae: str = "",
        yaml_text: str | None = None,
        **overrides: Any,
    ) -> Adapter:
        settings = AdapterSettings(
            spool_dir=spool or tmp_path / "spool",
            host="127.0.0.1",
            dicom_port=free_port(),
            rest_port=free_port(),
            sink=sink.url,
            drop_poll_seconds=overrides.pop("drop_poll_seconds", 0),
            drop_settle_seconds=overrides.pop("drop_settle_seconds", 0),
            receivers=overrides.pop("receivers", 2),
            **overrides,
        )
        cfg = parse_yaml_text(
            yaml_text
            or config_yaml(104, timeout=timeout, reject_unknown=reject_unknown, extra_ae=extra_ae)
        )
        adapter = Adapter(settings, cfg, ObjectStore(store_settings)).start()
        started.append(adapter)
        return adapter

    yield make
    for a in started:
        a.stop()
