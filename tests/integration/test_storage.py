"""The object store against a real SeaweedFS."""

import hashlib
import time

import pytest

from radflow.sdk.errors import Unavailable
from radflow.sdk.storage import AlreadyExists, Keys, NotFound, ObjectStore


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


def test_put_file_checksum_is_verified_by_the_store(store: ObjectStore, tmp_path) -> None:
    f = tmp_path / "instance.dcm"
    f.write_bytes(b"DICM" * 1000)
    store.put_file("in/good.dcm", f, sha256=hashlib.sha256(f.read_bytes()).hexdigest())
    assert store.get_bytes("in/good.dcm") == f.read_bytes()
    with pytest.raises(Unavailable, match="does not match its checksum"):
        store.put_file("in/bad.dcm", f, sha256=hashlib.sha256(b"something else").hexdigest())
    assert not store.exists("in/bad.dcm")


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
