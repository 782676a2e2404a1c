"""Structured, correlated, PHI-free logging.

Libraries only ``logging.getLogger(__name__)``; composition roots call
:func:`configure_logging` once. Each line is one JSON object carrying the fields bound with
:func:`bind` (job id, stage, W3C trace id, event id). Never pass datasets, headers, bodies or
DICOM attribute values to a log call: name the tag or field instead.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as _dt
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

# never mutated in place: bind() sets a new mapping, so an immutable empty default is safe
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "radflow_log_context", default=MappingProxyType({})
)

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


@contextlib.contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every log line written inside the block (this thread/task only)."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def trace_id(traceparent: str | None) -> str | None:
    """The trace id of a W3C ``traceparent`` (``00-<trace>-<span>-<flags>``), if well formed."""
    if not traceparent:
        return None
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _dt.datetime.fromtimestamp(record.created, _dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "severity": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_context.get())
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


#: keys of a JSON log line that :func:`render_line` shows in its fixed columns, not as ``k=v``
_COLUMNS = ("time", "severity", "service", "logger", "message", "exception")


def render_line(line: str) -> str:
    """One JSON log line (:class:`JsonFormatter`) as text for a terminal.

    ``{"time": "...T18:02:11.123+00:00", "severity": "INFO", "service": "dicom-adapter",
    "message": "stored", "count": 12}`` becomes ``18:02:11 INFO  dicom-adapter  stored
    (count=12)``: the local wall-clock time, the level, the service, the message and the other
    fields as ``key=value``; an exception follows on its own lines. A line that is not a JSON
    object (a child's own output) is returned unchanged.
    """
    try:
        doc = json.loads(line)
    except ValueError:
        return line
    if not isinstance(doc, dict) or "message" not in doc:
        return line
    try:
        when = _dt.datetime.fromisoformat(str(doc.get("time"))).astimezone().strftime("%H:%M:%S")
    except ValueError:
        when = "--:--:--"
    text = f"{when} {str(doc.get('severity', '')):<5} {doc.get('service', '-')}  {doc['message']}"
    fields = [f"{k}={v}" for k, v in doc.items() if k not in _COLUMNS]
    if fields:
        text += f" ({' '.join(fields)})"
    if doc.get("exception"):
        text += "\n" + str(doc["exception"])
    return text


class TextFormatter(JsonFormatter):
    """The same record as :class:`JsonFormatter`, rendered by :func:`render_line`: what a
    terminal shows (``radflow up`` in the foreground, ``log_format: text``)."""

    def format(self, record: logging.LogRecord) -> str:
        return render_line(super().format(record))


def configure_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    """Configure the root logger once for this process (stderr, JSON lines by default;
    ``fmt="text"``: :func:`render_line`'s readable lines)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else TextFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pynetdicom logs identifiers of requests at debug level; radflow never does
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, root.level))
    for noisy in ("botocore", "urllib3", "s3transfer", "werkzeug", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
