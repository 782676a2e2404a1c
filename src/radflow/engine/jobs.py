"""The job tracker's documents as the CLI and the demo read them.

Straight from the object store (``RADFLOW_S3_*``, the default) or from a running tracker
(``url``: the same JSON the tracker serves on ``GET /jobs`` and ``GET /jobs/<id>``).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def _fetch(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def _store() -> Any:
    from radflow.sdk.settings import StoreSettings
    from radflow.sdk.storage import ObjectStore

    return ObjectStore(StoreSettings())


def load_jobs(url: str | None) -> list[dict[str, Any]]:
    if url:
        return list((_fetch(url.rstrip("/") + "/jobs") or {}).get("jobs", []))
    from radflow.functions.job_tracker import service

    return service.list_jobs(_store())


def load_job(url: str | None, job_id: str) -> dict[str, Any] | None:
    if url:
        doc = _fetch(url.rstrip("/") + f"/jobs/{job_id}")
        return dict(doc) if doc else None
    from radflow.functions.job_tracker import service

    store = _store()
    doc = service.read_job(store, job_id)
    return service.view(store, doc) if doc else None
