"""Leased claims on real S3 conditional puts (SeaweedFS)."""

from __future__ import annotations

import time

import pytest

from radflow.sdk.claims import Claim, Outcome
from radflow.sdk.errors import Unavailable
from radflow.sdk.storage import ObjectStore


def test_heartbeat_keeps_a_live_claim_fresh_and_a_hung_one_lapses(store: ObjectStore) -> None:
    live = Claim(store, "jobs/j/s/claim", "ev-1", lease_seconds=1.2, max_seconds=2.4)
    assert live.acquire() is Outcome.ACQUIRED
    live.start_heartbeat()
    time.sleep(1.8)  # longer than the lease: only the heartbeat (every 0.4 s) keeps it fresh
    assert (
        Claim(store, "jobs/j/s/claim", "ev-1", lease_seconds=1.2).acquire()
        is Outcome.BUSY_SAME_EVENT
    )
    assert (
        Claim(store, "jobs/j/s/claim", "ev-2", lease_seconds=1.2).acquire()
        is Outcome.BUSY_OTHER_EVENT
    )
    time.sleep(live.started_at + 2.4 + 1.2 + 0.6 - time.time())  # past max_seconds + lease
    retry = Claim(store, "jobs/j/s/claim", "ev-1", lease_seconds=1.2)
    assert retry.acquire() is Outcome.STALE
    rival = Claim(store, "jobs/j/s/claim", "ev-1", lease_seconds=1.2)
    assert rival.acquire() is Outcome.STALE
    assert retry.take_over() is Outcome.TAKEN_OVER
    with pytest.raises(Unavailable, match="took over the stale claim first"):
        rival.take_over()
    live.stop()


def test_release_deletes_only_our_own_claim(store: ObjectStore) -> None:
    mine = Claim(store, "jobs/j/t/claim", "ev", lease_seconds=0.2)
    assert mine.acquire() is Outcome.ACQUIRED
    time.sleep(0.3)
    other = Claim(store, "jobs/j/t/claim", "ev", lease_seconds=0.2)
    assert other.acquire() is Outcome.STALE and other.take_over() is Outcome.TAKEN_OVER
    mine.release()
    assert store.exists("jobs/j/t/claim")
    other.release()
    assert not store.exists("jobs/j/t/claim")
