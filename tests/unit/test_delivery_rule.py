"""The compiler's per-Trigger delivery rule and fan-in rule (pure)."""

from __future__ import annotations

import pytest

from radflow.engine.compiler import (
    CLAIM_LEASE_SECONDS,
    DEAD_LETTERS,
    delivery_for,
    worst_case_seconds,
)
from radflow.sdk.events import join_attribute
from radflow.sdk.pipeline import last_upstreams


@pytest.mark.parametrize(
    ("timeout", "retry", "delay", "kafka", "mt"),
    [
        # a 10-minute inference: 3 attempts, not 9; dead-lettered within ~34 min, not ~1.6 h
        (600, 2, 20, 3 * 630 + 40 + 80, 3 * 630 + 20 + 40),
        (300, 5, 2, 6 * 330 + 4 + 8 + 16 + 32 + 64, 6 * 330 + 2 + 4 + 8 + 16 + 32),
        (60, 6, 2, 7 * 90 + 252, 7 * 90 + 126),  # the job tracker
    ],
)
def test_delivery_is_derived_from_the_subscribers_timeout(
    timeout: int, retry: int, delay: int, kafka: int, mt: int
) -> None:
    d = delivery_for(timeout)
    assert d["timeout"] == f"PT{timeout + 30}S"  # Knative's own 504 comes first
    assert (d["retry"], d["backoffDelay"], d["backoffPolicy"]) == (
        retry,
        f"PT{delay}S",
        "exponential",
    )
    assert d["deadLetterSink"]["ref"]["name"] == DEAD_LETTERS
    assert worst_case_seconds(d, "Kafka") == kafka
    assert worst_case_seconds(d, "MTChannelBasedBroker") == mt


@pytest.mark.parametrize("timeout", [1, 30, 60, 120, 300, 450, 600])
def test_backoffs_outlast_two_claim_leases_and_retries_stay_bounded(timeout: int) -> None:
    d = delivery_for(timeout)
    delay, retry = int(d["backoffDelay"][2:-1]), d["retry"]
    assert 2 <= retry <= 6
    # MT's (shorter) backoffs d*2^(n-1): a killed run's claim lease lapses before the last retry
    assert sum(delay * 2 ** (n - 1) for n in range(1, retry + 1)) >= 2 * CLAIM_LEASE_SECONDS


def test_only_the_upstreams_that_can_finish_last_wake_a_stage() -> None:
    dag = {
        "parse": [],
        "infer": ["parse"],
        "seg": ["infer", "parse"],
        "rt": ["infer", "parse"],
        "export": ["rt", "seg"],
    }
    assert last_upstreams(dag, "seg") == ["infer"]  # parse always completed before infer
    assert last_upstreams(dag, "export") == ["rt", "seg"]  # a real join
    assert last_upstreams(dag, "parse") == []


def test_join_attributes_are_filter_safe_and_distinct() -> None:
    names = {join_attribute(s) for s in ("join", "scu-export", "a" * 200)}
    assert len(names) == 3
    for name in names:
        assert name.isalnum() and name.islower() and len(name) <= 20
