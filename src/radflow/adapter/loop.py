"""A daemon thread running one pass after another; ``wake()`` cuts its wait short.

The emitter (closes groups) and the outbox (sends events) are both such loops: each pass does
what is due and returns how long to wait before the next one, unless something wakes it.
"""

from __future__ import annotations

import threading


class WakeableLoop:
    """Subclasses implement :meth:`_loop` using :attr:`_wake` and :attr:`_stop`."""

    def __init__(self, name: str) -> None:
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        raise NotImplementedError
