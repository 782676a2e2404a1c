"""CloudEvent helpers: binary and structured round trips, validation errors."""

import pytest

from radflow.sdk import events


def test_binary_round_trip_keeps_extensions_and_content_type() -> None:
    ev = events.make_event(
        events.EventType.STAGE_COMPLETED, "/op", {"a": 1}, extensions={"radflowjob": "j1"}
    )
    headers, body = events.to_binary(ev)
    assert headers["content-type"] == "application/json"
    assert headers["ce-type"] == "dev.radflow.stage.completed.v1"
    back = events.from_http(headers, body)
    assert back["radflowjob"] == "j1" and back.data == {"a": 1}


def test_structured_json_round_trip() -> None:
    ev = events.make_event("t.v1", "/s", {"x": [1, 2]}, id="fixed")
    back = events.from_json(events.to_json(ev))
    assert back["id"] == "fixed" and back.data == {"x": [1, 2]}


def test_missing_required_attribute_is_invalid() -> None:
    with pytest.raises(events.InvalidEvent, match="CloudEvent"):
        events.from_http({"ce-specversion": "1.0", "ce-type": "t", "ce-source": "/s"}, b"{}")


def test_bad_extension_name_rejected() -> None:
    with pytest.raises(ValueError, match="radflow_job"):
        events.make_event("t", "/s", {}, extensions={"radflow_job": "x"})


def test_payload_error_names_the_field_not_the_value() -> None:
    ev = events.make_event(
        "t", "/s", {"job_id": "j", "pipeline": "p", "stage": "s", "reason": 5, "message": "SECRET"}
    )
    ev2 = events.make_event("t", "/s", {"job_id": "j"})
    with pytest.raises(events.InvalidEvent, match="pipeline"):
        events.parse_payload(ev2, events.StageFailed)
    with pytest.raises(events.InvalidEvent) as info:
        events.parse_payload(ev, events.StageFailed)
    assert "SECRET" not in str(info.value)


def test_deterministic_id_is_stable() -> None:
    assert events.deterministic_id("a", "b") == events.deterministic_id("a", "b")
    assert events.deterministic_id("a", "b") != events.deterministic_id("ab")
