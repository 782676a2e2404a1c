"""The job tracker's I/O: events in, job documents in the object store, job events and JSON out.

It is a Knative Service like the operators (functions-framework ``@http``), subscribed to every
radflow job and stage event and set as the Broker's dead-letter sink. It answers:

- ``POST`` a CloudEvent: fold it into ``job-status/<job>.json`` (optimistic concurrency with
  ``If-Match``); the event that made the job final gets ``job.completed`` / ``job.failed``
  (deterministic id, one per outcome and re-drive round) as its reply when it is a stage's
  event, else that job event is published to the Broker (``K_SINK``: a dead letter, the
  deadline, a forged job request); every other event gets 202 with an empty body;
- ``GET /jobs`` (list, newest first) and ``GET /jobs/<id>`` (one job) as JSON;
- ``POST /jobs/<id>/redrive``: start a failed job again from its failed stage(s) (:func:`redrive`).

The job-level deadline is checked where a job is looked at: ``GET /jobs/<id>`` checks that job,
``GET /jobs`` and a tick event (``dev.radflow.tick.v1``, or a Knative PingSource's
``dev.knative.sources.ping``, every minute) check every running job, and fail the ones without
progress for ``job_deadline_seconds``.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import logging
from collections.abc import Mapping
from typing import Any

from radflow.functions.job_tracker import logic
from radflow.functions.job_tracker.settings import TrackerSettings
from radflow.sdk import events, http
from radflow.sdk.errors import Unavailable
from radflow.sdk.events import EventType, Ext
from radflow.sdk.manifest import StudyManifest
from radflow.sdk.pipeline import last_upstreams
from radflow.sdk.retry import retrying
from radflow.sdk.settings import StoreSettings
from radflow.sdk.storage import AlreadyExists, Keys, NotFound, ObjectStore, safe_component

logger = logging.getLogger(__name__)

STATUS_PREFIX = "job-status/"
SOURCE = "/radflow/job-tracker"
#: optimistic-concurrency attempts before answering 503 (the broker retries later)
MAX_ATTEMPTS = 25

#: an unsent job event is tried again (by a tick or a look at the job) this long after the last try
RETRY_AFTER_S = 30.0

#: the periodic events that drive the deadline sweep: radflow's own, and the type a Knative
#: PingSource sends (it cannot be overridden), so a PingSource can sink straight to the tracker
TICK_TYPES = frozenset({"dev.radflow.tick.v1", "dev.knative.sources.ping"})

Reply = tuple[bytes | str, int, dict[str, str]]


def status_key(job_id: str) -> str:
    return f"{STATUS_PREFIX}{safe_component(job_id)}.json"


@functools.cache
def _deps() -> tuple[ObjectStore, TrackerSettings]:
    return ObjectStore(StoreSettings()), TrackerSettings()


def handle(
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
    store: ObjectStore | None = None,
    settings: TrackerSettings | None = None,
) -> Reply:
    if store is None or settings is None:
        store, settings = _deps()
    if method == "GET":
        return _get(store, settings, path)
    if method != "POST":
        return ("", 405, {"Allow": "GET, POST"})
    parts = [p for p in path.split("/") if p]
    if len(parts) == 3 and parts[0] == "jobs" and parts[2] == "redrive":
        try:
            return redrive(store, settings, parts[1])
        except Unavailable as exc:
            logger.warning("job tracker: re-drive failed: %s", exc)
            return _json({"reason": "unavailable"}, 503)
    try:
        event = events.from_http(headers, body)
    except events.InvalidEvent as exc:
        return (json.dumps({"reason": exc.code}), 400, {"content-type": "application/json"})
    try:
        return _record(store, settings, event)
    except Unavailable as exc:
        logger.warning("job tracker: transient failure: %s", exc)
        return ("", 503, {"Retry-After": "1"})


def _json(doc: Any, status: int = 200) -> Reply:
    return (json.dumps(doc, sort_keys=True), status, {"content-type": "application/json"})


def _get(store: ObjectStore, settings: TrackerSettings, path: str) -> Reply:
    parts = [p for p in path.split("/") if p]
    if parts in ([], ["healthz"]):
        return _json({"status": "ok"})
    if parts == ["jobs"]:
        sweep(store, settings)
        return _json({"jobs": list_jobs(store)})
    if len(parts) == 2 and parts[0] == "jobs":
        doc = enforce_deadline(store, settings, parts[1])
        if doc is None:
            return _json({"reason": "job_not_found"}, 404)
        return _json(view(store, doc))
    return _json({"reason": "not_found"}, 404)


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def enforce_deadline(
    store: ObjectStore, settings: TrackerSettings, job_id: str
) -> dict[str, Any] | None:
    """The job's document, failed first (written back, its ``job.failed`` published) if it is
    past its deadline; an unsent job event of a final job is retried."""
    key = status_key(job_id)
    failed_now = False

    def check() -> dict[str, Any] | None:
        try:
            blob, etag = store.get_with_etag(key)
        except NotFound:
            return None
        doc: dict[str, Any] = json.loads(blob)
        late = logic.check_deadline(doc, _now(), settings.job_deadline_seconds)
        if late is None:
            return doc
        store.put_if_match(key, json.dumps(late, sort_keys=True).encode(), etag)
        nonlocal failed_now
        failed_now = True
        logger.warning(
            "job failed: deadline exceeded",
            extra={"job": job_id, "pending": late["failure"]["stages"]},
        )
        return late

    try:
        doc = retrying(attempts=MAX_ATTEMPTS, on=AlreadyExists)(check)
    except AlreadyExists:
        return read_job(store, job_id)  # busy with events: it is making progress
    if doc is not None and doc.get("state") != logic.RUNNING:
        announce(store, settings, doc, retry=not failed_now)
    return doc


def sweep(store: ObjectStore, settings: TrackerSettings) -> int:
    """Fail every running job past its deadline (publishing its ``job.failed``), publish the
    job events of final jobs not sent before; return how many were failed."""
    failed = 0
    for info in store.list(STATUS_PREFIX):
        try:
            doc = json.loads(store.get_bytes(info.key))
        except (NotFound, ValueError):
            continue
        if doc.get("state") != logic.RUNNING:
            announce(store, settings, doc)  # one that could not be published before
            continue
        after = enforce_deadline(store, settings, str(doc["job_id"]))
        failed += bool(after and after.get("reason") == logic.DEADLINE_EXCEEDED)
    return failed


def read_job(store: ObjectStore, job_id: str) -> dict[str, Any] | None:
    try:
        return dict(json.loads(store.get_bytes(status_key(job_id))))
    except NotFound:
        return None


def list_jobs(store: ObjectStore) -> list[dict[str, Any]]:
    docs = []
    for info in store.list(STATUS_PREFIX):
        try:
            docs.append(logic.summary(json.loads(store.get_bytes(info.key))))
        except (NotFound, ValueError):
            continue
    return sorted(docs, key=lambda d: (d.get("created_at") or "", d["job_id"]), reverse=True)


def view(store: ObjectStore, doc: Mapping[str, Any]) -> dict[str, Any]:
    """The detail view: outputs and logs as ``s3://`` URIs a user can fetch."""
    out = {k: v for k, v in doc.items() if k != "seen"}
    stages = {}
    for name, entry in sorted(doc["stages"].items()):
        entry = dict(entry)
        entry["outputs"] = {k: store.uri(v) for k, v in entry.get("outputs", {}).items()}
        if entry["state"] in (logic.COMPLETED, logic.FAILED):
            entry["log"] = store.uri(Keys.stage_marker(doc["job_id"], name, "log.jsonl"))
        stages[name] = entry
    out["stages"] = stages
    return out


def _record(store: ObjectStore, settings: TrackerSettings, event: events.CloudEvent) -> Reply:
    attrs = events.attributes(event)
    if attrs.get("type") in TICK_TYPES and "knativeerrorcode" not in attrs:
        sweep(store, settings)
        return ("", 202, {})
    job_id = attrs.get(Ext.JOB)
    data = event.data
    if not job_id and isinstance(data, dict):
        job_id = data.get("job_id")
    if not job_id:
        logger.info("event without a job id ignored", extra={"event_type": attrs.get("type")})
        return ("", 202, {})
    fields = data if isinstance(data, dict) else {}
    pipeline = str(attrs.get(Ext.PIPELINE) or fields.get("pipeline", ""))
    dag = settings.dags.get(pipeline)
    key = status_key(str(job_id))

    def update() -> tuple[dict[str, Any], str | None]:
        """Read, apply, write back if unchanged since the read (else AlreadyExists)."""
        try:
            blob, etag = store.get_with_etag(key)
            doc: dict[str, Any] | None = json.loads(blob)
        except NotFound:
            doc, etag = None, ""
        base = doc or logic.new_job(str(job_id), pipeline, dag)
        new, final = logic.apply(base, attrs, data, dag, now=_now().isoformat())
        if not new.get("study_instance_uid") and new["state"] != logic.FAILED:
            manifest_key = fields.get("manifest_key")
            if isinstance(manifest_key, str) and manifest_key:
                new["study_instance_uid"] = _study_uid(store, manifest_key)
        payload = json.dumps(new, sort_keys=True).encode()
        if doc is None:
            store.put_if_absent(key, payload)
        elif new != doc:
            store.put_if_match(key, payload, etag)
        return new, final

    try:
        new, _final = retrying(attempts=MAX_ATTEMPTS, on=AlreadyExists)(update)
    except AlreadyExists:
        raise Unavailable(f"job {job_id}: too many concurrent updates") from None
    owed = new.get("announcement") or {}
    if owed.get("trigger") != logic.seen_key(attrs):
        return ("", 202, {})  # not the event that finished the job (or its redelivery)
    event = job_event(new, attrs.get(Ext.TRACEPARENT))
    if owed["via"] == logic.REPLY:
        headers, body = events.to_binary(event)
        return (body, 200, headers)
    announce(store, settings, new, retry=False)
    return ("", 202, {})


def announce(
    store: ObjectStore, settings: TrackerSettings, doc: Mapping[str, Any], *, retry: bool = True
) -> bool:
    """Publish the job event ``doc`` owes (``announcement``, via ``publish``) to the broker and
    mark it sent; False (logged) when it was not sent.

    The event that failed the job publishes at once (``retry=False``; a redelivery of that
    event publishes it again, same id, unless it was marked sent). A job looked at later (a
    tick, ``GET``) retries an unsent one only ``RETRY_AFTER_S`` after the last try, taking the
    try with ``If-Match`` so two lookers never both send it: one event per failure.
    """
    owed = doc.get("announcement") or {}
    if owed.get("via") != logic.PUBLISH or owed.get("sent"):
        return True
    job_id = str(doc["job_id"])
    if retry and not _take_retry(store, job_id, str(owed["id"])):
        return False
    if not settings.broker_url:
        logger.error(
            "job event not published: no broker URL (K_SINK or RADFLOW_BROKER_URL)",
            extra={"job": job_id, "event_type": owed.get("state")},
        )
        return False
    traceparent = ((doc.get("request") or {}).get("extensions") or {}).get(Ext.TRACEPARENT)
    headers, body = events.to_binary(job_event(doc, traceparent))
    try:
        http.request("POST", settings.broker_url, body=body, headers=headers, timeout=30)
    except (http.RequestRejected, Unavailable) as exc:
        logger.error("job event not published, retried at the next tick: %s", exc)
        return False
    key = status_key(job_id)

    def mark() -> None:
        blob, etag = store.get_with_etag(key)
        current = json.loads(blob)
        if (current.get("announcement") or {}).get("id") != owed["id"]:
            return  # a later outcome replaced it
        current["announcement"] = {**current["announcement"], "sent": True}
        store.put_if_match(key, json.dumps(current, sort_keys=True).encode(), etag)

    try:
        retrying(attempts=MAX_ATTEMPTS, on=AlreadyExists)(mark)
    except (AlreadyExists, NotFound, Unavailable):
        logger.warning("job event published but not marked sent; it may be sent again")
    logger.info("job event published", extra={"job": job_id, "event_type": owed.get("state")})
    return True


def redrive(store: ObjectStore, settings: TrackerSettings, job_id: str) -> Reply:
    """Start a failed job again from the stage(s) that did not complete.

    Re-emits, with new (deterministic) ids, the events those stages consume: the stored job
    request for a first stage, else the completion event each upstream stage stored in its
    ``completed.json`` marker. The failed or dead-lettered stages' ``failed.json`` and ``claim``
    markers are removed first (a stage answers a redelivery with its stored result), and the
    job document goes back to ``running`` with ``redriven`` counted, before anything is sent:
    the stages' answers then fold into the running job. If sending fails the job stays running
    and its deadline fails it again.
    """
    doc = read_job(store, job_id)
    if doc is None:
        return _json({"reason": "job_not_found"}, 404)
    if doc["state"] != logic.FAILED:
        return _json({"reason": "job_not_failed", "state": doc["state"]}, 409)
    dag = settings.dags.get(doc["pipeline"])
    if not dag:
        return _json({"reason": "unknown_pipeline"}, 409)
    if not settings.broker_url:
        return _json({"reason": "no_broker_url"}, 503)
    stages = logic.redrive_stages(doc, dag)
    count = int(doc.get("redriven", 0)) + 1
    outgoing: dict[str, events.CloudEvent] = {}
    for stage in stages:
        for original in _consumed_events(store, doc, dag, stage):
            new_id = events.deterministic_id(str(original["id"]), "redrive", str(count))
            outgoing.setdefault(new_id, _re_emit(original, new_id))
    if not outgoing:
        return _json({"reason": "nothing_to_redrive", "stages": stages}, 409)
    for stage in stages:
        # only a stage that ended badly: a pending one may be running or done right now
        if doc["stages"].get(stage, {}).get("state") in (logic.FAILED, logic.DEAD_LETTERED):
            for marker in ("failed.json", "claim"):
                store.delete(Keys.stage_marker(job_id, stage, marker))
    key = status_key(job_id)

    def reset() -> None:
        blob, etag = store.get_with_etag(key)
        current = json.loads(blob)
        if current["state"] != logic.FAILED:
            return  # another re-drive won
        new = logic.reset_for_redrive(current, stages, _now().isoformat())
        store.put_if_match(key, json.dumps(new, sort_keys=True).encode(), etag)

    try:
        retrying(attempts=MAX_ATTEMPTS, on=AlreadyExists)(reset)
    except AlreadyExists:
        raise Unavailable(f"job {job_id}: too many concurrent updates") from None
    for event in outgoing.values():
        headers, body = events.to_binary(event)
        try:
            http.request("POST", settings.broker_url, body=body, headers=headers, timeout=30)
        except http.RequestRejected as exc:
            logger.error("job re-drive: the broker refused an event: %s", exc)
            return _json({"reason": "broker_refused", "status": exc.status}, 502)
    logger.info("job re-driven", extra={"job": job_id, "stages": stages, "redriven": count})
    return _json({"job_id": job_id, "stages": stages, "events": len(outgoing), "redriven": count})


def _consumed_events(
    store: ObjectStore, doc: Mapping[str, Any], dag: Mapping[str, Any], stage: str
) -> list[events.CloudEvent]:
    """The events ``stage`` consumes: the job request, or the completion of each of its last
    upstream stages (those its Triggers subscribe; one, with its join attribute, for a fan-in
    stage)."""
    if not dag[stage]:
        req = doc.get("request")
        if not req:
            return []
        return [
            events.make_event(
                req["type"],
                req["source"],
                req["data"],
                id=req["id"],
                subject=req.get("subject"),
                extensions=req["extensions"],
            )
        ]
    found = []
    last = last_upstreams(dag, stage)
    for up in last:
        try:
            marker = json.loads(
                store.get_bytes(Keys.stage_marker(doc["job_id"], up, "completed.json"))
            )
        except NotFound:
            continue
        event = events.from_json(json.dumps(marker["event"]).encode())
        if len(last) > 1:
            # a fan-in stage's Triggers wait for its join attribute (every upstream completed,
            # as a re-driven stage's are): one completion, so it is woken once
            return [
                events.with_attributes(event, **{events.join_attribute(stage): events.JOIN_READY})
            ]
        found.append(event)
    return found


#: attributes a re-emitted event gets anew (the broker sets its own on ingress)
_FRESH = frozenset(
    {"id", "time", "specversion", "datacontenttype", "knativebrokerttl", "knativearrivaltime"}
)


def _re_emit(original: events.CloudEvent, new_id: str) -> events.CloudEvent:
    attrs = events.attributes(original)
    core = {"type", "source", "subject", "dataschema"}
    ext = {k: str(v) for k, v in attrs.items() if k not in _FRESH and k not in core}
    return events.make_event(
        str(attrs["type"]),
        str(attrs["source"]),
        original.data if isinstance(original.data, dict) else {},
        id=new_id,
        subject=attrs.get("subject"),
        extensions=ext,
    )


def _study_uid(store: ObjectStore, manifest_key: str) -> str:
    """The StudyInstanceUID, for `radflow jobs` (UIDs stay in S3 documents, never in events)."""
    try:
        return StudyManifest.model_validate_json(store.get_bytes(manifest_key)).study_instance_uid
    except (NotFound, ValueError):
        return ""


def _take_retry(store: ObjectStore, job_id: str, event_id: str) -> bool:
    """Whether this caller may send the unsent job event ``event_id`` now (its last try is
    ``RETRY_AFTER_S`` old; the new try's time is written with ``If-Match``)."""
    key = status_key(job_id)
    try:
        blob, etag = store.get_with_etag(key)
    except NotFound:
        return False
    current = json.loads(blob)
    owed = current.get("announcement") or {}
    if owed.get("id") != event_id or owed.get("sent"):
        return False
    last = logic.parse_time(owed.get("at"))
    now = _now()
    if last is not None and (now - last).total_seconds() < RETRY_AFTER_S:
        return False
    current["announcement"] = {**owed, "at": now.isoformat()}
    try:
        store.put_if_match(key, json.dumps(current, sort_keys=True).encode(), etag)
    except AlreadyExists:
        return False  # changed since: somebody else tries, or the job moved on
    return True


def job_event(doc: Mapping[str, Any], traceparent: Any = None) -> events.CloudEvent:
    """The ``job.completed``/``job.failed`` event ``doc`` announces (its id is the
    announcement's: one per outcome and re-drive round)."""
    final = str(doc["announcement"]["state"])
    etype = EventType.JOB_COMPLETED if final == logic.COMPLETED else EventType.JOB_FAILED
    ext = {Ext.JOB: doc["job_id"], Ext.PIPELINE: doc["pipeline"]}
    if traceparent:
        ext[Ext.TRACEPARENT] = str(traceparent)
    failed = final == logic.FAILED
    return events.make_event(
        etype,
        SOURCE,
        events.JobFinished(
            job_id=doc["job_id"],
            pipeline=doc["pipeline"],
            study_id=doc.get("study_id", ""),
            stages=sorted(doc["stages"]),
            failed_stage=doc.get("failed_stage") if failed else None,
            reason=doc.get("reason") if failed else None,
        ),
        id=str(doc["announcement"]["id"]),
        subject=doc.get("study_id") or None,
        extensions=ext,
    )
