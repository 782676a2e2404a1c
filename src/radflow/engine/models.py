"""The Triton model repository in the object store: what ``radflow models push`` uploads.

Triton reads its repository from ``s3://<endpoint>/<bucket>/models`` (the compiled Knative
Service's ``--model-repository``), so a scaled-to-zero server never depends on a volume someone
must fill: every instance, local or on the GPU pool, loads the same objects. ``push`` uploads a
local folder (``models/triton``) to the prefix: new and changed files (compared by content
hash); with ``prune`` it also deletes objects under the prefix that the folder no longer has,
so the prefix mirrors the folder (the engine prunes only the store it runs itself).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from radflow.engine.compiler import MODEL_PREFIX
from radflow.sdk.errors import ConfigError
from radflow.sdk.storage import ObjectStore

#: folders never uploaded (python caches written by the python backend)
_SKIP_DIRS = frozenset({"__pycache__"})


@dataclass
class PushReport:
    uploaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    #: under the prefix but not in the folder, left alone (no ``prune``)
    kept: list[str] = field(default_factory=list)


def repository_files(folder: Path) -> dict[str, Path]:
    """``<model>/...`` relative key -> file, for every file of a model repository folder."""
    if not folder.is_dir():
        raise ConfigError(f"model repository {folder} is not a folder")
    files = {
        p.relative_to(folder).as_posix(): p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not _SKIP_DIRS.intersection(p.relative_to(folder).parts)
    }
    if not files:
        raise ConfigError(f"model repository {folder} holds no files")
    return files


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def push(
    store: ObjectStore, folder: Path, prefix: str = MODEL_PREFIX, *, prune: bool = False
) -> PushReport:
    """Upload ``folder``'s new and changed files to ``<bucket>/<prefix>/`` (single-part ETag =
    MD5); with ``prune``, delete what is there but not in ``folder``."""
    files = repository_files(folder)
    base = prefix.strip("/") + "/"
    existing = {o.key: o.etag.strip('"') for o in store.list(base)}
    report = PushReport()
    for rel, path in files.items():
        key = base + rel
        if existing.get(key) == _md5(path):
            report.unchanged.append(key)
            continue
        store.put_file(key, path)
        report.uploaded.append(key)
    for key in sorted(set(existing) - {base + rel for rel in files}):
        if prune:
            store.delete(key)
            report.deleted.append(key)
        else:
            report.kept.append(key)
    return report


def repository_url(endpoint_url: str | None, bucket: str, prefix: str = MODEL_PREFIX) -> str:
    """Triton's URL for the repository: ``s3://http://host:port/bucket/prefix`` with an endpoint,
    ``s3://bucket/prefix`` on AWS."""
    if endpoint_url:
        return f"s3://{endpoint_url.rstrip('/')}/{bucket}/{prefix}"
    return f"s3://{bucket}/{prefix}"
