"""The object store: the only module that imports boto3.

Keys are deterministic (a pure function of UIDs, job ids and operator names), so a redelivered
event overwrites instead of duplicating. :func:`safe_component` keeps any UID, even one holding
``../`` or ``/``, inside its prefix. :meth:`ObjectStore.put_if_absent` is an S3 conditional put
(``If-None-Match: *``), used to claim work exactly once.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

import boto3
import botocore.exceptions
import urllib3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from radflow.sdk.errors import Unavailable
from radflow.sdk.settings import StoreSettings

_UNSAFE = re.compile(r"[^0-9A-Za-z.\-_]")


def safe_component(value: str) -> str:
    """Return ``value`` as one safe key/path component.

    DICOM UIDs (``[0-9.]``, at most 64 characters) pass unchanged. Anything else (path
    separators, ``..``, spaces, over-long values) is replaced by a readable prefix plus a hash
    of the original, so two different inputs never collide and the result never leaves its
    prefix.
    """
    if value and len(value) <= 64 and not _UNSAFE.search(value) and value.strip(".") != "":
        if ".." not in value:
            return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    cleaned = _UNSAFE.sub("_", value).replace("..", "_").strip("._")[:40]
    return f"{cleaned}-{digest}" if cleaned else f"x-{digest}"


def safe_filename(value: str) -> str:
    """Like :func:`safe_component`, for the file names inside a stage output (up to 200 characters).

    ``<SeriesInstanceUID>.nii.gz`` is up to 71 characters: it must keep its name, or the next
    stage cannot find its ``*.nii.gz``.
    """
    if (
        value
        and len(value) <= 200
        and not _UNSAFE.search(value)
        and value.strip(".") != ""
        and ".." not in value
    ):
        return value
    return safe_component(value)


class Keys:
    """The key scheme. Everything radflow writes lives under these prefixes."""

    @staticmethod
    def instance(study_id: str, series_uid: str, sop_instance_uid: str) -> str:
        return (
            f"studies/{safe_component(study_id)}/series/{safe_component(series_uid)}/"
            f"{safe_component(sop_instance_uid)}.dcm"
        )

    @staticmethod
    def instance_variant(key: str, sha256: str) -> str:
        """Where a re-sent instance whose bytes differ from the stored copy goes (never over it)."""
        return f"{key.removesuffix('.dcm')}.{sha256[:16]}.dcm"

    @staticmethod
    def manifest(study_id: str, group_id: str) -> str:
        return f"studies/{safe_component(study_id)}/manifests/{safe_component(group_id)}.json"

    @staticmethod
    def job_prefix(job_id: str) -> str:
        return f"jobs/{safe_component(job_id)}/"

    @staticmethod
    def stage_output(job_id: str, operator: str, output: str, relpath: str = "") -> str:
        rel = "/".join(safe_filename(p) for p in Path(relpath).parts) if relpath else ""
        base = f"jobs/{safe_component(job_id)}/{safe_component(operator)}/out/{safe_component(output or 'default')}/"
        return base + rel

    @staticmethod
    def stage_marker(job_id: str, operator: str, name: str) -> str:
        """Control objects of one stage: ``claim``, ``completed.json``, ``failed.json``."""
        return f"jobs/{safe_component(job_id)}/{safe_component(operator)}/{safe_component(name)}"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str


class NotFound(KeyError):
    """The key does not exist."""


class AlreadyExists(Exception):
    """A conditional put found the key already present (somebody else claimed it)."""


class StoreRefused(Exception):
    """The store answered a write with a permanent error (e.g. 403): retrying will not help."""


class Changed(Exception):
    """A conditional read (``if_match``) found the object replaced since its ETag was taken."""


@dataclass(frozen=True)
class Fetched:
    """Bytes of one object (all of it, or a range) with the object's ETag and whole size."""

    data: bytes
    etag: str
    size: int


#: HTTP statuses a direct request retries (as boto3's standard retry mode does)
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_ATTEMPTS = 3
#: S3 error codes: a conditional write lost / the body did not match its checksum
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict"})
_CHECKSUM_CODES = frozenset({"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch"})
#: files up to this size are PUT from memory, larger ones streamed
_PUT_IN_ONE_PIECE = 16 << 20


class _DirectGets:
    """Object GETs and file PUTs signed with botocore's SigV4, sent on a plain urllib3 pool.

    Why not boto3: its per-request machinery (endpoint rules, event hooks, response parsing)
    costs about 2.4 ms of client CPU per GET on the 2-core development VM, against about 1 ms
    here; a stage that moves hundreds of DICOM objects spent seconds of CPU (under the GIL) on
    it (docs/performance.md), and so did the adapter draining its spool with one PUT per
    instance. Only object reads and :meth:`ObjectStore.put_file` take this path; small
    documents, listings and deletes stay on boto3. Same credentials, path-style addressing and
    retry budget.
    """

    def __init__(self, settings: StoreSettings) -> None:
        base = settings.endpoint_url or f"https://s3.{settings.region}.amazonaws.com"
        self._base = f"{base.rstrip('/')}/{quote(settings.bucket, safe='')}/"
        self._credentials = Credentials(
            settings.access_key_id.get_secret_value(), settings.secret_access_key.get_secret_value()
        )
        self._region = settings.region
        self._pool = urllib3.PoolManager(
            maxsize=settings.max_pool_connections,
            retries=False,
            timeout=urllib3.Timeout(connect=5, read=60),
        )

    def _send(
        self,
        method: str,
        key: str,
        headers: dict[str, str],
        body: Callable[[], bytes | BinaryIO] | None = None,
    ) -> urllib3.BaseHTTPResponse:
        """Sign and send one request, retrying transport errors and transient answers.

        Returns the first other answer with its body unread (``body`` is called again for each
        attempt); raises :class:`Unavailable` once the attempts are spent.
        """
        url = self._base + quote(key, safe="/~")
        problem = ""
        for attempt in range(_ATTEMPTS):
            if attempt:
                time.sleep(0.05 * 4**attempt)
            request = AWSRequest(method=method, url=url, headers=headers)
            S3SigV4Auth(self._credentials, "s3", self._region).add_auth(request)
            payload = body() if body is not None else None
            try:
                resp = self._pool.request(
                    method,
                    url,
                    body=payload,
                    headers=dict(request.headers.items()),
                    preload_content=False,
                    decode_content=False,
                    redirect=False,
                )
            except urllib3.exceptions.HTTPError as exc:
                problem = type(exc).__name__
                continue
            finally:
                if hasattr(payload, "close"):
                    payload.close()
            if resp.status in _RETRY_STATUSES:
                problem = f"HTTP {resp.status}"
                resp.drain_conn()
                resp.release_conn()
                continue
            return resp
        raise Unavailable(f"object store {method} failed: {problem}")

    def open(self, key: str, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        """Send a signed GET; return the response (2xx, 304, 4xx) with its body unread.

        Transient answers and transport errors are retried with a short backoff, then raise
        :class:`Unavailable`; NoSuchKey raises :class:`NotFound`.
        """
        resp = self._send("GET", key, headers)
        if resp.status == 404:
            resp.drain_conn()
            resp.release_conn()
            raise NotFound(key)
        return resp

    def put_file(self, key: str, path: Path, headers: dict[str, str]) -> str:
        """PUT the file's bytes under ``key``; returns the ETag.

        The body is not hashed for the signature (``UNSIGNED-PAYLOAD``, as boto3 does over
        HTTPS); integrity comes from ``x-amz-checksum-sha256`` when the caller sends it, which
        is itself signed. 412 raises :class:`AlreadyExists`; a checksum mismatch and transient
        answers raise :class:`Unavailable` after the retries.
        """
        size = path.stat().st_size
        signed = {
            **headers,
            "Content-Length": str(size),
            "X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD",
        }

        def body() -> bytes | BinaryIO:
            # small files in one piece (http.client sends file objects in 8 KiB writes)
            if size <= _PUT_IN_ONE_PIECE:
                return path.read_bytes()
            return open(path, "rb")  # closed by _send after the request

        resp = self._send("PUT", key, signed, body)
        data = resp.read()
        resp.release_conn()
        if resp.status == 200:
            return str(resp.headers.get("ETag", ""))
        code = _error_code(data)
        if resp.status == 412 or code in _PRECONDITION_CODES:
            raise AlreadyExists(key)
        if code in _CHECKSUM_CODES:
            raise Unavailable(f"object store put_object: body does not match its checksum ({code})")
        raise StoreRefused(f"object store put_object refused: HTTP {resp.status} {code}".strip())


def _error_code(body: bytes) -> str:
    """The ``<Code>`` of an S3 XML error body ("" if there is none)."""
    match = re.search(rb"<Code>([^<]{1,64})</Code>", body)
    return match.group(1).decode("ascii", "replace") if match else ""


def _transient(exc: Exception) -> bool:
    if isinstance(exc, botocore.exceptions.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or status in (408, 429)
    return isinstance(exc, (botocore.exceptions.BotoCoreError, ConnectionError, OSError))


class ObjectStore:
    """A bucket in an S3-compatible store (SeaweedFS locally, any S3 in production)."""

    def __init__(self, settings: StoreSettings) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self._client = boto3.client(
            "s3",
            endpoint_url=settings.endpoint_url,
            region_name=settings.region,
            aws_access_key_id=settings.access_key_id.get_secret_value(),
            aws_secret_access_key=settings.secret_access_key.get_secret_value(),
            # Checksums where they pay: no botocore CRC32 on every request and no SHA-256 of every
            # body on plain-HTTP endpoints; DICOM instances travel on put_file (direct path) with
            # the SHA-256 the uploader computes anyway, which the store verifies.
            config=Config(
                s3={"addressing_style": "path", "payload_signing_enabled": False},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                max_pool_connections=settings.max_pool_connections,
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
            ),
        )
        self._direct = _DirectGets(settings)

    def _call(self, method: str, **kwargs):
        try:
            return getattr(self._client, method)(Bucket=self.bucket, **kwargs)
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise NotFound(kwargs.get("Key", "")) from None
            if code in _PRECONDITION_CODES:
                raise AlreadyExists(kwargs.get("Key", "")) from None
            if code in _CHECKSUM_CODES:
                # the body changed in transit (or on disk): nothing was stored; sending again may work
                raise Unavailable(
                    f"object store {method}: body does not match its checksum ({code})"
                ) from exc
            if _transient(exc):
                raise Unavailable(f"object store {method} failed: {code}") from exc
            raise
        except (botocore.exceptions.BotoCoreError, ConnectionError, OSError) as exc:
            raise Unavailable(f"object store {method} failed: {type(exc).__name__}") from exc

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist yet."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError:
            try:
                self._client.create_bucket(Bucket=self.bucket)
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in (
                    "BucketAlreadyOwnedByYou",
                    "BucketAlreadyExists",
                ):
                    raise
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise Unavailable(f"object store unreachable: {type(exc).__name__}") from exc

    def put_bytes(self, key: str, data: bytes, *, content_type: str | None = None) -> str:
        """Write ``data`` at ``key`` (overwriting); returns the ETag. Durable on return."""
        extra = {"ContentType": content_type} if content_type else {}
        return str(self._call("put_object", Key=key, Body=data, **extra)["ETag"])

    def put_if_absent(self, key: str, data: bytes) -> str:
        """Write ``data`` only if ``key`` does not exist; raises :class:`AlreadyExists`."""
        return str(self._call("put_object", Key=key, Body=data, IfNoneMatch="*")["ETag"])

    def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        """Replace ``key`` only if it still has ``etag``; raises :class:`AlreadyExists`."""
        return str(self._call("put_object", Key=key, Body=data, IfMatch=etag)["ETag"])

    def put_file(
        self,
        key: str,
        path: Path,
        *,
        content_type: str | None = None,
        sha256: str | None = None,
        if_absent: bool = False,
    ) -> str:
        """Upload a local file (single PUT up to 5 GB); returns the ETag.

        ``sha256`` (hex) is sent as the object's ``x-amz-checksum-sha256`` so the store rejects a
        body that does not match it. ``if_absent``: never replace an existing object (raises
        :class:`AlreadyExists`).
        """
        headers: dict[str, str] = {"Content-Type": content_type} if content_type else {}
        if if_absent:
            headers["If-None-Match"] = "*"
        if sha256:
            headers["x-amz-checksum-sha256"] = base64.b64encode(bytes.fromhex(sha256)).decode()
        return self._direct.put_file(key, path, headers)

    def get_bytes(self, key: str) -> bytes:
        body = self._call("get_object", Key=key)["Body"]
        try:
            return bytes(body.read())
        finally:
            body.close()

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        resp = self._call("get_object", Key=key)
        try:
            return bytes(resp["Body"].read()), str(resp["ETag"])
        finally:
            resp["Body"].close()

    def get_range(
        self, key: str, start: int = 0, length: int | None = None, *, if_match: str | None = None
    ) -> Fetched:
        """Bytes ``start`` .. ``start + length - 1`` of ``key`` (to its end without ``length``).

        Returns fewer bytes when the object is shorter (none when ``start`` is past its end),
        plus the object's ETag and whole size, so a caller can read a header first and fetch
        the rest later with ``if_match`` set to that ETag: if the object was replaced in
        between, :class:`Changed` is raised instead of mixing two versions.
        """
        if start < 0 or (length is not None and length <= 0):
            raise ValueError(f"invalid range start={start} length={length}")
        end = "" if length is None else str(start + length - 1)
        headers = {"Range": f"bytes={start}-{end}"}
        if if_match:
            headers["If-Match"] = if_match
        resp = self._direct.open(key, headers)
        try:
            if resp.status == 412:
                raise Changed(key)
            etag = str(resp.headers.get("ETag", ""))
            if resp.status == 416:  # start is at or past the end
                total = resp.headers.get("Content-Range", "").rpartition("/")[2]
                return Fetched(b"", etag, int(total) if total.isdigit() else start)
            if resp.status == 200:  # the server ignored the range (or the object is empty)
                data = resp.read()
                return Fetched(
                    data[start : None if length is None else start + length], etag, len(data)
                )
            if resp.status != 206:
                raise Unavailable(f"object store ranged get_object answered HTTP {resp.status}")
            total = resp.headers.get("Content-Range", "").rpartition("/")[2]
            data = resp.read()
            return Fetched(data, etag, int(total) if total.isdigit() else start + len(data))
        finally:
            resp.release_conn()

    def iter_objects(self, keys: Iterable[str], *, threads: int = 4) -> Iterator[bytes]:
        """The objects at ``keys``, in order, fetched ``threads`` at a time ahead of the consumer.

        The caller works on object *n* (say, parses its header) while later ones are in flight;
        at most ``2 * threads`` objects wait in memory.
        """
        keys = list(keys)
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            window: deque[Future[Fetched]] = deque()
            for key in keys:
                window.append(pool.submit(self.get_range, key))
                if len(window) >= 2 * threads:
                    yield window.popleft().result().data
            while window:
                yield window.popleft().result().data

    def download_file(self, key: str, path: Path) -> None:
        """Stream ``key`` into ``path`` (parents created; an existing file is replaced)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        resp = self._direct.open(key, {})
        try:
            if resp.status != 200:
                raise Unavailable(f"object store get_object answered HTTP {resp.status}")
            with open(path, "wb") as fh:
                for chunk in resp.stream(1 << 20):
                    fh.write(chunk)
        except urllib3.exceptions.HTTPError as exc:
            raise Unavailable(f"object store get_object failed: {type(exc).__name__}") from exc
        finally:
            resp.release_conn()

    def head(self, key: str) -> ObjectInfo:
        resp = self._call("head_object", Key=key)
        return ObjectInfo(key=key, size=int(resp["ContentLength"]), etag=str(resp["ETag"]))

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except NotFound:
            return False
        return True

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object under ``prefix``, in key order."""
        token: str | None = None
        while True:
            kwargs = {"Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            resp = self._call("list_objects_v2", **kwargs)
            for item in resp.get("Contents", []):
                yield ObjectInfo(key=item["Key"], size=int(item["Size"]), etag=str(item["ETag"]))
            if not resp.get("IsTruncated"):
                return
            token = resp.get("NextContinuationToken")

    def delete(self, key: str) -> None:
        self._call("delete_object", Key=key)

    def uri(self, key: str) -> str:
        """``s3://bucket/key``, the form carried in ``dataref``."""
        return f"s3://{self.bucket}/{key}"

    def key_from_uri(self, uri: str) -> str:
        prefix = f"s3://{self.bucket}/"
        if not uri.startswith(prefix):
            raise ValueError(f"dataref {uri!r} is not in bucket {self.bucket!r}")
        return uri[len(prefix) :]
