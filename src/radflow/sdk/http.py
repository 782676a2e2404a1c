"""The one synchronous HTTP client for radflow's own services, on urllib3.

Why one: the CLI, the adapter's outbox, the engine's readiness probes and the job readers
talk to radflow's own services (the engine's control server, the adapter's REST API, the
broker ingress, the job tracker, SeaweedFS and Triton while they start). Each used to call the
standard library's ``urlopen`` with its own idea of what a failure is. Here a failure is one of
radflow's errors (:mod:`radflow.sdk.errors`), so callers decide on the kind, not on exception
classes of a transport:

- no answer (connection refused or reset, name not resolved, timeout) or a 5xx answer:
  :class:`ServiceUnavailable`, an :class:`~radflow.sdk.errors.Unavailable`: try again later;
- any other answer that is not 2xx (a 4xx): :class:`RequestRejected`, an
  :class:`~radflow.sdk.errors.InvalidInput`: the request is wrong and will stay wrong.

Both carry ``status`` (``None`` without an answer), ``body`` (the answer decoded: JSON if it is
JSON, else text), ``detail`` (``"[Errno 111] Connection refused"``, ``"answered 404: ..."``) and
``reason``, a short cause without identifiers (``"HTTP 503"``, ``"ConnectionRefusedError"``)
for logs and persisted retry records.

One attempt per call, no redirects followed: the callers own their schedules (the outbox's
persisted backoff, the readiness deadlines). Async engine code (broker dispatcher, function
host) keeps aiohttp's client session; this module is for synchronous callers. The S3 transport
(:mod:`radflow.sdk.storage`) signs its requests and keeps its own pool.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import urllib3

from radflow.sdk.errors import InvalidInput, Unavailable

#: seconds for the connection and for each read (as ``urlopen``'s ``timeout`` was)
DEFAULT_TIMEOUT = 10.0


class ServiceUnavailable(Unavailable):
    """No answer (refused, reset, unresolved, timed out) or a 5xx answer: retry later."""

    def __init__(
        self, target: str, detail: str, *, reason: str, status: int | None = None, body: Any = None
    ) -> None:
        super().__init__(f"{target}: {detail}")
        self.detail = detail
        self.reason = reason
        self.status = status
        self.body = body


class RequestRejected(InvalidInput):
    """A non-2xx answer that is not a 5xx (a 4xx): the request is wrong; do not retry it."""

    code = "request_rejected"

    def __init__(self, target: str, detail: str, *, status: int, body: Any = None) -> None:
        super().__init__(f"{target}: {detail}")
        self.detail = detail
        self.reason = f"HTTP {status}"
        self.status = status
        self.body = body


@dataclass(frozen=True)
class Response:
    """A 2xx answer, read in full."""

    status: int
    headers: Mapping[str, str]
    data: bytes

    def json(self) -> Any:
        """The body as JSON (``None`` for an empty body)."""
        return json.loads(self.data or b"null")


def _new_pool() -> urllib3.PoolManager:
    return urllib3.PoolManager(num_pools=16, maxsize=4, retries=False)


_pool = _new_pool()


def _reset_pool_in_child() -> None:
    # a forked child (receiver processes, prewarmed functions) must not share pooled sockets
    global _pool
    _pool = _new_pool()


os.register_at_fork(after_in_child=_reset_pool_in_child)


def request(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    json_body: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Response:
    """Send one request; the 2xx answer, or :class:`ServiceUnavailable` / :class:`RequestRejected`.

    ``json_body`` (when not ``None``) is sent as ``application/json`` instead of ``body``.
    """
    sent_headers = dict(headers or {})
    if json_body is not None:
        body = json.dumps(json_body).encode()
        sent_headers.setdefault("Content-Type", "application/json")
    try:
        resp = _pool.request(
            method,
            url,
            body=body,
            headers=sent_headers,
            timeout=urllib3.Timeout(connect=timeout, read=timeout),
            redirect=False,
            retries=False,
        )
    except urllib3.exceptions.LocationValueError:
        raise InvalidInput(f"not a usable URL: {url!r}") from None
    except urllib3.exceptions.HTTPError as exc:
        cause = _cause(exc)
        raise ServiceUnavailable(
            f"{method} {url}", str(cause) or type(cause).__name__, reason=_reason(exc, cause)
        ) from exc
    if 200 <= resp.status < 300:
        return Response(resp.status, dict(resp.headers), resp.data)
    answer = _decode(resp.data)
    said = answer.get("error", answer) if isinstance(answer, dict) else answer
    detail = f"answered {resp.status}: {said}"
    if resp.status >= 500:
        raise ServiceUnavailable(
            f"{method} {url}", detail, reason=f"HTTP {resp.status}", status=resp.status, body=answer
        )
    raise RequestRejected(f"{method} {url}", detail, status=resp.status, body=answer)


def get_json(url: str, *, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """GET ``url`` and decode its JSON answer."""
    return request("GET", url, timeout=timeout).json()


def post_json(url: str, body: Any, *, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """POST ``body`` as JSON to ``url`` and decode its JSON answer."""
    return request("POST", url, json_body=body, timeout=timeout).json()


def probe(url: str, *, timeout: float = 1.0) -> int | None:
    """The status a GET of ``url`` answers, whatever it is; ``None`` when nothing answers.

    For readiness waits: a server that answers at all (even 403 or 503) is listening.
    """
    try:
        return request("GET", url, timeout=timeout).status
    except (ServiceUnavailable, RequestRejected) as exc:
        return exc.status


def _cause(exc: BaseException) -> BaseException:
    """The socket-level error under urllib3's wrappers (``ConnectionRefusedError``, ...)."""
    seen: BaseException = exc
    while isinstance(seen, urllib3.exceptions.HTTPError):
        inner = seen.__cause__ or seen.__context__
        if inner is None and isinstance(seen, urllib3.exceptions.ProtocolError):
            inner = next((a for a in seen.args if isinstance(a, BaseException)), None)
        if inner is None:
            break
        seen = inner
    return seen


def _reason(exc: BaseException, cause: BaseException) -> str:
    # (urllib3's NewConnectionError is a ConnectTimeoutError too: decide on the cause)
    if isinstance(cause, TimeoutError) or (
        cause is exc and isinstance(exc, urllib3.exceptions.TimeoutError)
    ):
        return "TimeoutError"
    return type(cause).__name__


def _decode(data: bytes) -> Any:
    try:
        return json.loads(data or b"null")
    except ValueError:
        return data.decode("utf-8", "replace")[:200]
