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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import botocore.exceptions
from botocore.config import Config

from radflow.shared.errors import Unavailable
from radflow.shared.settings import StoreSettings

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
    if value and len(value) <= 200 and not _UNSAFE.search(value) and value.strip(".") != "" and ".." not in value:
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
            # Checksums where they pay: botocore's default CRC32 on every request and its SHA-256
            # of every body on plain-HTTP endpoints cost ~1.5 ms of client and ~1.7 ms of
            # SeaweedFS CPU per 526 KB PUT (benchmarks in docs/adapter.md); DICOM instances carry
            # the SHA-256 we compute anyway (put_file(sha256=...)), which the store verifies.
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

    def _call(self, method: str, **kwargs):  # noqa: ANN202 - boto3 responses are untyped dicts
        try:
            return getattr(self._client, method)(Bucket=self.bucket, **kwargs)
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise NotFound(kwargs.get("Key", "")) from None
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                raise AlreadyExists(kwargs.get("Key", "")) from None
            if code in ("BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch"):
                # the body changed in transit (or on disk): nothing was stored; sending again may work
                raise Unavailable(f"object store {method}: body does not match its checksum ({code})") from exc
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
        self, key: str, path: Path, *, content_type: str | None = None, sha256: str | None = None, if_absent: bool = False
    ) -> str:
        """Upload a local file (single PUT up to 5 GB); returns the ETag.

        ``sha256`` (hex) is sent as the object's ``x-amz-checksum-sha256`` so the store rejects a
        body that does not match it. ``if_absent``: never replace an existing object (raises
        :class:`AlreadyExists`).
        """
        extra: dict[str, str] = {"ContentType": content_type} if content_type else {}
        if if_absent:
            extra["IfNoneMatch"] = "*"
        if sha256:
            extra["ChecksumSHA256"] = base64.b64encode(bytes.fromhex(sha256)).decode()
        with open(path, "rb") as fh:
            return str(self._call("put_object", Key=key, Body=fh, **extra)["ETag"])

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

    def download_file(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.get_bytes(key))

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
        return uri[len(prefix):]
