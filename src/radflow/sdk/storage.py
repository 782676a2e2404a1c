"""The object store: the only module that speaks S3 (botocore signs, urllib3 sends).

Keys are deterministic (a pure function of UIDs, job ids and operator names), so a redelivered
event overwrites instead of duplicating. :func:`safe_component` keeps any UID, even one holding
``../`` or ``/``, inside its prefix. :meth:`ObjectStore.put_if_absent` is an S3 conditional put
(``If-None-Match: *``), used to claim work exactly once.

One transport: every request is signed with botocore's SigV4 and sent on one urllib3 pool.
Why not boto3: its per-request machinery (endpoint rules, event hooks, response parsing) costs
about 2.4 ms of client CPU per GET on the 2-core development VM against about 1 ms here; a
stage that moves hundreds of DICOM objects spent seconds of CPU (under the GIL) on it
(docs/performance.md), and so did the adapter draining its spool with one PUT per instance.

One error mapping (:func:`_mapped`), for every operation:

* 404: :class:`NotFound`; 412 (or ``ConditionalRequestConflict``): :class:`AlreadyExists` for a
  conditional write, :class:`Changed` for a conditional read;
* 408, 429, 5xx, throttling and timeout codes, connection errors: sent again (3 attempts,
  0.2 s then 0.8 s apart, by :mod:`radflow.sdk.retry`), then
  :class:`~radflow.sdk.errors.Unavailable` (transient);
* the body did not match its checksum (``BadDigest``, ...): sent again likewise (the bytes may
  have changed in transit), then :class:`~radflow.sdk.errors.StoreRefused`;
* anything else (403, 400, an invalid key, a missing bucket, a redirect):
  :class:`~radflow.sdk.errors.StoreRefused` at once, permanent: sending it again will not help.
"""

from __future__ import annotations

import base64
import hashlib
import re
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, unquote, unquote_plus, urlsplit

import urllib3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.utils import get_environ_proxies

from radflow.sdk.errors import StoreRefused, Unavailable
from radflow.sdk.retry import retrying
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
        output = safe_component(output or "default")
        return f"jobs/{safe_component(job_id)}/{safe_component(operator)}/out/{output}/{rel}"

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


class Changed(Exception):
    """A conditional read (``if_match``) found the object replaced since its ETag was taken."""


@dataclass(frozen=True)
class Fetched:
    """Bytes of one object (all of it, or a range) with the object's ETag and whole size."""

    data: bytes
    etag: str
    size: int


#: statuses and S3 error codes that are sent again (as botocore's standard retry mode), and 5xx
_TRANSIENT = frozenset({408, 429})
_TRANSIENT_CODES = frozenset(
    {
        "RequestTimeout",  # 400: the connection idled while sending the body
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
    }
)
_ATTEMPTS = 3
#: S3 error codes: a conditional request lost / the body did not match its checksum
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
_CHECKSUM_CODES = frozenset({"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch"})
_BUCKET_EXISTS = frozenset({"BucketAlreadyOwnedByYou", "BucketAlreadyExists"})
#: files up to this size are PUT from memory, larger ones streamed
_PUT_IN_ONE_PIECE = 16 << 20
_S3_XML = "{http://s3.amazonaws.com/doc/2006-03-01/}"
#: keys per listing page (S3's maximum)
_LIST_PAGE = 1000


def _error_code(body: bytes) -> str:
    """The ``<Code>`` of an S3 XML error body ("" if there is none)."""
    match = re.search(rb"<Code>([^<]{1,64})</Code>", body)
    return match.group(1).decode("ascii", "replace") if match else ""


class _BadChecksum(Exception):
    """The store found the body not matching its checksum: sent again, then refused."""


def _mapped(op: str, method: str, key: str, status: int, code: str) -> Exception:
    """The one mapping of an S3 answer that is not success to radflow's errors.

    Messages carry the operation, status and S3 code, never the key (keys hold UIDs).
    """
    if status in _TRANSIENT or status >= 500 or code in _TRANSIENT_CODES:
        return Unavailable(f"object store {op} failed: HTTP {status} {code}".rstrip())
    if code in _CHECKSUM_CODES:
        return _BadChecksum(code)
    if status == 412 or code in _PRECONDITION_CODES:
        return Changed(key) if method in ("GET", "HEAD") else AlreadyExists(key)
    if status == 404 and code != "NoSuchBucket":
        return NotFound(key)
    return StoreRefused(f"object store {op} refused: HTTP {status} {code}".rstrip())


class _UnsignedPayload(S3SigV4Auth):
    """SigV4 with ``UNSIGNED-PAYLOAD`` as the body hash, as boto3 with payload signing off.

    Hashing each body for the signature would cost a pass over every file; integrity comes from
    ``x-amz-checksum-sha256`` where the caller knows the digest (a signed header).
    """

    def _should_sha256_sign_payload(self, request: AWSRequest) -> bool:
        return False


def _pool(endpoint: str, connections: int) -> urllib3.PoolManager:
    """The connection pool; through ``HTTP(S)_PROXY`` unless ``NO_PROXY`` says not, as boto3."""
    options: dict[str, Any] = {
        "maxsize": connections,
        "retries": False,  # retried above, by the one policy
        "timeout": urllib3.Timeout(connect=5, read=60),
    }
    proxy = get_environ_proxies(endpoint).get(urlsplit(endpoint).scheme)
    if not proxy:
        return urllib3.PoolManager(**options)
    auth = urllib3.util.parse_url(proxy).auth
    headers = urllib3.make_headers(proxy_basic_auth=unquote(auth)) if auth else None
    return urllib3.ProxyManager(proxy, proxy_headers=headers, **options)


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: Mapping[str, str]
    data: bytes


class _Transport:
    """Signed requests to one bucket on one urllib3 pool, sent again while transient, mapped."""

    def __init__(self, settings: StoreSettings) -> None:
        endpoint = settings.endpoint_url or f"https://s3.{settings.region}.amazonaws.com"
        self._bucket_url = f"{endpoint.rstrip('/')}/{quote(settings.bucket, safe='')}"
        self._auth = _UnsignedPayload(
            Credentials(
                settings.access_key_id.get_secret_value(),
                settings.secret_access_key.get_secret_value(),
            ),
            "s3",
            settings.region,
        )
        self._pool = _pool(endpoint, settings.max_pool_connections)
        self._policy = retrying(
            attempts=_ATTEMPTS, on=(Unavailable, _BadChecksum), first_delay=0.2, factor=4
        )

    def request(
        self,
        op: str,
        method: str,
        key: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
        body: Callable[[], bytes | BinaryIO] | None = None,
        accept: frozenset[int] = frozenset(),
        read: Callable[[urllib3.BaseHTTPResponse], Any] | None = None,
    ) -> Any:
        """Send ``method`` on ``key`` (the bucket itself when ``None``); returns the answer.

        A 2xx answer, or one whose status is in ``accept``, is read by ``read`` (default: the
        whole body into an :class:`_Answer`) inside the attempt, so a connection lost while
        reading is sent again too. ``body`` is called once per attempt. Anything else raises
        what :func:`_mapped` says, after the retries where it is worth another attempt.
        """
        url = self._bucket_url if key is None else f"{self._bucket_url}/{quote(key, safe='/~')}"
        if query:
            url += "?" + "&".join(
                f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items())
            )
        try:
            return self._policy(
                self._attempt, op, method, key or "", url, headers or {}, body, accept, read
            )
        except _BadChecksum as exc:
            raise StoreRefused(
                f"object store {op} refused: the body does not match its checksum ({exc}) "
                f"in {_ATTEMPTS} attempts"
            ) from None

    def _attempt(
        self,
        op: str,
        method: str,
        key: str,
        url: str,
        headers: Mapping[str, str],
        body: Callable[[], bytes | BinaryIO] | None,
        accept: frozenset[int],
        read: Callable[[urllib3.BaseHTTPResponse], Any] | None,
    ) -> Any:
        request = AWSRequest(method=method, url=url, headers=dict(headers))
        self._auth.add_auth(request)
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
            raise Unavailable(f"object store {op} failed: {type(exc).__name__}") from exc
        finally:
            if payload is not None and not isinstance(payload, bytes):
                payload.close()
        try:
            if resp.status < 300 or resp.status in accept:
                if read is not None:
                    return read(resp)
                return _Answer(resp.status, resp.headers, resp.read())
            data = resp.read()
        except urllib3.exceptions.HTTPError as exc:  # the connection broke during the body
            raise Unavailable(f"object store {op} failed: {type(exc).__name__}") from exc
        finally:
            resp.release_conn()
        raise _mapped(op, method, key, resp.status, _error_code(data))


class ObjectStore:
    """A bucket in an S3-compatible store (SeaweedFS locally, any S3 in production)."""

    def __init__(self, settings: StoreSettings) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self._http = _Transport(settings)

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist yet."""
        try:
            self._http.request("head_bucket", "HEAD")
            return
        except (NotFound, StoreRefused):
            pass  # missing, or not ours to look at: creating it says which
        answer = self._http.request("create_bucket", "PUT", accept=frozenset({409}))
        code = _error_code(answer.data)
        if answer.status == 409 and code not in _BUCKET_EXISTS:
            raise StoreRefused(f"object store create_bucket refused: HTTP 409 {code}".rstrip())

    def _put(self, key: str, data: bytes, headers: dict[str, str]) -> str:
        answer = self._http.request("put_object", "PUT", key, headers=headers, body=lambda: data)
        return str(answer.headers.get("ETag", ""))

    def put_bytes(self, key: str, data: bytes, *, content_type: str | None = None) -> str:
        """Write ``data`` at ``key`` (overwriting); returns the ETag. Durable on return."""
        return self._put(key, data, {"Content-Type": content_type} if content_type else {})

    def put_if_absent(self, key: str, data: bytes) -> str:
        """Write ``data`` only if ``key`` does not exist; raises :class:`AlreadyExists`."""
        return self._put(key, data, {"If-None-Match": "*"})

    def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        """Replace ``key`` only if it still has ``etag``; raises :class:`AlreadyExists`."""
        return self._put(key, data, {"If-Match": etag})

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
        body that does not match it (:class:`StoreRefused` once the attempts are spent).
        ``if_absent``: never replace an existing object (raises :class:`AlreadyExists`).
        """
        size = path.stat().st_size
        headers: dict[str, str] = {"Content-Length": str(size)}
        if content_type:
            headers["Content-Type"] = content_type
        if if_absent:
            headers["If-None-Match"] = "*"
        if sha256:
            headers["x-amz-checksum-sha256"] = base64.b64encode(bytes.fromhex(sha256)).decode()

        def body() -> bytes | BinaryIO:
            # small files in one piece (http.client sends file objects in 8 KiB writes)
            if size <= _PUT_IN_ONE_PIECE:
                return path.read_bytes()
            return open(path, "rb")  # closed by the transport after the request

        answer = self._http.request("put_object", "PUT", key, headers=headers, body=body)
        return str(answer.headers.get("ETag", ""))

    def get_bytes(self, key: str) -> bytes:
        return bytes(self._http.request("get_object", "GET", key).data)

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        answer = self._http.request("get_object", "GET", key)
        return bytes(answer.data), str(answer.headers.get("ETag", ""))

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
        answer = self._http.request(
            "get_object", "GET", key, headers=headers, accept=frozenset({416})
        )
        etag = str(answer.headers.get("ETag", ""))
        total = answer.headers.get("Content-Range", "").rpartition("/")[2]
        if answer.status == 416:  # start is at or past the end
            return Fetched(b"", etag, int(total) if total.isdigit() else start)
        if answer.status == 206:
            data = answer.data
            return Fetched(data, etag, int(total) if total.isdigit() else start + len(data))
        # 200: the server ignored the range (or the object is empty)
        data = answer.data
        return Fetched(data[start : None if length is None else start + length], etag, len(data))

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

        def stream(resp: urllib3.BaseHTTPResponse) -> None:
            with open(path, "wb") as fh:  # each attempt starts the file again
                for chunk in resp.stream(1 << 20):
                    fh.write(chunk)

        self._http.request("get_object", "GET", key, read=stream)

    def head(self, key: str) -> ObjectInfo:
        answer = self._http.request("head_object", "HEAD", key)
        return ObjectInfo(
            key=key,
            size=int(answer.headers.get("Content-Length", 0)),
            etag=str(answer.headers.get("ETag", "")),
        )

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except NotFound:
            return False
        return True

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object under ``prefix``, in key order (ListObjectsV2, a page at a time)."""
        token: str | None = None
        while True:
            query = {
                "list-type": "2",
                "prefix": prefix,
                "encoding-type": "url",
                "max-keys": str(_LIST_PAGE),
            }
            if token:
                query["continuation-token"] = token
            answer = self._http.request("list_objects_v2", "GET", query=query)
            try:
                root = ET.fromstring(answer.data)
            except ET.ParseError:
                raise Unavailable("object store list_objects_v2: unreadable listing") from None
            encoded = root.findtext(f"{_S3_XML}EncodingType") == "url"
            for item in root.iterfind(f"{_S3_XML}Contents"):
                key = item.findtext(f"{_S3_XML}Key", "")
                yield ObjectInfo(
                    key=unquote_plus(key) if encoded else key,
                    size=int(item.findtext(f"{_S3_XML}Size", "0")),
                    etag=item.findtext(f"{_S3_XML}ETag", ""),
                )
            token = root.findtext(f"{_S3_XML}NextContinuationToken")
            if root.findtext(f"{_S3_XML}IsTruncated") != "true" or not token:
                return

    def delete(self, key: str) -> None:
        self._http.request("delete_object", "DELETE", key)

    def uri(self, key: str) -> str:
        """``s3://bucket/key``, the form carried in ``dataref``."""
        return f"s3://{self.bucket}/{key}"

    def key_from_uri(self, uri: str) -> str:
        prefix = f"s3://{self.bucket}/"
        if not uri.startswith(prefix):
            raise ValueError(f"dataref {uri!r} is not in bucket {self.bucket!r}")
        return uri[len(prefix) :]
