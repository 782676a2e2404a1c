"""The Triton client waits for a server that is still coming back from zero, within its budget."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from radflow.imaging.inference import TritonInferenceClient
from radflow.sdk.errors import Unavailable


class _Warming(BaseHTTPRequestHandler):
    """Answers readiness 503 (what the activator or a loading Triton says) until ``ready_at``."""

    ready_at = 0.0
    probes = 0

    def do_GET(self) -> None:
        type(self).probes += 1
        ready = time.monotonic() >= self.ready_at
        self.send_response(200 if ready else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def warming() -> Iterator[tuple[str, type[_Warming]]]:
    handler = type("Handler", (_Warming,), {"ready_at": time.monotonic() + 1.5, "probes": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def test_readiness_is_retried_with_backoff_until_the_server_is_ready(
    warming: tuple[str, type[_Warming]],
) -> None:
    url, handler = warming
    client = TritonInferenceClient(url, cold_start_timeout=30)
    try:
        client._ready("brain_tumor_seg")  # returns once the server says ready
    finally:
        client.close()
    assert time.monotonic() >= handler.ready_at
    # backoff 0.5, 1, 2 s: a handful of probes, not a busy loop
    assert 2 <= handler.probes <= 6


def test_without_a_cold_start_budget_a_warming_server_is_unavailable_at_once(
    warming: tuple[str, type[_Warming]],
) -> None:
    url, handler = warming
    client = TritonInferenceClient(url, cold_start_timeout=0)
    try:
        with pytest.raises(Unavailable, match="not ready; retry later"):
            client._ready("brain_tumor_seg")
    finally:
        client.close()
    assert handler.probes == 1
