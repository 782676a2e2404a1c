"""The one way radflow retries inside a process: :func:`retrying`, a thin layer on tenacity.

Why one helper: a retry loop written by hand gets its edges wrong one at a time (the last error
swallowed, a sleep after the last attempt, a shutdown that waits out a backoff), and every loop
gets them wrong differently. Each caller states its policy here in one call instead: how many
attempts, which errors (or results) are worth another attempt, the delays. What survives a
restart (the adapter outbox's ``next_at``, the broker's delivery schedule) is persisted state,
not an in-process retry, and does not use this.

Policy: attempt *n* + 1 starts ``first_delay * factor ** (n - 1)`` seconds (at most
``max_delay``) after attempt *n* failed. When the attempts are spent, or ``until`` is set, the
last error is raised as it was (not wrapped); with ``while_result``, the last result is
returned. ::

    retrying(attempts=8, on=Unavailable, first_delay=0.1, max_delay=2.0)(load)

    for attempt in retrying(on=Unavailable, first_delay=0.2, max_delay=10.0, until=stopping):
        with attempt:
            upload()
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import tenacity

ErrorTypes = type[BaseException] | tuple[type[BaseException], ...]


def retrying(
    *,
    attempts: int | None = None,
    on: ErrorTypes = (),
    while_result: Callable[[Any], bool] | None = None,
    first_delay: float = 0.0,
    factor: float = 2.0,
    max_delay: float = 60.0,
    until: threading.Event | None = None,
    before_sleep: Callable[[float, BaseException | None], None] | None = None,
) -> tenacity.Retrying:
    """A retry policy; call it with a function (``policy(fn, *args)``) or iterate over it.

    ``attempts``: how many in all (``None``: no limit, so give ``until``). ``on``: the
    exception types worth another attempt; any other exception propagates at once.
    ``while_result``: another attempt when it returns true for the result. ``until``: an event
    that ends the retries once set (no further attempt starts; the last error is raised); the
    delays are waited on it, so setting it cuts a delay short. ``before_sleep(delay, error)``
    is called before each delay (``error`` is ``None`` when a result was retried), e.g. to
    log it.

    The returned object keeps no per-call state outside the calling thread, so one policy may
    be built once and shared by threads.
    """
    if attempts is None and until is None:
        raise ValueError("retrying() without attempts needs an until event to stop it")
    if until is not None and while_result is not None:
        raise ValueError("retrying() stops on until only when retrying errors, not results")
    if attempts is not None and attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    stops: list[Any] = []
    if attempts is not None:
        stops.append(tenacity.stop_after_attempt(attempts))
    if until is not None:
        stops.append(lambda _state: until.is_set())
    retry: Any = tenacity.retry_if_exception_type(on) if on else tenacity.retry_never
    if while_result is not None:
        retry = retry | tenacity.retry_if_result(while_result)
    options: dict[str, Any] = {}

    def on_sleep(state: tenacity.RetryCallState) -> None:
        state.radflow_last = state.outcome  # type: ignore[attr-defined]
        if before_sleep is not None:
            error = state.outcome.exception() if state.outcome else None
            before_sleep(state.upcoming_sleep, error)

    def check_until(state: tenacity.RetryCallState) -> None:
        # the delay was waited on ``until``: once it is set, raise the last error instead of
        # starting another attempt (tenacity would start one when the delay ends early)
        last = getattr(state, "radflow_last", None)
        if last is not None and until is not None and until.is_set():
            last.result()

    if until is not None:
        options["sleep"] = until.wait
        options["before"] = check_until
    if until is not None or before_sleep is not None:
        options["before_sleep"] = on_sleep
    if while_result is not None:
        # spent on a result: return it; spent on an error: .result() raises that error
        options["retry_error_callback"] = lambda state: state.outcome.result()
    return tenacity.Retrying(
        stop=tenacity.stop_any(*stops),
        wait=tenacity.wait_exponential(multiplier=first_delay, exp_base=factor, max=max_delay),
        retry=retry,
        reraise=True,
        **options,
    )
