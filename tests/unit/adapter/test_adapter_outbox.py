"""The outbox's POST to K_SINK against a real loopback broker stand-in: the reasons it records.

The reason is what the spool keeps as ``last_error`` and what the retry log line says; it must
stay short, free of identifiers, and the same as before the client moved to radflow.sdk.http.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import cast

import pytest
from aiohttp import web

from radflow.adapter.outbox import Outbox
from radflow.adapter.spool.outbox_store import OutboxStore
from radflow.sdk import events
from radflow.sdk.httpserver import ThreadedServer


@pytest.fixture(scope="module")
def broker() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """An ingress answering the status named in its path; it records what it was sent."""
    seen: list[dict[str, str]] = []

    async def ingress(request: web.Request) -> web.Response:
        seen.append({"id": request.headers["ce-id"], "body": (await request.read()).decode()})
        return web.Response(status=int(request.match_info["status"]))

    def make() -> web.Application:
        app = web.Application()
        app.router.add_post("/{status}/default/radflow", ingress)
        return app

    server = ThreadedServer(make, name="test-broker")
    port = server.start("127.0.0.1", 0)
    yield f"http://127.0.0.1:{port}", seen
    server.stop()


def _stored() -> bytes:
    event = events.make_event("radflow.test.v1", "/radflow/test", {"n": 1}, id="evt-1")
    return events.to_json(event)


def _outbox() -> Outbox:
    # _post touches neither the spool nor the sink: those are flush_once's
    return Outbox(cast(OutboxStore, None), lambda: None, timeout=2.0)


def test_a_2xx_is_delivered_in_binary_mode(broker: tuple[str, list[dict[str, str]]]) -> None:
    base, seen = broker
    assert _outbox()._post(f"{base}/202/default/radflow", _stored()) is None
    assert seen[-1] == {"id": "evt-1", "body": '{"n": 1}'}


@pytest.mark.parametrize("status", [400, 404, 500, 503])
def test_any_other_answer_is_http_and_its_code(
    broker: tuple[str, list[dict[str, str]]], status: int
) -> None:
    base, _ = broker
    assert _outbox()._post(f"{base}/{status}/default/radflow", _stored()) == f"HTTP {status}"


def test_no_answer_is_the_socket_error_name() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reason = _outbox()._post(f"http://127.0.0.1:{port}/default/radflow", _stored())
    assert reason == "ConnectionRefusedError"
