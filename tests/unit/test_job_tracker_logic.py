"""The job tracker's fold: idempotent, order-tolerant, final exactly when the DAG is done."""

from __future__ import annotations

from typing import Any

from radflow.functions.job_tracker import logic

DAG = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}


def completed(
    stage: str, eid: str, when: str = "2026-01-01T00:00:10+00:00", ms: float = 2000
) -> tuple[dict[str, Any], dict[str, Any]]:
    attrs = {
        "id": eid,
        "type": "dev.radflow.stage.completed.v1",
        "time": when,
        "subject": "study-1",
        "radflowstage": stage,
    }
    return attrs, {
        "job_id": "j",
        "pipeline": "p",
        "stage": stage,
        "duration_ms": ms,
        "outputs": {"o": f"jobs/j/{stage}/out/o/"},
    }


def fold(
    events: list[tuple[dict[str, Any], dict[str, Any]]],
) -> tuple[dict[str, Any], list[str | None]]:
    doc = logic.new_job("j", "p", DAG)
    finals = []
    for attrs, data in events:
        doc, final = logic.apply(doc, attrs, data, DAG)
        finals.append(final)
    return doc, finals


def test_job_completes_only_when_every_stage_did_in_any_order_with_duplicates() -> None:
    evs = [
        completed("d", "4"),
        completed("a", "1"),
        completed("b", "2"),
        completed("a", "1"),
        completed("c", "3"),
    ]
    doc, finals = fold(evs)
    assert finals == [None, None, None, None, "completed"]
    assert doc["state"] == "completed" and doc["study_id"] == "study-1"
    assert doc["stages"]["a"]["started_at"] == "2026-01-01T00:00:08+00:00"
    assert doc["seen"] == ["4", "1", "2", "3"]


def test_failed_stage_fails_the_job_with_its_reason() -> None:
    attrs = {"id": "f", "type": "dev.radflow.stage.failed.v1", "time": "2026-01-01T00:00:01+00:00"}
    doc, finals = fold(
        [
            completed("a", "1"),
            (
                attrs,
                {
                    "stage": "b",
                    "reason": "no_series_selected",
                    "message": "rule T1C matched nothing",
                },
            ),
        ]
    )
    assert finals[-1] == "failed"
    assert doc["stages"]["b"] == {
        "state": "failed",
        "failed_at": "2026-01-01T00:00:01+00:00",
        "reason": "no_series_selected",
        "message": "rule T1C matched nothing",
    }


def test_dead_letter_marks_the_stage_it_was_meant_for() -> None:
    attrs, data = completed("a", "1")
    dead = {
        **attrs,
        "knativeerrorcode": "503",
        "knativeerrordest": "http://p-b.default.svc.cluster.local",
    }
    doc, finals = fold([(attrs, data), (dead, data)])
    assert doc["stages"]["b"]["state"] == "dead_lettered"
    assert doc["dead_letters"][0]["stage"] == "b" and doc["dead_letters"][0]["code"] == "503"
    assert finals == [None, None]
    # a later completion (e.g. a manual replay) still wins
    doc, _ = logic.apply(doc, *completed("b", "2"), DAG)
    assert doc["stages"]["b"]["state"] == "completed"
