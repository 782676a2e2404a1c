"""Pure delivery rules: how a subscriber's answer is classified, TTL, dead-letter attributes.

All of it follows the MT broker as described in knative-contracts.md §1, §3 and §4.4; nothing
here does I/O, so every rule is unit-tested directly.
"""

from __future__ import annotations

import base64
import datetime as _dt
import enum
from collections.abc import Iterable, Mapping
from typing import Any

#: ``knativebrokerttl`` given to an event that arrives without one (MT ``MAX_TTL``)
MAX_TTL = 255
TTL_ATTR = "knativebrokerttl"
ARRIVAL_ATTR = "knativearrivaltime"
ERROR_DEST = "knativeerrordest"
ERROR_CODE = "knativeerrorcode"
ERROR_DATA = "knativeerrordata"
ERROR_DATA_LIMIT = 1024

#: status codes the data-plane spec says to retry (plus every 5xx)
RETRYABLE = frozenset({404, 408, 409, 429})

_PASS_PREFIXES = ("knative-", "x-b3-")
_PASS_EXACT = frozenset({"x-request-id", "retry-after"})


_STRING_ATTRIBUTES = (
    "id",
    "source",
    "type",
    "specversion",
    "subject",
    "datacontenttype",
    "dataschema",
)


def attribute_problem(attrs: Mapping[str, Any]) -> str | None:
    """What ``event.Validate()`` in the Go SDK would reject that the Python v1 SDK lets through.

    Names the attribute and the rule, never the value. None when the attributes are fine.
    """
    for name in _STRING_ATTRIBUTES:
        value = attrs.get(name)
        if value is not None and not isinstance(value, str):
            return f"attribute {name!r} must be a string"
    moment = attrs.get("time")
    if moment is not None:
        try:
            _dt.datetime.fromisoformat(str(moment).replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            return "attribute 'time' must be an RFC 3339 timestamp"
    return None


class Kind(enum.Enum):
    SUCCESS = "success"  # 2xx, empty or ignorable body
    REPLY = "reply"  # 2xx carrying a CloudEvent
    RETRY = "retry"  # retryable failure (404/408/409/429/5xx/transport/timeout/non-CE body)
    FAIL = "fail"  # permanent failure: straight to the dead-letter sink


def pass_through(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The headers a broker forwards: ``x-request-id``, ``retry-after``, ``knative-*``,
    ``x-b3-*``."""
    kept: dict[str, str] = {}
    for name, value in headers:
        low = name.lower()
        if low in _PASS_EXACT or low.startswith(_PASS_PREFIXES):
            kept[low] = value
    return kept


def is_cloudevent_response(headers: Mapping[str, str]) -> bool:
    """MT's test for a reply: a ``ce-specversion`` header or an ``application/cloudevents`` type."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if "ce-specversion" in lowered:
        return True
    return lowered.get("content-type", "").strip().lower().startswith("application/cloudevents")


def classify_status(status: int) -> Kind:
    """Outcome class for a status code alone (2xx -> SUCCESS; the body decides REPLY/RETRY)."""
    if 200 <= status < 300:
        return Kind.SUCCESS
    if status in RETRYABLE or 500 <= status < 600:
        return Kind.RETRY
    return Kind.FAIL


def classify(status: int, headers: Mapping[str, str], body: bytes) -> tuple[Kind, int]:
    """Outcome and effective status code of one attempt.

    A 2xx with a CloudEvent is a reply (the code is ignored, as MT and Kafka do); a 2xx with a
    non-empty body that is not a CloudEvent is a failure reported as 502 and retried (§0.1).
    """
    kind = classify_status(status)
    if kind is not Kind.SUCCESS:
        return kind, status
    if is_cloudevent_response(headers):
        return Kind.REPLY, status
    if body:
        return Kind.RETRY, 502
    return Kind.SUCCESS, status


def next_ttl(current: Any) -> int:
    """TTL after one ingress pass: ``MAX_TTL`` when absent, else one less (floor 0).

    Raises ValueError when the attribute is not an integer; the caller answers 400 for <= 0.
    """
    if current is None or current == "":
        return MAX_TTL
    ttl = int(str(current).strip())
    return max(ttl - 1, 0)


def arrival_time(now: _dt.datetime | None = None) -> str:
    """``knativearrivaltime``: RFC 3339 UTC with sub-second precision."""
    moment = (now or _dt.datetime.now(_dt.UTC)).astimezone(_dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def error_data(body: bytes) -> str:
    """``knativeerrordata``: base64 of the response body, the base64 text cut to 1024 chars (MT)."""
    return base64.b64encode(body).decode("ascii")[:ERROR_DATA_LIMIT]


def error_attributes(dest: str, code: int, body: bytes) -> dict[str, Any]:
    """Extensions added to the original event when it is dead-lettered."""
    attrs: dict[str, Any] = {ERROR_DEST: dest, ERROR_CODE: int(code)}
    if body:
        attrs[ERROR_DATA] = error_data(body)
    return attrs
