"""REST API compatible with Clara DICOM Adapter's ``/api/config/*`` plus health endpoints.

=========================================  =================================================
``GET /api/config/claraaetitle[/name]``    list / one (404 if unknown)
``POST /api/config/claraaetitle``          Clara body -> 201 + entity; 400 invalid/duplicate/
                                           a pipeline the engine does not run
``DELETE /api/config/claraaetitle/name``   200 + deleted entity; 404 if unknown
same for ``sourceaetitle`` and ``destinationaetitle``
``GET /health/live``, ``/health/ready``    200 / 503 (ready = listening, store reachable)
``GET /health/status``                     counters (no identifiers)
``GET /metrics``                            Prometheus text (adapter/metrics.py)
=========================================  =================================================

Route prefixes are matched case-insensitively (Clara's examples use ``/api/config/ClaraAeTitle/``).
Served by aiohttp on its own loop in a thread, like every radflow server
(:mod:`radflow.sdk.httpserver`); unsupported methods get 501, PUT 405, as before.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from radflow.adapter import config as cfgmod
from radflow.adapter.config import AdapterConfig
from radflow.adapter.configstore import ConfigStore
from radflow.sdk.errors import InvalidInput
from radflow.sdk.httpserver import ThreadedServer
from radflow.sdk.metrics import CONTENT_TYPE

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
SERVER = "radflow-dicom-adapter"


class NotFoundError(Exception):
    pass


# -- pure edits of the configuration -----------------------------------------------------------


def add_clara_ae(cfg: AdapterConfig, body: Any) -> tuple[AdapterConfig, dict[str, Any]]:
    ae, mappings = cfgmod.clara_ae_from_rest(body)
    if any(a.name == ae.name for a in cfg.ae_titles):
        raise InvalidInput(f"Clara AE title named {ae.name!r} already exists")
    if cfg.ae(ae.ae_title) is not None:
        raise InvalidInput(f"AE title {ae.ae_title!r} is already served")
    if any(m.name in {x.name for x in cfg.pipeline_mappings} for m in mappings):
        raise InvalidInput("a pipeline mapping with the same name already exists")
    new = _revalidate(
        cfg, ae_titles=(*cfg.ae_titles, ae), pipeline_mappings=(*cfg.pipeline_mappings, *mappings)
    )
    return new, cfgmod.clara_ae_to_rest(ae, new)


def check_pipelines(body: Any, known: frozenset[str] | None) -> None:
    """Refuse a Clara AE title body that maps to a pipeline the engine does not run: its jobs
    would be events no Trigger matches, lost without a word."""
    if known is None:
        return
    _, mappings = cfgmod.clara_ae_from_rest(body)
    for m in mappings:
        if m.pipeline_id not in known:
            raise InvalidInput(
                f"unknown pipeline {m.pipeline_id!r}: the engine runs "
                f"{', '.join(sorted(known)) or 'no pipeline'}"
            )


def delete_clara_ae(cfg: AdapterConfig, name: str) -> tuple[AdapterConfig, dict[str, Any]]:
    ae = next((a for a in cfg.ae_titles if a.name == name), None)
    if ae is None:
        raise NotFoundError(name)
    entity = cfgmod.clara_ae_to_rest(ae, cfg)
    new = _revalidate(
        cfg,
        ae_titles=tuple(a for a in cfg.ae_titles if a.name != name),
        pipeline_mappings=tuple(
            m for m in cfg.pipeline_mappings if m.clara_ae_title != ae.ae_title
        ),
    )
    return new, entity


def add_source(cfg: AdapterConfig, body: Any) -> tuple[AdapterConfig, dict[str, Any]]:
    src = cfgmod.source_from_rest(body)
    if any(s.name == src.name for s in cfg.sources):
        raise InvalidInput(f"source named {src.name!r} already exists")
    if any((s.ae_title, s.host_ip) == (src.ae_title, src.host_ip) for s in cfg.sources):
        raise InvalidInput(f"source {src.ae_title!r} at {src.host_ip} already exists")
    return _revalidate(cfg, sources=(*cfg.sources, src)), cfgmod.source_to_rest(src)


def delete_source(cfg: AdapterConfig, name: str) -> tuple[AdapterConfig, dict[str, Any]]:
    src = next((s for s in cfg.sources if s.name == name), None)
    if src is None:
        raise NotFoundError(name)
    return _revalidate(
        cfg, sources=tuple(s for s in cfg.sources if s.name != name)
    ), cfgmod.source_to_rest(src)


def add_destination(cfg: AdapterConfig, body: Any) -> tuple[AdapterConfig, dict[str, Any]]:
    dst = cfgmod.destination_from_rest(body)
    if any(d.name == dst.name for d in cfg.destinations):
        raise InvalidInput(f"destination named {dst.name!r} already exists")
    return _revalidate(cfg, destinations=(*cfg.destinations, dst)), cfgmod.destination_to_rest(dst)


def delete_destination(cfg: AdapterConfig, name: str) -> tuple[AdapterConfig, dict[str, Any]]:
    dst = next((d for d in cfg.destinations if d.name == name), None)
    if dst is None:
        raise NotFoundError(name)
    new = _revalidate(cfg, destinations=tuple(d for d in cfg.destinations if d.name != name))
    return new, cfgmod.destination_to_rest(dst)


def _revalidate(cfg: AdapterConfig, **changes: Any) -> AdapterConfig:
    try:
        return AdapterConfig.model_validate({**dict(cfg), **changes})
    except ValueError as exc:
        raise InvalidInput(f"configuration would be invalid: {exc}") from None


_RESOURCES: dict[
    str,
    tuple[Callable[..., Any], Callable[..., Any], Callable[[AdapterConfig], list[dict[str, Any]]]],
] = {
    "claraaetitle": (
        add_clara_ae,
        delete_clara_ae,
        lambda c: [cfgmod.clara_ae_to_rest(a, c) for a in c.ae_titles],
    ),
    "sourceaetitle": (
        add_source,
        delete_source,
        lambda c: [cfgmod.source_to_rest(s) for s in c.sources],
    ),
    "destinationaetitle": (
        add_destination,
        delete_destination,
        lambda c: [cfgmod.destination_to_rest(d) for d in c.destinations],
    ),
}


class RestApi:
    """The HTTP server; ``ready`` and ``status`` are callables supplied by the composition root.

    An aiohttp application in its own thread (:class:`radflow.sdk.httpserver.ThreadedServer`),
    like every radflow server. Each request is dispatched in a worker thread: configuration
    changes write to the object store, and health checks must keep answering meanwhile.
    """

    def __init__(
        self,
        store: ConfigStore,
        *,
        ready: Callable[[], bool],
        status: Callable[[], dict[str, Any]],
        known_pipelines: frozenset[str] | None = None,
        metrics: Callable[[], bytes] | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.known_pipelines = known_pipelines
        self.ready = ready
        self.status = status
        self._server = ThreadedServer(self._app, name="rest-api")

    def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (``OSError`` if it is taken); returns the bound port."""
        return self._server.start(host, port)

    def stop(self) -> None:
        self._server.stop()

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()

        def read_body() -> bytes:
            return asyncio.run_coroutine_threadsafe(request.read(), loop).result()

        if request.method == "GET" and request.path == "/metrics" and self.metrics is not None:
            text = await asyncio.to_thread(self.metrics)
            return web.Response(body=text, headers={"Content-Type": CONTENT_TYPE, "Server": SERVER})
        if request.method in ("GET", "POST", "DELETE"):
            status, body = await asyncio.to_thread(
                self._dispatch, request.method, request.raw_path, request.headers, read_body
            )
        elif request.method == "PUT":
            status, body = 405, {"error": "method not allowed; use DELETE then POST"}
        else:
            status, body = 501, {"error": f"unsupported method {request.method}"}
        response = web.json_response(body, status=status)
        response.headers["Server"] = SERVER
        return response

    def _dispatch(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        read_body: Callable[[], bytes],
    ) -> tuple[int, Any]:
        path = target.split("?", 1)[0].rstrip("/")
        parts = path.split("/")
        lowered = [p.lower() for p in parts]
        try:
            if lowered[:2] == ["", "health"] and len(parts) == 3 and method == "GET":
                return self._health(lowered[2])
            if (
                lowered[:3] != ["", "api", "config"]
                or len(parts) not in (4, 5)
                or lowered[3] not in _RESOURCES
            ):
                return 404, {"error": f"no such endpoint: {method} {path or '/'}"}
            add, delete, listing = _RESOURCES[lowered[3]]
            name = parts[4] if len(parts) == 5 else None
            cfg = self.store.current()
            if method == "GET":
                items = listing(cfg)
                if name is None:
                    return 200, items
                found = next((i for i in items if i.get("name") == name), None)
                return (200, found) if found else (404, {"error": f"{name!r} not found"})
            if method == "POST" and name is None:
                body = _read_json(headers, read_body)
                if lowered[3] == "claraaetitle":
                    check_pipelines(body, self.known_pipelines)
                holder: dict[str, Any] = {}

                def change(c: AdapterConfig) -> AdapterConfig:
                    new, holder["entity"] = add(c, body)
                    return new

                self.store.update(change)
                log.info(
                    "configuration changed over REST",
                    extra={"resource": lowered[3], "op": "create"},
                )
                return 201, holder["entity"]
            if method == "DELETE" and name is not None:
                holder = {}

                def change_del(c: AdapterConfig) -> AdapterConfig:
                    new, holder["entity"] = delete(c, name)
                    return new

                self.store.update(change_del)
                log.info(
                    "configuration changed over REST",
                    extra={"resource": lowered[3], "op": "delete"},
                )
                return 200, holder["entity"]
            return 405, {"error": f"{method} not allowed on {path}"}
        except InvalidInput as exc:
            return 400, {"error": str(exc)}
        except NotFoundError as exc:
            return 404, {"error": f"{exc.args[0]!r} not found"}
        except Exception:
            log.exception("REST request failed")
            return 500, {"error": "internal error; see the adapter log"}

    def _health(self, which: str) -> tuple[int, Any]:
        if which == "live":
            return 200, {"status": "alive"}
        if which == "ready":
            ok = self.ready()
            return (200 if ok else 503), {"status": "ready" if ok else "not ready"}
        if which == "status":
            return 200, self.status()
        return 404, {"error": "unknown health endpoint"}


def _read_json(headers: Mapping[str, str], read_body: Callable[[], bytes]) -> Any:
    try:
        length = int(headers.get("Content-Length") or 0)
    except ValueError:
        raise InvalidInput("Content-Length is not a number") from None
    if length <= 0:
        raise InvalidInput("request body is empty; expected a JSON object")
    if length > MAX_BODY:
        raise InvalidInput(f"request body larger than {MAX_BODY} bytes")
    raw = read_body()
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("request body is not valid JSON") from None
