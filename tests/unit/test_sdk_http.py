"""radflow.sdk.http and radflow.sdk.httpserver against a real aiohttp server on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest
from aiohttp import web

from radflow.sdk import http
from radflow.sdk.errors import InvalidInput, Unavailable
from radflow.sdk.httpserver import ThreadedServer


def _app() -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"method": request.method, "path": request.path})

    async def echo(request: web.Request) -> web.Response:
        return web.json_response(
            {"body": await request.json(), "type": request.headers["Content-Type"]}, status=201
        )

    async def missing(_: web.Request) -> web.Response:
        return web.json_response({"error": "'job-1' not found"}, status=404)

    async def busy(_: web.Request) -> web.Response:
        return web.json_response({"error": "store unavailable"}, status=503)

    async def plain(_: web.Request) -> web.Response:
        return web.Response(status=400, text="bad request, said plainly")

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(3)
        return web.json_response({})

    async def hang_up(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.abort()  # closes without an answer
        return web.Response()

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_post("/echo", echo)
    app.router.add_get("/missing", missing)
    app.router.add_get("/busy", busy)
    app.router.add_get("/plain", plain)
    app.router.add_get("/slow", slow)
    app.router.add_get("/hang-up", hang_up)
    return app


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    server = ThreadedServer(_app, name="test-http", shutdown_timeout=0.5)
    port = server.start("127.0.0.1", 0)
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def refused_url() -> str:
    """A loopback port nobody listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_json_get_and_post(base: str) -> None:
    assert http.get_json(base + "/ok?x=1") == {"method": "GET", "path": "/ok"}
    answer = http.post_json(base + "/echo", {"a": [1, 2]})
    assert answer == {"body": {"a": [1, 2]}, "type": "application/json"}
    resp = http.request("POST", base + "/echo", body=b'{"b": 2}', headers={"Content-Type": "x/y"})
    assert resp.status == 201 and resp.json() == {"body": {"b": 2}, "type": "x/y"}


def test_refused_connection_is_unavailable(refused_url: str) -> None:
    with pytest.raises(http.ServiceUnavailable, match=r"GET http://127\.0\.0\.1:\d+/: .*refused"):
        http.get_json(refused_url, timeout=2)
    try:
        http.get_json(refused_url, timeout=2)
    except Unavailable as exc:  # the SDK's error kind, for callers that know no HTTP
        assert isinstance(exc, http.ServiceUnavailable)
        assert exc.status is None and exc.reason == "ConnectionRefusedError"


def test_503_is_unavailable_with_its_answer(base: str) -> None:
    with pytest.raises(http.ServiceUnavailable, match="answered 503: store unavailable") as info:
        http.get_json(base + "/busy")
    assert info.value.status == 503 and info.value.reason == "HTTP 503"
    assert info.value.body == {"error": "store unavailable"}


def test_404_is_rejected_with_its_answer(base: str) -> None:
    with pytest.raises(http.RequestRejected, match="answered 404: 'job-1' not found") as info:
        http.get_json(base + "/missing")
    assert isinstance(info.value, InvalidInput)
    assert info.value.status == 404 and info.value.reason == "HTTP 404"
    assert info.value.body == {"error": "'job-1' not found"}


def test_a_plain_text_error_body_is_kept_as_text(base: str) -> None:
    with pytest.raises(http.RequestRejected, match="answered 400: bad request, said plainly") as e:
        http.get_json(base + "/plain")
    assert e.value.body == "bad request, said plainly"


def test_timeout_is_unavailable(base: str) -> None:
    with pytest.raises(http.ServiceUnavailable, match="timed out") as info:
        http.get_json(base + "/slow", timeout=0.3)
    assert info.value.status is None and info.value.reason == "TimeoutError"


def test_a_connection_closed_without_answer_is_unavailable(base: str) -> None:
    with pytest.raises(http.ServiceUnavailable, match="GET .*/hang-up: ") as info:
        http.get_json(base + "/hang-up", timeout=2)
    assert info.value.status is None and info.value.reason == "RemoteDisconnected"


def test_probe_reports_any_answer_and_none_without_one(base: str, refused_url: str) -> None:
    assert http.probe(base + "/ok") == 200
    assert http.probe(base + "/missing") == 404
    assert http.probe(base + "/busy") == 503
    assert http.probe(refused_url) is None


def test_an_unusable_url_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="not a usable URL"):
        http.get_json("ftp://127.0.0.1/x")


def test_threaded_server_reports_a_taken_port_and_can_try_another(base: str) -> None:
    taken = int(base.rsplit(":", 1)[1])
    server = ThreadedServer(_app, name="test-http-2")
    with pytest.raises(OSError, match="address already in use"):
        server.start("127.0.0.1", taken)
    port = server.start("127.0.0.1", 0)
    try:
        assert http.get_json(f"http://127.0.0.1:{port}/ok")["path"] == "/ok"
    finally:
        server.stop()
    assert http.probe(f"http://127.0.0.1:{port}/ok") is None
