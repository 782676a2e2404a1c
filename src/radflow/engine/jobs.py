"""The job tracker's documents as the CLI and the demo read them.

Straight from the object store (``RADFLOW_S3_*``, the default) or from a running tracker
(``url``: the same JSON the tracker serves on ``GET /jobs`` and ``GET /jobs/<id>``).
"""

from __future__ import annotations

from typing import Any

from radflow.sdk import http
from radflow.sdk.settings import StoreSettings


def _fetch(url: str) -> Any:
    """The tracker's JSON answer; ``None`` for 404 (no such job)."""
    try:
        return http.get_json(url, timeout=10)
    except http.RequestRejected as exc:
        if exc.status == 404:
            return None
        raise


def _store(settings: StoreSettings | None) -> Any:
    from radflow.sdk.storage import ObjectStore

    return ObjectStore(settings or StoreSettings())


def load_jobs(url: str | None, store: StoreSettings | None = None) -> list[dict[str, Any]]:
    """Every job document; ``store`` (default: ``RADFLOW_S3_*``) unless ``url`` is given."""
    if url:
        return list((_fetch(url.rstrip("/") + "/jobs") or {}).get("jobs", []))
    from radflow.functions.job_tracker import service

    return service.list_jobs(_store(store))


def load_job(
    url: str | None, job_id: str, settings: StoreSettings | None = None
) -> dict[str, Any] | None:
    if url:
        doc = _fetch(url.rstrip("/") + f"/jobs/{job_id}")
        return dict(doc) if doc else None
    from radflow.functions.job_tracker import service

    store = _store(settings)
    doc = service.read_job(store, job_id)
    return service.view(store, doc) if doc else None


def redrive_job(url: str, job_id: str) -> dict[str, Any] | None:
    """Ask a running tracker to re-drive a failed job (``POST /jobs/<id>/redrive``); ``None``
    for 404. A refusal (409: not failed, nothing to re-drive) raises ``http.RequestRejected``."""
    try:
        return dict(http.request("POST", url.rstrip("/") + f"/jobs/{job_id}/redrive").json())
    except http.RequestRejected as exc:
        if exc.status == 404:
            return None
        raise
