"""radflow.sdk.retry: the policy each caller states (attempts, which errors, delays, stop)."""

from __future__ import annotations

import threading

import pytest

from radflow.sdk.errors import InvalidInput, Unavailable
from radflow.sdk.retry import retrying


class Flaky:
    """Fails with ``error`` for the first ``failures`` calls, then returns the call number."""

    def __init__(self, failures: int, error: BaseException) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return self.calls


def test_retries_the_named_errors_with_growing_delays_then_succeeds() -> None:
    delays: list[float] = []
    fn = Flaky(3, Unavailable("store down"))
    policy = retrying(
        attempts=5,
        on=Unavailable,
        first_delay=0.001,
        factor=4,
        before_sleep=lambda d, e: delays.append(d),
    )
    assert policy(fn) == 4
    assert delays == pytest.approx([0.001, 0.004, 0.016])


def test_delays_are_capped() -> None:
    delays: list[float] = []
    policy = retrying(
        attempts=5,
        on=Unavailable,
        first_delay=0.001,
        max_delay=0.002,
        before_sleep=lambda d, e: delays.append(d),
    )
    with pytest.raises(Unavailable):
        policy(Flaky(9, Unavailable("down")))
    assert delays == pytest.approx([0.001, 0.002, 0.002, 0.002])


def test_spent_attempts_raise_the_last_error_itself() -> None:
    fn = Flaky(9, Unavailable("store down"))
    with pytest.raises(Unavailable, match="store down"):
        retrying(attempts=3, on=Unavailable)(fn)
    assert fn.calls == 3


def test_other_errors_are_not_retried() -> None:
    fn = Flaky(9, InvalidInput("bad header"))
    with pytest.raises(InvalidInput, match="bad header"):
        retrying(attempts=3, on=Unavailable)(fn)
    assert fn.calls == 1


def test_while_result_retries_and_returns_the_last_result() -> None:
    left = [3]

    def send() -> list[str]:
        left[0] -= 1
        return ["file"] * left[0]

    assert retrying(attempts=5, while_result=bool)(send) == []
    left[0] = 9
    assert retrying(attempts=2, while_result=bool)(send) == ["file"] * 7


def test_until_ends_the_retries_and_cuts_the_delay_short() -> None:
    stop = threading.Event()
    fn = Flaky(99, Unavailable("down"))
    policy = retrying(
        on=Unavailable, first_delay=60.0, until=stop, before_sleep=lambda d, e: stop.set()
    )
    with pytest.raises(Unavailable, match="down"):
        policy(fn)  # would wait a minute if the delay were not waited on the event
    assert fn.calls == 1


def test_until_also_ends_an_iterated_policy() -> None:
    stop = threading.Event()
    calls = 0
    with pytest.raises(Unavailable, match="down"):
        for attempt in retrying(on=Unavailable, first_delay=60.0, until=stop):
            with attempt:
                calls += 1
                stop.set()
                raise Unavailable("down")
    assert calls == 1


def test_a_policy_must_end() -> None:
    with pytest.raises(ValueError, match="needs an until event"):
        retrying(on=Unavailable)
    with pytest.raises(ValueError, match="not results"):
        retrying(while_result=bool, until=threading.Event())
    with pytest.raises(ValueError, match="at least 1"):
        retrying(attempts=0)
