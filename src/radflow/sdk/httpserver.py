"""aiohttp serving shared by radflow's own HTTP servers: one stack, started one way.

Why here: the engine's control server and broker ingress run on the engine's event loop, the
DICOM adapter's REST API runs in a threaded process; all of them are aiohttp applications
(the operators alone serve through Flask, which functions-framework imposes). They share
:func:`start_site` (listen, learn the bound port, clean up if the port is taken) and the
adapter uses :class:`ThreadedServer` (its own loop in a daemon thread, started and stopped from
synchronous code). The SDK imports aiohttp for this, so aiohttp is a base dependency
(docs/engine.md, "HTTP").
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from aiohttp import web


async def start_site(runner: web.AppRunner, host: str, port: int) -> int:
    """Set ``runner`` up and listen on ``host:port``; returns the bound port (``0``: a free one).

    If the port cannot be bound (``OSError``, e.g. taken), the runner is cleaned up before the
    error propagates, so the caller may try another port with a new runner.
    """
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return int(runner.addresses[0][1])


class ThreadedServer:
    """An aiohttp application served from its own event loop in a daemon thread.

    For processes whose other parts are threads (the DICOM adapter): :meth:`start` returns once
    the port is bound (or raises the bind's ``OSError``), :meth:`stop` lets requests in flight
    finish for up to ``shutdown_timeout`` seconds, then ends the loop and its thread. Handlers
    that block (object-store calls) should run in ``asyncio.to_thread`` so that health checks
    keep answering meanwhile.
    """

    def __init__(
        self, make_app: Callable[[], web.Application], *, name: str, shutdown_timeout: float = 5.0
    ) -> None:
        self.make_app = make_app
        self.name = name
        self.shutdown_timeout = shutdown_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    def start(self, host: str, port: int) -> int:
        """Serve on ``host:port`` (``0``: a free port); returns the bound port."""
        if self._loop is not None:
            raise RuntimeError(f"{self.name} is already serving")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=self.name, daemon=True)
        thread.start()

        async def listen() -> tuple[web.AppRunner, int]:
            runner = web.AppRunner(
                self.make_app(),
                access_log=None,
                handle_signals=False,
                shutdown_timeout=self.shutdown_timeout,
            )
            return runner, await start_site(runner, host, port)

        try:
            self._runner, bound = asyncio.run_coroutine_threadsafe(listen(), loop).result()
        except BaseException:
            _end(loop, thread)
            raise
        self._loop, self._thread = loop, thread
        return bound

    def stop(self) -> None:
        """Stop listening, give requests in flight ``shutdown_timeout`` s, end the thread."""
        loop, thread, runner = self._loop, self._thread, self._runner
        if loop is None or thread is None or runner is None:
            return
        self._loop = self._thread = self._runner = None
        try:
            asyncio.run_coroutine_threadsafe(_close(runner), loop).result(
                self.shutdown_timeout + 5.0
            )
        finally:
            _end(loop, thread)


async def _close(runner: web.AppRunner) -> None:
    """Clean the runner up, then cancel what outlived its grace (handlers still waiting)."""
    await runner.cleanup()
    rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in rest:
        task.cancel()
    await asyncio.gather(*rest, return_exceptions=True)


def _end(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5.0)
    if not thread.is_alive():
        loop.close()
