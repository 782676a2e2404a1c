"""The job tracker's pure core: fold radflow events into one job document.

A job document is the answer to "where is my study?": pipeline, opaque study id, overall state
and, per stage of the pipeline's DAG, its state, completion time, duration and where its outputs
and log are. Events arrive at least once and in any order; :func:`apply` is idempotent (an event
id is applied once) and order-tolerant (a completion before the job request still counts).

No job stays ``running`` for ever: a dead letter (an event the broker gave up delivering) fails
its job naming the stage it was meant for, an event that names a job but whose data is not its
type's payload fails the job (``invalid_event``), and :func:`check_deadline` fails a job whose
stages made no progress for too long (``deadline_exceeded``). A job's ``state``,
``failed_stage`` and ``reason`` are recomputed after every event (:func:`settle`), so a later
completion of a dead-lettered stage (a re-drive) still wins; the change that makes a job final
records the one job event it owes (``announcement``), whatever path failed or completed it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from radflow.sdk import events
from radflow.sdk.events import EventType, Ext

PENDING, RUNNING, COMPLETED, FAILED, DEAD_LETTERED = (
    "pending",
    "running",
    "completed",
    "failed",
    "dead_lettered",
)
#: how many applied event ids a job document remembers for deduplication
MAX_SEEN = 500
#: reasons a job fails with when no stage said why
DEAD_LETTER, INVALID_EVENT, DEADLINE_EXCEEDED = "dead_letter", "invalid_event", "deadline_exceeded"
#: a job request that is not the job it names (its job id is not derived from its content)
JOB_MISMATCH = "job_identity_mismatch"
#: how a job event goes out: as the reply to the stage event that finished the job, or
#: published to the broker (a job failed by a dead letter, its deadline or a forged request)
REPLY, PUBLISH = "reply", "publish"
#: the payload model of each event type the tracker folds (other types are not validated)
PAYLOADS: dict[str, type[BaseModel]] = {
    EventType.STUDY_RECEIVED.value: events.JobRequested,
    EventType.STUDY_REVISED.value: events.JobRequested,
    EventType.STAGE_COMPLETED.value: events.StageCompleted,
    EventType.STAGE_FAILED.value: events.StageFailed,
}
#: a reason code a function put in its error body (``{"reason": "..."}``); nothing else of a
#: dead letter's ``knativeerrordata`` is ever copied (it may echo input, i.e. PHI)
_REASON_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")


def new_job(job_id: str, pipeline: str, dag: Mapping[str, Sequence[str]] | None) -> dict[str, Any]:
    return {
        "schema_version": "radflow.job-status/v1",
        "job_id": job_id,
        "pipeline": pipeline,
        "study_id": "",
        "state": RUNNING,
        "failed_stage": None,
        "reason": None,
        "created_at": None,
        "updated_at": None,
        "finished_at": None,
        "stages": {name: {"state": PENDING} for name in sorted(dag or {})},
        "dead_letters": [],
        "seen": [],
    }


def parse_time(value: str | None) -> _dt.datetime | None:
    if not value:
        return None
    try:
        return _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def apply(
    doc: dict[str, Any],
    attrs: Mapping[str, Any],
    data: Any,
    dag: Mapping[str, Sequence[str]] | None,
    *,
    now: str | None = None,
) -> tuple[dict[str, Any], str | None]:
    """Fold one event into ``doc`` (a copy is returned) and say whether the job is final.

    Returns ``(doc, final)`` where ``final`` is ``"completed"``/``"failed"`` when the job is in
    that state after this event (so the caller replies with a job event), else ``None``.
    ``now`` (ISO 8601, the tracker's clock) is recorded as the job's last progress for
    :func:`check_deadline`: an event's own ``time`` is its sender's, possibly old or forged.
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
    seen_as = seen_key(attrs)
    # a stage's event is answered with the job event (the broker delivers the reply); a job
    # failed by anything else (a dead letter, a forged request) has it published
    via = (
        REPLY
        if etype in (EventType.STAGE_COMPLETED.value, EventType.STAGE_FAILED.value)
        and "knativeerrorcode" not in attrs
        else PUBLISH
    )
    if seen_as in doc["seen"]:
        return doc, _final(doc)
    doc["seen"] = (doc["seen"] + [seen_as])[-MAX_SEEN:]
    doc["progress_at"] = now or _dt.datetime.now(_dt.UTC).isoformat()
    doc["created_at"] = min(filter(None, [doc["created_at"], when])) if doc["created_at"] else when
    doc["updated_at"] = when
    if attrs.get("subject") and not doc["study_id"]:
        doc["study_id"] = str(attrs["subject"])
    for name in dag or {}:
        doc["stages"].setdefault(name, {"state": PENDING})

    if "knativeerrorcode" in attrs:
        dest = str(attrs.get("knativeerrordest", ""))
        targets = _dead_letter_stages(attrs, data, dest, doc, dag)
        reason = dead_letter_reason(attrs)
        doc["dead_letters"].append(
            {
                "event_id": event_id,
                "type": etype,
                "code": str(attrs.get("knativeerrorcode")),
                "destination": dest,
                "stage": targets[0] if targets else None,
                "stages": targets,
                "reason": reason,
                "at": when,
            }
        )
        for target in targets:
            entry = doc["stages"].setdefault(target, {"state": PENDING})
            if entry["state"] != COMPLETED:
                entry.update(state=DEAD_LETTERED, failed_at=when, reason=reason)
        if not targets:
            doc["failure"] = {"stage": None, "reason": reason, "at": when}
        return settle(doc, when, bool(dag), trigger=(seen_as, via, doc["progress_at"]))

    problem, reason = payload_problem(etype, data), INVALID_EVENT
    if problem is None:
        problem, reason = identity_problem(etype, attrs, data), JOB_MISMATCH
    if problem is not None:
        stage = str(attrs.get(Ext.STAGE) or "") or None
        failure = {"stage": stage, "reason": reason, "message": problem, "at": when}
        doc["invalid_events"] = [*doc.get("invalid_events", []), {"event_id": event_id, **failure}]
        if doc["state"] != COMPLETED:  # a forged event never un-completes a finished job
            doc["failure"] = failure
        return settle(doc, when, bool(dag), trigger=(seen_as, via, doc["progress_at"]))

    if etype in (EventType.STUDY_RECEIVED.value, EventType.STUDY_REVISED.value):
        doc["study_id"] = doc["study_id"] or str(data.get("study_id", ""))
        doc["requested_at"] = when
        # what a re-drive of the first stages re-emits (PHI-free: opaque ids and object keys)
        doc["request"] = {
            "id": event_id,
            "type": etype,
            "source": str(attrs.get("source", "")),
            "subject": attrs.get("subject"),
            "data": dict(data),
            "extensions": {
                k: str(attrs[k])
                for k in (Ext.JOB, Ext.PIPELINE, Ext.DATAREF, Ext.TRACEPARENT)
                if attrs.get(k)
            },
        }
    elif etype in (EventType.STAGE_COMPLETED.value, EventType.STAGE_FAILED.value):
        stage = str(data.get("stage", attrs.get(Ext.STAGE, "")))
        entry = doc["stages"].setdefault(stage, {"state": PENDING})
        finished = parse_time(when)
        if etype == EventType.STAGE_COMPLETED.value:
            duration = float(data.get("duration_ms", 0.0))
            for stale in ("failed_at", "reason", "message"):
                entry.pop(stale, None)
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
    return settle(doc, when, bool(dag), trigger=(seen_as, via, doc["progress_at"]))


def seen_key(attrs: Mapping[str, Any]) -> str:
    """What an event is remembered as: its id, or for a dead letter (the event itself coming
    back from the broker, same id) its id and destination, so neither hides the other."""
    event_id = str(attrs.get("id", ""))
    if "knativeerrorcode" in attrs:
        return f"dead-letter:{attrs.get('knativeerrordest', '')}:{event_id}"
    return event_id


def job_event_id(doc: Mapping[str, Any], final: str) -> str:
    """The id of the job's ``job.completed``/``job.failed``: one per outcome and re-drive round,
    so a redelivery is the same event and a failure after a re-drive is a new one."""
    rounds = int(doc.get("redriven", 0))
    parts = [str(doc["job_id"]), "job", final] + ([str(rounds)] if rounds else [])
    return events.deterministic_id(*parts)


def settle(
    doc: dict[str, Any],
    when: str,
    has_dag: bool = True,
    *,
    trigger: tuple[str, str, str] | None = None,
) -> tuple[dict[str, Any], str | None]:
    """Recompute the job's ``state``, ``failed_stage`` and ``reason``; say whether it is final.

    A failed or dead-lettered stage, or a job-level ``failure`` (an invalid event, the deadline,
    a dead letter no stage consumes), makes the job ``failed``; every stage completed makes it
    ``completed`` (only when the pipeline's DAG is known, ``has_dag``); else it is ``running``.

    When the job becomes final with an outcome not announced yet (this round), the job event
    it owes is recorded in ``announcement``: its id, the event that caused it (``trigger``:
    ``(seen key, via, now)``), how it goes out (``via``: ``reply`` to that stage event, or
    ``publish`` to the broker, ``sent`` once the broker took it) and when it was last tried
    (``at``, so a retry of an unsent one waits for the first try). One announcement per outcome
    and round: a job event is emitted exactly once per failure, whatever path failed the job.
    """
    final_before = doc["state"] in (COMPLETED, FAILED)
    stages = doc["stages"]
    broken = [n for n, s in sorted(stages.items()) if s["state"] in (FAILED, DEAD_LETTERED)]
    failure = doc.get("failure")
    if broken:
        doc["state"], doc["failed_stage"] = FAILED, broken[0]
        doc["reason"] = stages[broken[0]].get("reason") or DEAD_LETTER
    elif failure:
        doc["state"], doc["failed_stage"], doc["reason"] = (
            FAILED,
            failure["stage"],
            failure["reason"],
        )
    elif has_dag and stages and all(s["state"] == COMPLETED for s in stages.values()):
        doc["state"], doc["failed_stage"], doc["reason"] = COMPLETED, None, None
    else:
        doc["state"], doc["failed_stage"], doc["reason"] = RUNNING, None, None
    if doc["state"] in (COMPLETED, FAILED) and not final_before:
        doc["finished_at"] = when
    elif doc["state"] == RUNNING:
        doc["finished_at"] = None
    final = _final(doc)
    if final is not None and trigger is not None:
        event_id = job_event_id(doc, final)
        if (doc.get("announcement") or {}).get("id") != event_id:
            key, via, at = trigger
            doc["announcement"] = {
                "id": event_id,
                "state": final,
                "trigger": key,
                "via": via,
                "sent": False,
                "at": at,
            }
    return doc, final


def _final(doc: Mapping[str, Any]) -> str | None:
    return doc["state"] if doc["state"] in (COMPLETED, FAILED) else None


def payload_problem(etype: str, data: Any) -> str | None:
    """Why ``data`` is not the payload of ``etype``: the failing field names, never values."""
    model = PAYLOADS.get(etype)
    if model is None:
        return None
    if not isinstance(data, Mapping):
        return "data is not a JSON object"
    try:
        model.model_validate(data)
    except ValidationError as exc:
        fields = sorted({".".join(str(p) for p in err["loc"]) or "data" for err in exc.errors()})
        return "invalid fields: " + ", ".join(fields)
    return None


def identity_problem(etype: str, attrs: Mapping[str, Any], data: Any) -> str | None:
    """Why a (valid) job request is not the job it names, or None (other types: None).

    Its ``job_id`` must be derived from its group, pipeline and revision, and agree with the
    event's job extension: a forged request naming a made-up job fails that job at once.
    """
    if etype not in (EventType.STUDY_RECEIVED.value, EventType.STUDY_REVISED.value):
        return None
    req = events.JobRequested.model_validate(data)
    problem = req.identity_problem()
    if problem is None and attrs.get(Ext.JOB) not in (None, req.job_id):
        problem = f"extension {Ext.JOB} differs from data job_id"
    return problem


def dead_letter_reason(attrs: Mapping[str, Any]) -> str:
    """``dead_letter_<code>``, plus ``:<reason>`` when the subscriber's error body named one.

    ``knativeerrordata`` is base64 of the subscriber's response body; only a JSON
    ``{"reason": "<snake_case code>"}`` (what radflow functions answer) is read from it.
    """
    code = str(attrs.get("knativeerrorcode", "")).strip() or "unknown"
    reason = f"{DEAD_LETTER}_{code}"
    raw = attrs.get("knativeerrordata")
    if not raw:
        return reason
    try:
        body = json.loads(base64.b64decode(str(raw), validate=True))
    except (binascii.Error, ValueError):
        return reason
    said = body.get("reason") if isinstance(body, dict) else None
    if isinstance(said, str) and _REASON_CODE.fullmatch(said):
        return f"{reason}:{said}"
    return reason


def consumers(
    etype: str, producer: str | None, dag: Mapping[str, Sequence[str]] | None
) -> list[str]:
    """The DAG stages whose Triggers deliver an event of ``etype`` (made by ``producer``).

    The job request goes to the first stages (no upstream); a stage's completion to the stages
    it is an upstream of (a fan-in stage consumes each of its upstreams' completions).
    """
    if not dag:
        return []
    if etype in (EventType.STUDY_RECEIVED.value, EventType.STUDY_REVISED.value):
        return sorted(name for name, ups in dag.items() if not ups)
    if etype == EventType.STAGE_COMPLETED.value and producer:
        return sorted(name for name, ups in dag.items() if producer in ups)
    return []


def _dead_letter_stages(
    attrs: Mapping[str, Any],
    data: Any,
    dest: str,
    doc: Mapping[str, Any],
    dag: Mapping[str, Sequence[str]] | None,
) -> list[str]:
    """The stage(s) a dead letter was meant for.

    On Knative ``knativeerrordest`` names the subscriber's Service (``<pipeline>-<stage>…``);
    the embedded engine's destinations are loopback URLs, so otherwise the stage is found from
    the event itself: its consumers in the DAG (those not completed yet, when several are).
    """
    named = _stage_from_destination(dest, doc["pipeline"], doc["stages"])
    if named:
        return [named]
    producer = attrs.get(Ext.STAGE)
    if not producer and isinstance(data, Mapping):
        producer = data.get("stage")
    found = consumers(str(attrs.get("type", "")), str(producer) if producer else None, dag)
    still_open = [s for s in found if doc["stages"].get(s, {}).get("state") != COMPLETED]
    return still_open or found


def _stage_from_destination(dest: str, pipeline: str, stages: Mapping[str, Any]) -> str | None:
    """Knative puts the subscriber URL in ``knativeerrordest``; its host starts with the Service
    name."""
    host = dest.split("://", 1)[-1].split("/", 1)[0].split(".", 1)[0].split(":", 1)[0]
    prefix = f"{pipeline}-"
    if host.startswith(prefix) and host[len(prefix) :] in stages:
        return host[len(prefix) :]
    return None


def check_deadline(
    doc: dict[str, Any], now: _dt.datetime, deadline_seconds: float
) -> dict[str, Any] | None:
    """``doc`` failed with ``deadline_exceeded`` (a copy) when it is running and made no
    progress for ``deadline_seconds``; None when it is final or still within its deadline."""
    if doc["state"] != RUNNING:
        return None
    last = parse_time(doc.get("progress_at") or doc.get("updated_at"))
    if last is None:
        return None
    if last.tzinfo is None:
        last = last.replace(tzinfo=_dt.UTC)
    if (now - last).total_seconds() <= deadline_seconds:
        return None
    doc = {**doc, "stages": {k: dict(v) for k, v in doc["stages"].items()}}
    pending = sorted(n for n, s in doc["stages"].items() if s["state"] != COMPLETED)
    when = now.isoformat()
    doc["failure"] = {
        "stage": pending[0] if pending else None,
        "stages": pending,
        "reason": DEADLINE_EXCEEDED,
        "message": f"no progress for {deadline_seconds:g} s",
        "at": when,
    }
    doc["updated_at"] = when
    return settle(doc, when, trigger=(DEADLINE_EXCEEDED, PUBLISH, when))[0]


def redrive_stages(doc: Mapping[str, Any], dag: Mapping[str, Sequence[str]]) -> list[str]:
    """The stages a re-drive starts again: not completed, every upstream stage completed.

    That is the failed or dead-lettered stage(s), or, for a job failed at its deadline or by an
    invalid event, the stage(s) it was waiting for.
    """
    state = {name: doc["stages"].get(name, {}).get("state", PENDING) for name in dag}
    return sorted(
        name
        for name, ups in dag.items()
        if state[name] != COMPLETED and all(state.get(u) == COMPLETED for u in ups)
    )


def reset_for_redrive(doc: dict[str, Any], stages: Sequence[str], now: str) -> dict[str, Any]:
    """A copy of ``doc`` running again: ``stages`` pending, the job-level failure gone."""
    doc = {**doc, "stages": {k: dict(v) for k, v in doc["stages"].items()}}
    for name in stages:
        doc["stages"][name] = {"state": PENDING}
    doc.pop("failure", None)
    # the re-driven stages answer with the same deterministic ids as before (a failure again
    # is ``<job>/<stage>/failed`` again): forget what was seen so their answers count
    doc["seen"] = []
    doc["redriven"] = int(doc.get("redriven", 0)) + 1
    doc["redriven_at"] = doc["progress_at"] = doc["updated_at"] = now
    return settle(doc, now)[0]


def summary(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The list view: no outputs, no dead letters."""
    return {
        "job_id": doc["job_id"],
        "pipeline": doc["pipeline"],
        "study_id": doc.get("study_id", ""),
        "study_instance_uid": doc.get("study_instance_uid", ""),
        "state": doc["state"],
        "failed_stage": doc.get("failed_stage"),
        "reason": doc.get("reason"),
        "redriven": doc.get("redriven", 0),
        "created_at": doc.get("created_at"),
        "finished_at": doc.get("finished_at"),
        "stages": {
            k: {"state": v["state"], "duration_ms": v.get("duration_ms")}
            for k, v in sorted(doc["stages"].items())
        },
    }
