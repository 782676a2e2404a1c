"""Leased claims on real S3 conditional puts (SeaweedFS), on a clock the test moves by hand.

Lease ages come from the claims' clock, not from sleeping: the tests set the time, wait for the
heartbeat thread's signal (its stamp in the stored claim, its log line), then assert.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import pytest

from radflow.sdk.claims import Claim, Outcome
from radflow.sdk.errors import Unavailable
from radflow.sdk.storage import ObjectStore


class Clock:
    """Wall-clock seconds that move only when the test says so."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def test_heartbeat_keeps_a_live_claim_fresh_and_a_hung_one_lapses(
    store: ObjectStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="radflow.sdk.claims")
    clock, key = Clock(), "jobs/j/s/claim"
    start = clock.now

    def claim(event: str, max_seconds: float = 600.0) -> Claim:
        return Claim(store, key, event, lease_seconds=1.2, max_seconds=max_seconds, clock=clock)

    def stamped() -> float:
        return float(json.loads(store.get_bytes(key))["heartbeat_at"])

    live = claim("ev-1", max_seconds=2.4)
    assert live.acquire() is Outcome.ACQUIRED
    live.start_heartbeat()
    try:
        clock.now = start + 1.8  # longer than the lease: only the heartbeat keeps it fresh
        wait_until(lambda: stamped() == start + 1.8, "a heartbeat at the new time")
        assert claim("ev-1").acquire() is Outcome.BUSY_SAME_EVENT
        assert claim("ev-2").acquire() is Outcome.BUSY_OTHER_EVENT
        clock.now = start + 2.5  # past max_seconds: the heartbeat gives the claim up
        wait_until(
            lambda: "no longer renewing its claim" in caplog.text, "the heartbeat to give up"
        )
        assert stamped() == start + 1.8
        clock.now = start + 1.8 + 1.1  # within the lease of the last stamp: still fresh
        assert claim("ev-1").acquire() is Outcome.BUSY_SAME_EVENT
        clock.now = start + 1.8 + 1.3  # past the lease: stale
        retry = claim("ev-1")
        assert retry.acquire() is Outcome.STALE
        rival = claim("ev-1")
        assert rival.acquire() is Outcome.STALE
        assert retry.take_over() is Outcome.TAKEN_OVER
        with pytest.raises(Unavailable, match="took over the stale claim first"):
            rival.take_over()
    finally:
        live.stop()


def test_release_deletes_only_our_own_claim(store: ObjectStore) -> None:
    clock = Clock()
    mine = Claim(store, "jobs/j/t/claim", "ev", lease_seconds=0.2, clock=clock)
    assert mine.acquire() is Outcome.ACQUIRED
    clock.now += 0.3
    other = Claim(store, "jobs/j/t/claim", "ev", lease_seconds=0.2, clock=clock)
    assert other.acquire() is Outcome.STALE and other.take_over() is Outcome.TAKEN_OVER
    mine.release()
    assert store.exists("jobs/j/t/claim")
    other.release()
    assert not store.exists("jobs/j/t/claim")
