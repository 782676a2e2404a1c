"""The job tracker's pure core: fold radflow events into one job document.

A job document is the answer to "where is my study?": pipeline, opaque study id, overall state
and, per stage of the pipeline's DAG, its state, completion time, duration and where its outputs
and log are. Events arrive at least once and in any order; :func:`apply` is idempotent (an event
id is applied once) and order-tolerant (a completion before the job request still counts).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from typing import Any

PENDING, RUNNING, COMPLETED, FAILED, DEAD_LETTERED = (
    "pending",
    "running",
    "completed",
    "failed",
    "dead_lettered",
)
#: how many applied event ids a job document remembers for deduplication
MAX_SEEN = 500


def new_job(job_id: str, pipeline: str, dag: Mapping[str, Sequence[str]] | None) -> dict[str, Any]:
    return {
        "schema_version": "radflow.job-status/v1",
        "job_id": job_id,
        "pipeline": pipeline,
        "study_id": "",
        "state": RUNNING,
        "created_at": None,
        "updated_at": None,
        "finished_at": None,
        "stages": {name: {"state": PENDING} for name in sorted(dag or {})},
        "dead_letters": [],
        "seen": [],
    }


def _parse_time(value: str | None) -> _dt.datetime | None:
    if not value:
        return None
    try:
        return _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def apply(
    doc: dict[str, Any],
    attrs: Mapping[str, Any],
    data: Mapping[str, Any],
    dag: Mapping[str, Sequence[str]] | None,
) -> tuple[dict[str, Any], str | None]:
    """Fold one event into ``doc`` (a copy is returned) and say whether the job just became final.

    Returns ``(doc, final)`` where ``final`` is ``"completed"``/``"failed"`` when the job is in
    that state after this event (so the caller replies with a job event), else ``None``.
    """
    doc = {
        **doc,
        "stages": {k: dict(v) for k, v in doc["stages"].items()},
        "dead_letters": list(doc["dead_letters"]),
        "seen": list(doc["seen"]),
    }
    event_id = str(attrs.get("id", ""))
    when = str(attrs.get("time") or _dt.datetime.now(_dt.UTC).isoformat())
    etype = str(attrs.get("type", ""))
    if event_id in doc["seen"] and "knativeerrorcode" not in attrs:
        return doc, _final(doc)
    doc["seen"] = (doc["seen"] + [event_id])[-MAX_SEEN:]
    doc["created_at"] = min(filter(None, [doc["created_at"], when])) if doc["created_at"] else when
    doc["updated_at"] = when
    if attrs.get("subject") and not doc["study_id"]:
        doc["study_id"] = str(attrs["subject"])
    for name in dag or {}:
        doc["stages"].setdefault(name, {"state": PENDING})

    if "knativeerrorcode" in attrs:
        dest = str(attrs.get("knativeerrordest", ""))
        target = _stage_from_destination(dest, doc["pipeline"], doc["stages"])
        doc["dead_letters"].append(
            {
                "event_id": event_id,
                "type": etype,
                "code": str(attrs.get("knativeerrorcode")),
                "destination": dest,
                "stage": target,
                "at": when,
            }
        )
        if target and doc["stages"].get(target, {}).get("state") in (PENDING, RUNNING):
            doc["stages"][target]["state"] = DEAD_LETTERED
        return doc, _final(doc)

    if etype.endswith(".study.received.v1") or etype.endswith(".study.revised.v1"):
        doc["study_id"] = doc["study_id"] or str(data.get("study_id", ""))
        doc["requested_at"] = when
    elif etype.endswith(".stage.completed.v1") or etype.endswith(".stage.failed.v1"):
        stage = str(data.get("stage", attrs.get("radflowstage", "")))
        entry = doc["stages"].setdefault(stage, {"state": PENDING})
        finished = _parse_time(when)
        if etype.endswith(".completed.v1"):
            duration = float(data.get("duration_ms", 0.0))
            entry.update(
                state=COMPLETED,
                completed_at=when,
                duration_ms=duration,
                outputs=dict(data.get("outputs", {})),
                file_count=int(data.get("file_count", 0)),
            )
            if finished:
                entry["started_at"] = (finished - _dt.timedelta(milliseconds=duration)).isoformat()
        else:
            entry.update(
                state=FAILED,
                failed_at=when,
                reason=str(data.get("reason", "")),
                message=str(data.get("message", "")),
            )
    final_before = doc["state"] in (COMPLETED, FAILED)
    states = [s["state"] for s in doc["stages"].values()]
    if any(s == FAILED for s in states):
        doc["state"] = FAILED
    elif dag and states and all(s == COMPLETED for s in states):
        doc["state"] = COMPLETED
    if doc["state"] in (COMPLETED, FAILED) and not final_before:
        doc["finished_at"] = when
    return doc, _final(doc)


def _final(doc: Mapping[str, Any]) -> str | None:
    return doc["state"] if doc["state"] in (COMPLETED, FAILED) else None


def _stage_from_destination(dest: str, pipeline: str, stages: Mapping[str, Any]) -> str | None:
    """Knative puts the subscriber URL in ``knativeerrordest``; its host starts with the Service
    name."""
    host = dest.split("://", 1)[-1].split("/", 1)[0].split(".", 1)[0].split(":", 1)[0]
    prefix = f"{pipeline}-"
    if host.startswith(prefix) and host[len(prefix) :] in stages:
        return host[len(prefix) :]
    return None


def summary(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The list view: no outputs, no dead letters."""
    return {
        "job_id": doc["job_id"],
        "pipeline": doc["pipeline"],
        "study_id": doc.get("study_id", ""),
        "study_instance_uid": doc.get("study_instance_uid", ""),
        "state": doc["state"],
        "created_at": doc.get("created_at"),
        "finished_at": doc.get("finished_at"),
        "stages": {
            k: {"state": v["state"], "duration_ms": v.get("duration_ms")}
            for k, v in sorted(doc["stages"].items())
        },
    }
