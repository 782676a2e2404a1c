"""The object store against a real SeaweedFS."""

import hashlib
import http.client
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from radflow.engine.ports import free_port
from radflow.sdk import storage
from radflow.sdk.errors import StoreRefused, Unavailable
from radflow.sdk.settings import StoreSettings
from radflow.sdk.storage import AlreadyExists, Keys, NotFound, ObjectStore


def count_requests(store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The HTTP requests ``store`` sends from now on (method and status), still really sent."""
    pool = store._http._pool
    sent: list[str] = []
    real = pool.request

    def request(method, url, **kwargs):
        try:
            resp = real(method, url, **kwargs)
        except Exception as exc:
            sent.append(f"{method} {type(exc).__name__}")
            raise
        sent.append(f"{method} {resp.status}")
        return resp

    monkeypatch.setattr(pool, "request", request)
    return sent


def test_put_get_list_delete(store: ObjectStore) -> None:
    store.put_bytes("a/1", b"one")
    store.put_bytes("a/2", b"two")
    assert store.get_bytes("a/1") == b"one"
    assert [o.key for o in store.list("a/")] == ["a/1", "a/2"]
    store.delete("a/1")
    with pytest.raises(NotFound):
        store.get_bytes("a/1")


def test_put_if_absent_claims_once(store: ObjectStore) -> None:
    store.put_if_absent("claim", b"first")
    with pytest.raises(AlreadyExists):
        store.put_if_absent("claim", b"second")
    assert store.get_bytes("claim") == b"first"


def test_put_if_match_detects_a_concurrent_change(store: ObjectStore) -> None:
    etag = store.put_bytes("k", b"v1")
    store.put_bytes("k", b"v2")
    with pytest.raises(AlreadyExists):
        store.put_if_match("k", b"v3", etag)


def test_put_file_checksum_is_verified_by_the_store(
    store: ObjectStore, tmp_path, monkeypatch
) -> None:
    """A body that keeps failing its checksum is sent again (it may have changed in transit),
    then refused for good."""
    f = tmp_path / "instance.dcm"
    f.write_bytes(b"DICM" * 1000)
    store.put_file("in/good.dcm", f, sha256=hashlib.sha256(f.read_bytes()).hexdigest())
    assert store.get_bytes("in/good.dcm") == f.read_bytes()
    sent = count_requests(store, monkeypatch)
    with pytest.raises(StoreRefused, match="does not match its checksum .* in 3 attempts"):
        store.put_file("in/bad.dcm", f, sha256=hashlib.sha256(b"something else").hexdigest())
    assert sent == ["PUT 400"] * 3
    assert not store.exists("in/bad.dcm")


def test_a_refused_request_fails_at_once_and_names_no_key(store: ObjectStore, monkeypatch) -> None:
    key = "k/" + "1.2.840" * 200  # longer than S3's 1024 bytes: the store refuses it
    sent = count_requests(store, monkeypatch)
    with pytest.raises(StoreRefused, match=r"^object store put_object refused: HTTP 400 \w+$"):
        store.put_bytes(key, b"x")
    assert sent == ["PUT 400"]  # not retried
    with pytest.raises(StoreRefused, match="get_object refused: HTTP 404 NoSuchBucket"):
        ObjectStore(store.settings.model_copy(update={"bucket": "nobucket"})).get_bytes("k")


def test_an_unreachable_store_is_retried_then_unavailable(monkeypatch) -> None:
    down = ObjectStore(StoreSettings(endpoint_url=f"http://127.0.0.1:{free_port()}", bucket="b"))
    sent = count_requests(down, monkeypatch)
    with pytest.raises(Unavailable, match="object store get_object failed: NewConnectionError"):
        down.get_bytes("k")
    assert sent == ["GET NewConnectionError"] * 3


def test_listing_pages_and_keeps_keys_exactly(store: ObjectStore, monkeypatch) -> None:
    monkeypatch.setattr(storage, "_LIST_PAGE", 2)
    keys = [f"p/{i}" for i in range(5)] + ["p/a b+c%d&e"]
    for key in keys:
        store.put_bytes(key, key.encode())
    store.put_bytes("q/other", b"")
    listed = list(store.list("p/"))
    assert [o.key for o in listed] == sorted(keys)
    assert [o.size for o in listed] == [len(k) for k in sorted(keys)]
    assert all(o.etag.strip('"') == hashlib.md5(o.key.encode()).hexdigest() for o in listed)
    assert store.get_bytes("p/a b+c%d&e") == b"p/a b+c%d&e"


@pytest.mark.parametrize("streamed", [False, True])
def test_put_file_if_absent_never_replaces(
    store: ObjectStore, tmp_path, monkeypatch, streamed
) -> None:
    from radflow.sdk import storage

    if streamed:  # the path large files take (read from disk while sending)
        monkeypatch.setattr(storage, "_PUT_IN_ONE_PIECE", 10)
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_bytes(b"first" * 3000)
    second.write_bytes(b"second" * 3000)
    etag = store.put_file("k/x.dcm", first, content_type="application/dicom", if_absent=True)
    assert etag.strip('"') == hashlib.md5(first.read_bytes()).hexdigest()
    with pytest.raises(AlreadyExists):
        store.put_file("k/x.dcm", second, if_absent=True)
    assert store.get_bytes("k/x.dcm") == first.read_bytes()
    store.put_file("k/x.dcm", second)  # unconditional: replaces
    assert store.get_bytes("k/x.dcm") == second.read_bytes()


@pytest.fixture
def forward_proxy() -> Iterator[tuple[str, list[str]]]:
    """A real HTTP forward proxy on loopback: relays each request, records method and status."""
    seen: list[str] = []

    class Relay(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            return

        def relay(self) -> None:
            target = urlsplit(self.path)  # absolute form, as clients send to a proxy
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            hop = {"connection", "proxy-connection", "proxy-authorization"}
            upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
            upstream.request(
                self.command,
                target.path + (f"?{target.query}" if target.query else ""),
                body=body if self.command in ("PUT", "POST") else None,
                headers={k: v for k, v in self.headers.items() if k.lower() not in hop},
            )
            resp = upstream.getresponse()
            data = resp.read()
            seen.append(f"{self.command} {resp.status}")
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                    self.send_header(k, v)
            length = resp.getheader("Content-Length") if self.command == "HEAD" else len(data)
            self.send_header("Content-Length", str(length or 0))
            self.end_headers()
            self.wfile.write(data)
            upstream.close()

        do_GET = do_PUT = do_HEAD = do_DELETE = relay

    server = ThreadingHTTPServer(("127.0.0.1", 0), Relay)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_requests_go_through_the_proxy_the_environment_names(
    store_settings: StoreSettings, forward_proxy, monkeypatch
) -> None:
    url, seen = forward_proxy
    for name in ("NO_PROXY", "no_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", url)
    proxied = ObjectStore(store_settings)
    proxied.ensure_bucket()
    proxied.put_bytes("via/proxy", b"v" * 100)
    assert proxied.get_bytes("via/proxy") == b"v" * 100
    assert proxied.head("via/proxy").size == 100
    assert [o.key for o in proxied.list("via/")] == ["via/proxy"]
    # a new bucket: HEAD 404, then created
    assert seen == ["HEAD 404", "PUT 200", "PUT 200", "GET 200", "HEAD 200", "GET 200"]
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert ObjectStore(store_settings).get_bytes("via/proxy") == b"v" * 100
    assert len(seen) == 6  # NO_PROXY: straight to the store


def test_hostile_uids_stay_inside_their_prefix() -> None:
    key = Keys.instance("study", "../../etc", "a/b/../c")
    assert key.startswith("studies/study/series/")
    assert ".." not in key.split("/")
    assert key.count("/") == 4


@pytest.mark.slow
def test_objects_survive_a_killed_seaweedfs(tmp_path) -> None:
    """What S3 acknowledged is there after SIGKILL and a restart on the same data directory."""
    from radflow.engine.seaweed import SeaweedServer
    from radflow.sdk.settings import StoreSettings

    server = SeaweedServer(data_dir=tmp_path / "data")
    server.start()
    store = ObjectStore(StoreSettings(endpoint_url=server.endpoint_url, bucket="durable"))
    store.ensure_bucket()
    blobs = {f"k/{i}": bytes([i]) * (1000 + i) for i in range(20)}
    for key, data in blobs.items():
        store.put_bytes(key, data)
    server.process.kill()
    server.process.wait()

    again = SeaweedServer(data_dir=tmp_path / "data")
    again.start()
    try:
        store = ObjectStore(StoreSettings(endpoint_url=again.endpoint_url, bucket="durable"))
        # the S3 port opens before the volume server has re-registered its volumes (seconds
        # under load): read as a client would, retrying until a deadline, then compare
        deadline = time.monotonic() + 30
        got: dict[str, bytes] = {}
        while len(got) < len(blobs) and time.monotonic() < deadline:
            for key in blobs.keys() - got.keys():
                try:
                    got[key] = store.get_bytes(key)
                except (NotFound, Unavailable):
                    time.sleep(0.2)
                    break
        assert got == blobs
    finally:
        again.stop()
