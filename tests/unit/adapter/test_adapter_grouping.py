"""Grouping decisions and revision merging (pure)."""

from __future__ import annotations

from radflow.adapter import grouping
from radflow.adapter.grouping import Decision, GroupState, decide, merge_revision
from radflow.sdk.manifest import InstanceRef


def st(open_=0, ready=0, unup=0, last=100.0, timeout=0.0) -> GroupState:
    return GroupState(open_, ready, unup, last, timeout)


def test_timeout_zero_closes_once_no_association_is_open():
    assert decide(st(ready=3), now=100.0) is Decision.EMIT
    assert decide(st(open_=1, ready=3), now=100.0) is Decision.WAIT
    assert decide(st(open_=2), now=100.0) is Decision.WAIT
    assert decide(st(), now=100.0) is Decision.IDLE


def test_timeout_n_waits_for_quiet_period():
    assert decide(st(ready=3, timeout=5), now=104.9) is Decision.WAIT
    assert decide(st(ready=3, timeout=5), now=105.0) is Decision.EMIT
    assert grouping.seconds_until_due(st(ready=3, timeout=5), 101.0) == 4.0
    assert grouping.seconds_until_due(st(ready=3, timeout=0), 101.0) is None


def test_waits_for_uploads():
    assert decide(st(ready=3, unup=1), now=100.0) is Decision.WAIT


def test_ids_are_deterministic_and_distinct():
    g = grouping.group_id("BRAIN", "1.2.3")
    assert g == grouping.group_id("BRAIN ", "1.2.3")
    assert g != grouping.group_id("LIVER", "1.2.3")
    assert grouping.job_id(g, "p", 0) == grouping.job_id(g, "p", 0)
    assert grouping.job_id(g, "p", 0) != grouping.job_id(g, "p", 1) != grouping.job_id(g, "q", 0)


def ref(sop: str, sha: str = "a") -> InstanceRef:
    return InstanceRef(
        sop_instance_uid=sop,
        sop_class_uid="1.2",
        series_instance_uid="9",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        key=f"k/{sop}",
        size=1,
        sha256=sha,
    )


def test_merge_revision_first_wins_without_overwrite():
    merged, changed = merge_revision([ref("1", "a")], [ref("1", "b"), ref("2")], overwrite=False)
    assert changed == 1
    assert {r.sop_instance_uid: r.sha256 for r in merged} == {"1": "a", "2": "a"}


def test_merge_revision_overwrite_replaces_changed_bytes_only():
    merged, changed = merge_revision([ref("1", "a")], [ref("1", "b")], overwrite=True)
    assert changed == 1 and merged[0].sha256 == "b"
    _, unchanged = merge_revision([ref("1", "a")], [ref("1", "a")], overwrite=True)
    assert unchanged == 0
