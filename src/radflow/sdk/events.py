"""CloudEvents: the only module that imports ``cloudevents`` (v1 API, <= 1.12).

functions-framework 3.10.2 pins ``cloudevents<=1.12``, whose API lives in ``cloudevents.http``;
keeping every import here means a later move to the 2.x API touches one file.

Event types are small, versioned, past-tense facts that point at data in the object store
(``dataref``) and carry no PHI: opaque ids, counts, keys and reason codes only. Each stage
replies with a type different from the one it consumes, so a reply never matches its own
Trigger. Extension attributes follow Knative's stricter name rule ``^[a-z][a-z0-9]*$``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, TypeVar

import cloudevents.exceptions
from cloudevents.conversion import to_binary as _to_binary
from cloudevents.conversion import to_structured as _to_structured
from cloudevents.http import CloudEvent
from cloudevents.http import from_http as _from_http
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from radflow.sdk.errors import InvalidInput

__all__ = [
    "CloudEvent",
    "EventType",
    "Ext",
    "InvalidEvent",
    "JobRequested",
    "StageCompleted",
    "StageFailed",
    "JobFinished",
    "attributes",
    "deterministic_id",
    "from_http",
    "from_json",
    "job_id_for",
    "make_event",
    "parse_payload",
    "to_binary",
    "to_json",
    "to_structured",
]

#: UUID namespace for every deterministic id radflow derives (event ids, job ids, study ids).
RADFLOW_NAMESPACE = uuid.UUID("6f1b2c44-8a53-5f0e-9d8e-2f6a4f7e9a10")

ATTRIBUTE_NAME = re.compile(r"^[a-z][a-z0-9]*$")


class EventType(StrEnum):
    """Every event type radflow emits. Consumers filter on these exact values."""

    #: the adapter closed a group of instances and requests one job of one pipeline
    STUDY_RECEIVED = "dev.radflow.study.received.v1"
    #: instances arrived for a group that was already emitted: a revision of the same study
    STUDY_REVISED = "dev.radflow.study.revised.v1"
    #: one pipeline stage (operator) finished and uploaded its outputs
    STAGE_COMPLETED = "dev.radflow.stage.completed.v1"
    #: one pipeline stage failed permanently (not retried)
    STAGE_FAILED = "dev.radflow.stage.failed.v1"
    #: every stage of a job's DAG completed
    JOB_COMPLETED = "dev.radflow.job.completed.v1"
    #: a job cannot complete because a stage failed permanently
    JOB_FAILED = "dev.radflow.job.failed.v1"


class Ext:
    """Extension attribute names (Knative filter-safe, <= 20 characters)."""

    JOB = "radflowjob"
    PIPELINE = "radflowpipeline"
    STAGE = "radflowstage"
    DATAREF = "dataref"
    TRACEPARENT = "traceparent"


def join_attribute(stage: str) -> str:
    """The extension a stage's completion carries when it completed the inputs of fan-in
    ``stage`` (every upstream of ``stage`` has completed): ``radflowjoin`` + 8 hex digits of
    the stage name's SHA-256, a filter-safe name of 19 characters. The value is ``"ready"``.

    A fan-in stage's Triggers filter on it, so the stage is woken once per job, when its inputs
    are complete, not once per upstream stage (docs/pipelines.md, "Fan-in").
    """
    return "radflowjoin" + hashlib.sha256(stage.encode()).hexdigest()[:8]


#: the value of a :func:`join_attribute`
JOIN_READY = "ready"


class InvalidEvent(InvalidInput):
    """An HTTP request that is not a valid CloudEvent (answer 400)."""

    code = "invalid_event"


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class JobRequested(_Payload):
    """Data of ``study.received`` / ``study.revised``: one job of one pipeline for one group."""

    job_id: str = Field(description="Deterministic: group, pipeline and revision.")
    pipeline: str = Field(description="Pipeline id (its name).")
    study_id: str = Field(description="Opaque study id (uuid5 of StudyInstanceUID).")
    group_id: str = Field(description="Opaque id of the instance group.")
    revision: int = Field(0, ge=0, description="0 for the first group, +1 per revision.")
    manifest_key: str = Field(description="Object key of the study manifest JSON.")
    instance_count: int = Field(ge=0)
    called_ae: str = Field(description="The Clara AE title the study was sent to.")

    def identity_problem(self) -> str | None:
        """Why this request is not the job it names (a forged or corrupted event), or None.

        A job's identity is its study content: :func:`job_id_for` of its instance group,
        pipeline and revision. An event id is only the identity of one delivery attempt, so a
        replay under a new ``ce-id`` still names the same job (whose stages answer with their
        stored results), and a request whose ``job_id`` is not derived from its content is
        refused. The message names the fields, never their values.
        """
        if self.job_id != job_id_for(self.group_id, self.pipeline, self.revision):
            return "job_id is not the id of its (group_id, pipeline, revision)"
        return None


class StageCompleted(_Payload):
    """Data of ``stage.completed``: where a stage's named outputs are."""

    job_id: str
    pipeline: str
    stage: str
    outputs: dict[str, str] = Field(default_factory=dict, description="output name -> key prefix")
    file_count: int = 0
    duration_ms: float = 0.0
    summary: dict[str, Any] = Field(default_factory=dict, description="PHI-free operator summary")


class StageFailed(_Payload):
    """Data of ``stage.failed``: a permanent failure with a reason code."""

    job_id: str
    pipeline: str
    stage: str
    reason: str = Field(description="snake_case reason code")
    message: str = Field("", description="PHI-free explanation naming the field or rule")


class JobFinished(_Payload):
    """Data of ``job.completed`` / ``job.failed``."""

    job_id: str
    pipeline: str
    study_id: str = ""
    stages: list[str] = Field(default_factory=list)
    failed_stage: str | None = None
    reason: str | None = None


P = TypeVar("P", bound=BaseModel)


def deterministic_id(*parts: str) -> str:
    """A UUID5 under radflow's namespace: the same parts always give the same id."""
    return str(uuid.uuid5(RADFLOW_NAMESPACE, "\x1f".join(parts)))


def job_id_for(group_id: str, pipeline: str, revision: int) -> str:
    """A job's id: derived from its instance group, pipeline and revision, never an event id."""
    return deterministic_id(group_id, pipeline, str(revision))


def make_event(
    type: str,
    source: str,
    data: BaseModel | Mapping[str, Any] | None,
    *,
    id: str | None = None,
    subject: str | None = None,
    extensions: Mapping[str, str] | None = None,
    time: _dt.datetime | None = None,
) -> CloudEvent:
    """Build an event with JSON data. ``datacontenttype`` is always set (see Knative §9)."""
    attrs: dict[str, Any] = {
        "type": str(type),
        "source": source,
        "id": id or str(uuid.uuid4()),
        "specversion": "1.0",
        "datacontenttype": "application/json",
        "time": (time or _dt.datetime.now(_dt.UTC)).isoformat(),
    }
    if subject:
        attrs["subject"] = subject
    for name, value in (extensions or {}).items():
        if not ATTRIBUTE_NAME.match(name):
            raise ValueError(
                f"extension attribute {name!r} does not match {ATTRIBUTE_NAME.pattern}"
            )
        attrs[name] = value
    body = data.model_dump(mode="json") if isinstance(data, BaseModel) else data
    return CloudEvent(attrs, body)


def attributes(event: CloudEvent) -> dict[str, Any]:
    """Every context attribute of ``event`` (core and extensions), as a new dict."""
    return dict(event.get_attributes())


def parse_payload(event: CloudEvent, model: type[P]) -> P:
    """Validate ``event.data`` as ``model``; the error names the fields, never their values."""
    data = event.data
    if isinstance(data, (bytes, str)):
        try:
            data = json.loads(data)
        except ValueError:
            raise InvalidEvent(f"event {event['id']}: data is not JSON") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<data>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise InvalidEvent(
            f"event {event['id']}: data is not a valid {model.__name__}: {problems}"
        ) from None


def from_http(headers: Mapping[str, str], body: bytes | None) -> CloudEvent:
    """Decode a binary- or structured-mode request; raises :class:`InvalidEvent`."""
    try:
        event = _from_http(dict(headers), body)
    except cloudevents.exceptions.GenericException as exc:
        raise InvalidEvent(f"not a valid CloudEvent: {type(exc).__name__}: {exc}") from None
    for name in ("id", "source", "type"):
        if not event.get(name):
            raise InvalidEvent(f"not a valid CloudEvent: required attribute {name!r} is empty")
    return event


def to_binary(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    """Binary mode: attributes as ``ce-*`` headers, the data as the body."""
    headers, body = _to_binary(event)
    return dict(headers), body or b""


def to_structured(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    """Structured mode: the whole event as ``application/cloudevents+json``."""
    headers, body = _to_structured(event)
    return dict(headers), body


def to_json(event: CloudEvent) -> bytes:
    """The structured JSON form, for durable storage (queues, outboxes, dead letters)."""
    return to_structured(event)[1]


def from_json(blob: bytes) -> CloudEvent:
    """Inverse of :func:`to_json`."""
    return from_http({"content-type": "application/cloudevents+json"}, blob)


def with_attributes(event: CloudEvent, **changes: Any) -> CloudEvent:
    """A copy of ``event`` with attributes set (value ``None`` removes an extension)."""
    attrs = attributes(event)
    for name, value in changes.items():
        if value is None:
            attrs.pop(name, None)
        else:
            attrs[name] = value
    return CloudEvent(attrs, event.data)
