"""The function contract (sdk/runtime.py) through functions-framework, against real SeaweedFS.

Requests go through ``functions_framework.create_app(...).test_client()`` in binary mode as a
Knative broker sends them; replies must be binary CloudEvents with ``datacontenttype`` or empty.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import time
from pathlib import Path
from typing import Any

import functions_framework
import pytest

from pipeline_support import REPO, seed_study, store_env, study_event
from radflow.sdk import events
from radflow.sdk.events import EventType
from radflow.sdk.pipeline import parse_pipeline, stage_spec
from radflow.sdk.runtime import StageRuntime, completed_event_id
from radflow.sdk.settings import StoreSettings
from radflow.sdk.storage import Keys, ObjectStore

PROBE = str(REPO / "tests/operators/probe/main.py")
PIPELINE = """\
api-version: 0.4.0
name: probe
operators:
  - name: first
    container: {image: radflow/probe}
    variables: {MODE: ok, SLEEP: "0", COUNT_FILE: "", RANDOM_NAMES: "0", LONG_NAME: "0"}
    input: [{path: /input}]
    output: [{name: a, path: /output/a}, {name: b, path: /output/b}]
  - name: left
    container: {image: radflow/probe}
    input: [{from: first, name: a, path: /input}]
    output: [{name: l, path: /output}]
  - name: right
    container: {image: radflow/probe}
    input: [{from: first, name: b, path: /input}]
    output: [{name: r, path: /output}]
  - name: join
    container: {image: radflow/probe}
    variables: {MODE: ok, SLEEP: "0", COUNT_FILE: "", RANDOM_NAMES: "0"}
    input: [{from: left, name: l, path: /input/l}, {from: right, name: r, path: /input/r}]
    output: [{path: /output}]
"""
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
P = parse_pipeline(PIPELINE, source="probe.yaml", functions={"probe"})


def configure(
    monkeypatch: pytest.MonkeyPatch, settings: StoreSettings, stage: str, **variables: str
) -> None:
    op = P.operator(stage)
    monkeypatch.setenv("RADFLOW_STAGE_SPEC", stage_spec(P, op, timeout_seconds=300).to_env())
    monkeypatch.setenv("RADFLOW_PIPELINE", "probe")
    monkeypatch.setenv("RADFLOW_STAGE", stage)
    monkeypatch.setenv("RADFLOW_CLAIM_LEASE_SECONDS", "1")
    for k, v in {**store_env(settings), **op.variables, **variables}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("UNRELATED_ENV", "must not reach ctx.variables")


def client() -> Any:
    return functions_framework.create_app("handle", PROBE).test_client()


def post(c: Any, event: events.CloudEvent, structured: bool = False) -> Any:
    headers, body = events.to_structured(event) if structured else events.to_binary(event)
    return c.post("/", headers={**headers, "Prefer": "reply"}, data=body)


def reply_event(resp: Any) -> events.CloudEvent:
    assert resp.status_code == 200, resp.data
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.headers["ce-specversion"] == "1.0"
    return events.from_http(dict(resp.headers), resp.data)


def test_root_stage_binary_in_binary_completion_out(
    monkeypatch: pytest.MonkeyPatch, store_settings: StoreSettings, store: ObjectStore
) -> None:
    configure(monkeypatch, store_settings, "first")
    req = seed_study(store, "probe", series=2, instances=3)
    resp = post(client(), study_event(store, req, traceparent=TRACEPARENT))
    ev = reply_event(resp)
    assert ev["type"] == EventType.STAGE_COMPLETED.value
    assert ev["id"] == completed_event_id(req.job_id, "first")
    assert (ev["radflowjob"], ev["radflowpipeline"], ev["radflowstage"]) == (
        req.job_id,
        "probe",
        "first",
    )
    assert ev["subject"] == req.study_id and ev["traceparent"] == TRACEPARENT
    data = events.parse_payload(ev, events.StageCompleted)
    assert data.outputs == {
        "a": Keys.stage_output(req.job_id, "first", "a"),
        "b": Keys.stage_output(req.job_id, "first", "b"),
    }
    assert data.file_count == 2
    # the study's 6 instances were staged as <series>/<sop>.dcm; variables are exactly the
    # operator's
    assert data.summary == {
        "inputs": {"default": 6},
        "variables": ["COUNT_FILE", "LONG_NAME", "MODE", "RANDOM_NAMES", "SLEEP"],
    }
    listing = eval(store.get_bytes(Keys.stage_output(req.job_id, "first", "a", "inputs.txt")))
    assert all(name.count("/") == 1 and name.endswith(".dcm") for name in listing["default"])
    assert store.exists(Keys.stage_marker(req.job_id, "first", "completed.json"))
    log = store.get_bytes(Keys.stage_marker(req.job_id, "first", "log.jsonl")).decode().splitlines()
    assert any(json.loads(line)["message"] == "stage completed" for line in log)
    assert all(json.loads(line).get("job") == req.job_id for line in log)


def test_file_names_survive_the_trip_to_the_next_stage(
    store_settings: StoreSettings, store: ObjectStore
) -> None:
    """``<64-character SeriesInstanceUID>.nii.gz`` must arrive downstream under its own name."""
    req = seed_study(store, "probe", series=1, instances=1)
    first = _call(_runtime(store_settings, "first", LONG_NAME="1"), study_event(store, req))[1]
    assert first is not None
    _call(_runtime(store_settings, "left"), first)
    listing = eval(store.get_bytes(Keys.stage_output(req.job_id, "left", "l", "inputs.txt")))
    assert listing == {"a": ["1.2.826.0.1.3680043.8.498." + "1" * 38 + ".nii.gz", "inputs.txt"]}


def test_structured_request_is_accepted(
    monkeypatch: pytest.MonkeyPatch, store_settings: StoreSettings, store: ObjectStore
) -> None:
    configure(monkeypatch, store_settings, "first")
    req = seed_study(store, "probe", series=1, instances=1)
    assert (
        reply_event(post(client(), study_event(store, req), structured=True))["type"]
        == EventType.STAGE_COMPLETED.value
    )


def test_redelivery_replies_the_stored_event_without_running_again(
    monkeypatch: pytest.MonkeyPatch,
    store_settings: StoreSettings,
    store: ObjectStore,
    tmp_path: Path,
) -> None:
    count = tmp_path / "count"
    configure(monkeypatch, store_settings, "first", COUNT_FILE=str(count))
    req = seed_study(store, "probe", series=1, instances=2)
    c = client()
    first = post(c, study_event(store, req))
    again = post(c, study_event(store, req))
    assert first.data == again.data and first.headers["ce-id"] == again.headers["ce-id"]
    assert count.read_text().count("first end") == 1


def test_invalid_input_replies_stage_failed_once(
    monkeypatch: pytest.MonkeyPatch,
    store_settings: StoreSettings,
    store: ObjectStore,
    tmp_path: Path,
) -> None:
    count = tmp_path / "count"
    configure(monkeypatch, store_settings, "first", MODE="invalid", COUNT_FILE=str(count))
    req = seed_study(store, "probe", series=1, instances=1)
    c = client()
    ev = reply_event(post(c, study_event(store, req)))
    assert ev["type"] == EventType.STAGE_FAILED.value
    failed = events.parse_payload(ev, events.StageFailed)
    assert (failed.reason, failed.message) == (
        "no_series_selected",
        "selection rule 'T1C' matched no series",
    )
    assert store.exists(Keys.stage_marker(req.job_id, "first", "failed.json"))
    assert reply_event(post(c, study_event(store, req)))["id"] == ev["id"]
    assert count.read_text().count("first start") == 1


def test_a_request_the_store_refuses_replies_stage_failed_not_500(
    monkeypatch: pytest.MonkeyPatch,
    store_settings: StoreSettings,
    store: ObjectStore,
    tmp_path: Path,
) -> None:
    """Refused is permanent (here: an output key longer than S3 takes): a failed reply with its
    reason, stored like any failure, not a 500 the broker would retry."""
    count = tmp_path / "count"
    configure(monkeypatch, store_settings, "first", MODE="deep", COUNT_FILE=str(count))
    req = seed_study(store, "probe", series=1, instances=1)
    c = client()
    ev = reply_event(post(c, study_event(store, req)))
    assert ev["type"] == EventType.STAGE_FAILED.value
    failed = events.parse_payload(ev, events.StageFailed)
    assert failed.reason == "store_refused"
    assert re.fullmatch(r"object store put_object refused: HTTP 400 \w+", failed.message)
    assert store.exists(Keys.stage_marker(req.job_id, "first", "failed.json"))
    assert reply_event(post(c, study_event(store, req)))["id"] == ev["id"]
    assert count.read_text().count("first start") == 1


def test_transient_failure_is_503_and_the_retry_runs(
    monkeypatch: pytest.MonkeyPatch, store_settings: StoreSettings, store: ObjectStore
) -> None:
    configure(monkeypatch, store_settings, "first", MODE="unavailable")
    req = seed_study(store, "probe", series=1, instances=1)
    resp = post(client(), study_event(store, req))
    assert resp.status_code == 503 and resp.data == b""
    assert not store.exists(
        Keys.stage_marker(req.job_id, "first", "claim")
    )  # released for the retry
    monkeypatch.setenv("MODE", "ok")
    monkeypatch.setenv(
        "RADFLOW_CLAIM_LEASE_SECONDS", "1.0"
    )  # a new runtime: variables are read once
    assert (
        reply_event(post(client(), study_event(store, req)))["type"]
        == EventType.STAGE_COMPLETED.value
    )


def test_unexpected_exception_is_500_and_retried(
    monkeypatch: pytest.MonkeyPatch, store_settings: StoreSettings, store: ObjectStore
) -> None:
    configure(monkeypatch, store_settings, "first", MODE="crash")
    req = seed_study(store, "probe", series=1, instances=1)
    resp = post(client(), study_event(store, req))
    assert resp.status_code == 500 and json.loads(resp.data) == {"reason": "internal_error"}


def test_bad_requests_are_400(
    monkeypatch: pytest.MonkeyPatch, store_settings: StoreSettings, store: ObjectStore
) -> None:
    configure(monkeypatch, store_settings, "left")
    c = client()
    assert (
        c.post("/", data=b"not an event", headers={"content-type": "text/plain"}).status_code == 400
    )
    req = seed_study(store, "probe", series=1, instances=1)
    # a study event delivered to a stage that waits for 'first'
    resp = post(c, study_event(store, req))
    assert resp.status_code == 400 and json.loads(resp.data) == {"reason": "invalid_event"}
    other = events.make_event(
        EventType.STAGE_COMPLETED,
        "/x",
        events.StageCompleted(job_id="j", pipeline="probe", stage="right"),
        extensions={"radflowpipeline": "probe", "radflowstage": "right"},
    )
    assert post(c, other).status_code == 400
    foreign = events.with_attributes(other, radflowpipeline="another")
    assert post(c, foreign).status_code == 400


def _runtime(settings: StoreSettings, stage: str, **variables: str) -> StageRuntime:
    op = P.operator(stage)
    return StageRuntime(
        stage_spec(P, op, timeout_seconds=300),
        ObjectStore(settings),
        {**op.variables, **variables},
        lease_seconds=1.0,
    )


def _call(rt: StageRuntime, event: events.CloudEvent) -> tuple[int, events.CloudEvent | None]:
    headers, body = events.to_binary(event)
    out_body, status, out_headers = rt.handle(headers, body, _probe_run)
    lower = {k.lower(): v for k, v in out_headers.items()}
    return status, events.from_http(
        lower, out_body if isinstance(out_body, bytes) else out_body.encode()
    ) if "ce-id" in lower else None


def _probe_run(ctx: Any) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("probe_main_logic", PROBE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.run(ctx)


def test_fan_in_waits_for_every_upstream_then_runs_exactly_once(
    store_settings: StoreSettings, store: ObjectStore, tmp_path: Path
) -> None:
    count = tmp_path / "count"
    req = seed_study(store, "probe", series=1, instances=2)
    first_done = _call(
        _runtime(store_settings, "first"), study_event(store, req, traceparent=TRACEPARENT)
    )[1]
    assert first_done is not None
    left_done = _call(_runtime(store_settings, "left"), first_done)[1]
    join = _runtime(store_settings, "join", COUNT_FILE=str(count), SLEEP="0.3")
    assert left_done is not None
    # only 'left' has completed: join has nothing to do yet
    assert _call(join, left_done) == (202, None)
    right_done = _call(_runtime(store_settings, "right"), first_done)[1]
    assert right_done is not None
    # both arrivals, each delivered 6 times, concurrently
    with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(lambda ev: _call(join, ev), [left_done, right_done] * 6))
    assert count.read_text().count("join end") == 1
    statuses = sorted({s for s, _ in results})
    assert set(statuses) <= {200, 202, 503}, statuses
    replies = {ev["id"] for s, ev in results if ev is not None}
    assert replies <= {completed_event_id(req.job_id, "join")}
    # the retried 503s end with the stored completion once the run finished
    assert _call(join, left_done)[1]["id"] == completed_event_id(req.job_id, "join")  # type: ignore[index]
    listing = eval(store.get_bytes(Keys.stage_output(req.job_id, "join", "default", "inputs.txt")))
    assert listing == {"l": ["inputs.txt"], "r": ["inputs.txt"]}


def test_same_event_while_running_is_503_other_event_is_202(
    store_settings: StoreSettings, store: ObjectStore
) -> None:
    req = seed_study(store, "probe", series=1, instances=1)
    ev = study_event(store, req)
    key = Keys.stage_marker(req.job_id, "first", "claim")
    store.put_bytes(
        key,
        json.dumps(
            {"event_id": ev["id"], "holder": "h", "heartbeat_at": time.time(), "lease_seconds": 60}
        ).encode(),
    )
    rt = _runtime(store_settings, "first")
    assert _call(rt, ev)[0] == 503
    assert _call(rt, events.with_attributes(ev, id="another-delivery"))[0] == 202


def test_stale_claim_is_taken_over_and_leftover_outputs_removed(
    store_settings: StoreSettings, store: ObjectStore, tmp_path: Path
) -> None:
    count = tmp_path / "count"
    req = seed_study(store, "probe", series=1, instances=1)
    ev = study_event(store, req)
    # a run killed 10 s ago left its claim and one output file with a random (UID-like) name
    store.put_bytes(
        Keys.stage_marker(req.job_id, "first", "claim"),
        json.dumps(
            {
                "event_id": ev["id"],
                "holder": "dead",
                "heartbeat_at": time.time() - 10,
                "lease_seconds": 1,
            }
        ).encode(),
    )
    leftover = Keys.stage_output(req.job_id, "first", "a", "0123abcd.dcm")
    store.put_bytes(leftover, b"partial")
    status, reply = _call(
        _runtime(store_settings, "first", COUNT_FILE=str(count), RANDOM_NAMES="1"), ev
    )
    assert status == 200 and reply is not None
    assert not store.exists(leftover)
    names = sorted(
        i.key.rsplit("/", 1)[1] for i in store.list(Keys.stage_output(req.job_id, "first", "a"))
    )
    assert len(names) == 2 and "inputs.txt" in names
    assert count.read_text().count("first end") == 1


def test_a_finished_stage_is_never_rerun_even_when_its_claim_is_stale(
    store_settings: StoreSettings, store: ObjectStore, tmp_path: Path
) -> None:
    count = tmp_path / "count"
    req = seed_study(store, "probe", series=1, instances=1)
    ev = study_event(store, req)
    rt = _runtime(store_settings, "first", COUNT_FILE=str(count))
    first = _call(rt, ev)
    key = Keys.stage_marker(req.job_id, "first", "claim")
    doc = json.loads(store.get_bytes(key))
    store.put_bytes(key, json.dumps({**doc, "heartbeat_at": time.time() - 3600}).encode())
    again = _call(rt, events.with_attributes(ev, id="a-much-later-redelivery"))
    assert again[0] == 200 and again[1] is not None and first[1] is not None
    assert again[1]["id"] == first[1]["id"]
    assert count.read_text().count("first start") == 1
