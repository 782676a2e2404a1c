"""The job tracker's fold: idempotent, order-tolerant, final exactly when the DAG is done."""

from __future__ import annotations

from typing import Any

from radflow.functions.job_tracker import logic
from radflow.sdk.events import job_id_for

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
                    "job_id": "j",
                    "pipeline": "p",
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
    assert finals == [None, "failed"]
    assert doc["state"] == "failed" and doc["failed_stage"] == "b"
    assert doc["reason"] == "dead_letter_503" == doc["stages"]["b"]["reason"]
    # a later completion (e.g. a re-drive) still wins: the job runs again
    doc, final = logic.apply(doc, *completed("b", "2"), DAG)
    assert doc["stages"]["b"]["state"] == "completed" and "reason" not in doc["stages"]["b"]
    assert (doc["state"], doc["failed_stage"], doc["reason"], final) == (
        "running",
        None,
        None,
        None,
    )


LOOPBACK = "http://127.0.0.1:41234"  # the embedded engine's activator: no Service name in it


def dead(attrs: dict[str, Any], code: str, body: bytes = b"") -> dict[str, Any]:
    import base64

    out = {**attrs, "knativeerrorcode": code, "knativeerrordest": LOOPBACK}
    if body:
        out["knativeerrordata"] = base64.b64encode(body).decode()
    return out


def request() -> tuple[dict[str, Any], dict[str, Any]]:
    attrs = {"id": "r", "type": "dev.radflow.study.received.v1", "time": "2026-01-01T00:00:00Z"}
    data = {
        "job_id": job_id_for("g", "p", 0),  # the job's identity: derived from its content
        "pipeline": "p",
        "study_id": "s",
        "group_id": "g",
        "manifest_key": "m",
        "instance_count": 1,
        "called_ae": "RADFLOW",
    }
    return attrs, data


def test_dead_letter_of_the_job_request_fails_the_first_stage_with_the_functions_reason() -> None:
    attrs, data = request()
    doc, finals = fold([(attrs, data), (dead(attrs, "400", b'{"reason": "invalid_event"}'), data)])
    assert finals == [None, "failed"]
    assert (doc["failed_stage"], doc["reason"]) == ("a", "dead_letter_400:invalid_event")
    assert doc["stages"]["a"]["state"] == "dead_lettered"
    assert doc["dead_letters"][0]["stages"] == ["a"]


def test_dead_letter_of_a_fan_in_input_fails_the_fan_in_stage() -> None:
    b_done = completed("b", "2")
    doc, finals = fold(
        [completed("a", "1"), b_done, completed("c", "3"), (dead(b_done[0], "504"), b_done[1])]
    )
    assert finals[-1] == "failed"
    assert (doc["failed_stage"], doc["reason"]) == ("d", "dead_letter_504")
    # a completion consumed by two stages marks only the one(s) not completed yet
    a_done = completed("a", "1")
    doc, _ = fold([a_done, completed("b", "2"), (dead(a_done[0], "503"), a_done[1])])
    assert doc["dead_letters"][0]["stages"] == ["c"] and doc["failed_stage"] == "c"


def test_dead_letter_error_body_is_never_copied_unless_it_is_a_reason_code() -> None:
    attrs, data = request()
    phi = b'{"reason": "Doe^Jane 19700101"}'
    doc, _ = fold([(dead(attrs, "500", phi), data)])
    assert doc["reason"] == "dead_letter_500"
    assert "Doe" not in repr(doc)
    doc, _ = fold([(dead(attrs, "500", b"not json at all"), data)])
    assert doc["reason"] == "dead_letter_500"


def test_dead_letter_no_stage_consumes_still_fails_the_job() -> None:
    attrs = {"id": "x", "type": "dev.radflow.job.completed.v1", "time": "2026-01-01T00:00:00Z"}
    doc, finals = fold([(dead(attrs, "502"), {"job_id": "j", "pipeline": "p"})])
    assert finals == ["failed"] and (doc["failed_stage"], doc["reason"]) == (
        None,
        "dead_letter_502",
    )


def test_event_with_garbage_data_fails_its_job_naming_fields_not_values() -> None:
    attrs, _ = completed("b", "9")
    doc, finals = fold([completed("a", "1"), (attrs, {"job_id": "j", "duration_ms": "Doe^Jane"})])
    assert finals == [None, "failed"]
    assert (doc["state"], doc["failed_stage"], doc["reason"]) == ("failed", "b", "invalid_event")
    assert doc["failure"]["message"] == "invalid fields: duration_ms, pipeline, stage"
    assert "Doe" not in repr(doc)
    # recorded, but a finished job stays completed
    done, _ = fold([completed(s, s) for s in "abcd"])
    done, final = logic.apply(done, attrs, {"job_id": "j"}, DAG)
    assert (done["state"], final) == ("completed", "completed")
    assert done["invalid_events"][0]["reason"] == "invalid_event"
    doc, finals = fold([(request()[0], "garbage")])  # type: ignore[list-item]
    assert finals == ["failed"] and doc["failure"]["message"] == "data is not a JSON object"


def test_deadline_fails_a_job_without_progress_naming_the_pending_stages() -> None:
    import datetime as dt

    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    doc = logic.new_job("j", "p", DAG)
    doc, _ = logic.apply(doc, *completed("a", "1"), DAG, now=start.isoformat())
    assert logic.check_deadline(doc, start + dt.timedelta(seconds=60), 60) is None
    late = logic.check_deadline(doc, start + dt.timedelta(seconds=61), 60)
    assert late is not None and doc["state"] == "running"
    assert (late["state"], late["reason"], late["failed_stage"]) == (
        "failed",
        "deadline_exceeded",
        "b",
    )
    assert late["failure"]["stages"] == ["b", "c", "d"]
    assert logic.check_deadline(late, start + dt.timedelta(hours=1), 60) is None


def test_redrive_starts_the_stages_that_did_not_complete_and_whose_inputs_did() -> None:
    failed_b = (
        {"id": "f", "type": "dev.radflow.stage.failed.v1", "time": "2026-01-01T00:00:20Z"},
        {"job_id": "j", "pipeline": "p", "stage": "b", "reason": "operator_exit_3"},
    )
    doc, _ = fold([completed("a", "1"), failed_b])
    assert logic.redrive_stages(doc, DAG) == ["b", "c"]  # c is pending: its input is there
    doc, _ = fold([completed("a", "1"), completed("c", "3"), failed_b])
    assert logic.redrive_stages(doc, DAG) == ["b"]
    again = logic.reset_for_redrive(doc, ["b"], "2026-01-01T01:00:00Z")
    assert (again["state"], again["failed_stage"], again["reason"]) == ("running", None, None)
    assert again["stages"]["b"] == {"state": "pending"} and again["redriven"] == 1
    assert again["seen"] == [] and again["finished_at"] is None and doc["state"] == "failed"
    # the stage failing again with the same deterministic id still counts
    doc, final = logic.apply(again, *failed_b, DAG)
    assert final == "failed" and doc["failed_stage"] == "b"
    # a job failed at its deadline before any stage ran re-drives its first stage
    fresh, _ = fold([request()])
    assert logic.redrive_stages(fresh, DAG) == ["a"]
    assert fresh["request"]["data"]["manifest_key"] == "m" and fresh["request"]["id"] == "r"


def test_job_request_naming_a_job_not_derived_from_its_content_fails_it() -> None:
    attrs, data = request()
    doc, finals = fold([(attrs, {**data, "job_id": "made-up"})])
    assert finals == ["failed"]
    assert (doc["reason"], doc["failure"]["message"]) == (
        "job_identity_mismatch",
        "job_id is not the id of its (group_id, pipeline, revision)",
    )
    assert "request" not in doc  # never re-driven
    # the job extension must agree with the data's job id
    doc, _ = fold([({**attrs, "radflowjob": "other"}, data)])
    assert doc["failure"]["message"] == "extension radflowjob differs from data job_id"
    # a completed job stays completed; the forged request is listed
    evs = [completed(s, s) for s in DAG]
    doc, finals = fold([*evs, ({**attrs, "id": "forged"}, {**data, "revision": 4})])
    assert finals[-1] == "completed" and doc["invalid_events"][0]["event_id"] == "forged"


def test_dead_letter_does_not_hide_the_direct_delivery_of_the_same_event() -> None:
    attrs, data = request()
    doc, _ = fold([(dead(attrs, "400"), data), (attrs, data)])
    assert doc["request"]["id"] == "r"
    # a dead letter delivered twice is recorded once
    doc, _ = fold([(dead(attrs, "400"), data), (dead(attrs, "400"), data)])
    assert len(doc["dead_letters"]) == 1


def test_one_job_event_is_owed_per_outcome_and_round_whatever_failed_the_job() -> None:
    attrs, data = request()
    # a dead letter fails it: the job.failed is published (nobody to reply to)
    doc, _ = fold([(attrs, data), (dead(attrs, "400"), data)])
    owed = doc["announcement"]
    assert (owed["state"], owed["via"], owed["sent"]) == ("failed", "publish", False)
    assert owed["trigger"] == logic.seen_key(dead(attrs, "400"))
    assert owed["id"] == logic.job_event_id(doc, "failed")
    # later events of the failed job owe nothing more
    again, _ = logic.apply(doc, *completed("a", "1"), DAG)
    assert again["announcement"] == owed
    # a stage failure is answered by the reply to that stage event
    failed = {"id": "f", "type": "dev.radflow.stage.failed.v1", "time": "2026-01-01T00:00:01Z"}
    doc, _ = fold([(failed, {"job_id": "j", "pipeline": "p", "stage": "b", "reason": "x"})])
    assert (doc["announcement"]["via"], doc["announcement"]["trigger"]) == ("reply", "f")
    # after a re-drive, a new failure is a new event
    rerun = logic.reset_for_redrive(doc, ["b"], "2026-01-01T00:01:00+00:00")
    rerun, _ = logic.apply(
        rerun,
        {**failed, "id": "f2"},
        {"job_id": "j", "pipeline": "p", "stage": "b", "reason": "x"},
        DAG,
    )
    assert rerun["announcement"]["id"] != doc["announcement"]["id"]
    assert rerun["announcement"]["id"] == logic.job_event_id(rerun, "failed")


def test_deadline_failure_owes_a_published_job_failed() -> None:
    import datetime as dt

    doc, _ = fold([request()])
    late = logic.check_deadline(doc, dt.datetime(2030, 1, 1, tzinfo=dt.UTC), 60)
    assert late is not None and late["reason"] == "deadline_exceeded"
    owed = late["announcement"]
    assert (owed["via"], owed["trigger"], owed["id"]) == (
        "publish",
        "deadline_exceeded",
        logic.job_event_id(late, "failed"),
    )
