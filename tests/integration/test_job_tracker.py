"""The job tracker function and `radflow jobs` against real SeaweedFS."""

from __future__ import annotations

import concurrent.futures
import json
import threading
from collections.abc import Iterator
from typing import Any

import functions_framework
import pytest
from werkzeug.serving import make_server

from pipeline_support import REPO, store_env
from radflow.cli import jobs as jobs_cli
from radflow.sdk import events
from radflow.sdk.events import EventType
from radflow.sdk.settings import StoreSettings
from radflow.sdk.storage import ObjectStore

DAG = {"p": {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}}


@pytest.fixture
def tracker(
    monkeypatch: pytest.MonkeyPatch, store_settings: StoreSettings, store: ObjectStore
) -> Any:
    for k, v in store_env(store_settings).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("RADFLOW_DAGS", json.dumps(DAG))
    monkeypatch.setenv("RADFLOW_OPERATOR", "job_tracker")
    from radflow.functions.job_tracker import service

    service._deps.cache_clear()
    yield functions_framework.create_app(
        "handle", str(REPO / "src/radflow/functions/entry.py")
    ).test_client()
    service._deps.cache_clear()


def stage_event(stage: str, job: str = "job-1") -> events.CloudEvent:
    return events.make_event(
        EventType.STAGE_COMPLETED,
        f"/radflow/p/{stage}",
        events.StageCompleted(
            job_id=job,
            pipeline="p",
            stage=stage,
            outputs={"o": f"jobs/{job}/{stage}/out/o/"},
            duration_ms=1500,
        ),
        id=events.deterministic_id(job, stage, "completed"),
        subject="study-opaque-id",
        extensions={"radflowjob": job, "radflowpipeline": "p", "radflowstage": stage},
    )


def post(c: Any, ev: events.CloudEvent) -> Any:
    h, b = events.to_binary(ev)
    return c.post("/", headers=h, data=b)


def test_concurrent_events_build_one_document_and_one_job_completed(
    tracker: Any, store: ObjectStore
) -> None:
    evs = [stage_event(s) for s in "abcd"] * 3
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        resps = list(pool.map(lambda e: post(tracker, e), evs))
    assert all(r.status_code in (200, 202) for r in resps)
    replies = [events.from_http(dict(r.headers), r.data) for r in resps if r.status_code == 200]
    assert replies and {r["type"] for r in replies} == {EventType.JOB_COMPLETED.value}
    assert len({r["id"] for r in replies}) == 1
    doc = json.loads(tracker.get("/jobs/job-1").data)
    assert doc["state"] == "completed"
    assert doc["stages"]["a"]["outputs"] == {"o": store.uri("jobs/job-1/a/out/o/")}
    assert doc["stages"]["a"]["log"] == store.uri("jobs/job-1/a/log.jsonl")
    listing = json.loads(tracker.get("/jobs").data)["jobs"]
    assert [j["job_id"] for j in listing] == ["job-1"] and listing[0][
        "study_id"
    ] == "study-opaque-id"
    assert tracker.get("/jobs/nope").status_code == 404


def test_failed_stage_replies_job_failed(tracker: Any) -> None:
    post(tracker, stage_event("a", job="job-2"))
    failed = events.make_event(
        EventType.STAGE_FAILED,
        "/radflow/p/b",
        events.StageFailed(job_id="job-2", pipeline="p", stage="b", reason="no_series_selected"),
        extensions={"radflowjob": "job-2", "radflowpipeline": "p", "radflowstage": "b"},
    )
    r = post(tracker, failed)
    ev = events.from_http(dict(r.headers), r.data)
    assert ev["type"] == EventType.JOB_FAILED.value
    assert events.parse_payload(ev, events.JobFinished).failed_stage == "b"


def test_jobs_cli_lists_and_shows(
    tracker: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for s in "ab":
        post(tracker, stage_event(s, job="job-3"))
    assert jobs_cli.main(["jobs"]) == 0
    out = capsys.readouterr().out
    assert (
        "job-3" in out and "running" in out and "a:completed(1.5s)" in out and "c:pending(-)" in out
    )
    assert jobs_cli.main(["jobs", "show", "job-3"]) == 0
    out = capsys.readouterr().out
    assert "stage timeline:" in out and "output o: s3://" in out and "log: s3://" in out
    assert jobs_cli.main(["jobs", "show", "job-3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stages"]["b"]["state"] == "completed"
    assert jobs_cli.main(["jobs", "show", "missing"]) == 1


def test_jobs_show_takes_a_unique_prefix_and_lists_an_ambiguous_ones_candidates(
    tracker: Any, tracker_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for job in ("job-abc1", "job-abc2", "job-xyz"):
        post(tracker, stage_event("a", job=job))
    for url in ([], ["--url", tracker_url]):
        assert jobs_cli.main(["jobs", "show", "job-x", *url]) == 0
        assert capsys.readouterr().out.startswith("job       job-xyz\n")
        assert jobs_cli.main(["jobs", "show", "job-abc", *url]) == 1
        err = capsys.readouterr().err
        assert err == "job id prefix 'job-abc' is ambiguous: job-abc1, job-abc2\n"
        assert jobs_cli.main(["jobs", "show", "job-q", *url]) == 1
        assert capsys.readouterr().err == "job job-q not found\n"


@pytest.fixture
def tracker_url(tracker: Any) -> Iterator[str]:
    """The same tracker served over HTTP on loopback, as a running tracker is."""
    server = make_server("127.0.0.1", 0, tracker.application, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(10)


def test_jobs_cli_reads_a_running_tracker_over_http(
    tracker: Any, tracker_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    post(tracker, stage_event("a", job="job-9"))
    assert jobs_cli.main(["jobs", "--url", tracker_url]) == 0
    assert "job-9" in capsys.readouterr().out
    assert jobs_cli.main(["jobs", "show", "job-9", "--url", tracker_url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stages"]["a"]["state"] == "completed"
    assert jobs_cli.main(["jobs", "show", "missing", "--url", tracker_url]) == 1
    assert "job missing not found" in capsys.readouterr().err


def test_study_request_records_the_study_instance_uid_for_the_listing(
    tracker: Any, store: ObjectStore, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline_support import seed_study, study_event

    req = seed_study(store, "p", series=1, instances=1, tag="4242")
    r = post(tracker, study_event(store, req))
    assert r.status_code == 202 and r.data == b""
    doc = json.loads(tracker.get(f"/jobs/{req.job_id}").data)
    assert (
        doc["study_instance_uid"] == "1.2.826.0.1.3680043.10.14242"
        and doc["study_id"] == req.study_id
    )
    assert doc["state"] == "running" and set(doc["stages"]) == {"a", "b", "c", "d"}
    assert jobs_cli.main(["jobs"]) == 0
    assert "1.2.826.0.1.3680043.10.14242" in capsys.readouterr().out


def test_non_event_post_is_400_and_put_is_405(tracker: Any) -> None:
    assert tracker.post("/", data=b"x", headers={"content-type": "text/plain"}).status_code == 400
    assert tracker.put("/").status_code == 405


@pytest.mark.parametrize("tick_type", ["dev.radflow.tick.v1", "dev.knative.sources.ping"])
def test_tick_fails_jobs_past_their_deadline_and_leaves_final_ones(
    tracker: Any,
    store: ObjectStore,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tick_type: str,
) -> None:
    from pipeline_support import wait_until
    from radflow.functions.job_tracker import service

    monkeypatch.setenv("RADFLOW_JOB_DEADLINE_SECONDS", "0.5")
    service._deps.cache_clear()
    post(tracker, stage_event("a", job="job-slow"))
    for s in "abcd":
        post(tracker, stage_event(s, job="job-done"))
    tick = events.make_event(tick_type, "/apis/v1/namespaces/default/pingsources/t", {})

    def swept() -> bool:
        assert post(tracker, tick).status_code == 202
        doc = service.read_job(store, "job-slow")  # the stored document, not a GET
        return doc is not None and doc["state"] == "failed"

    wait_until(swept, "a tick to fail the stalled job", timeout=30)
    doc = service.read_job(store, "job-slow")
    assert doc is not None
    assert (doc["failed_stage"], doc["reason"]) == ("b", "deadline_exceeded")
    assert doc["failure"]["stages"] == ["b", "c", "d"]
    assert service.read_job(store, "job-done")["state"] == "completed"  # type: ignore[index]
    assert jobs_cli.main(["jobs", "show", "job-slow"]) == 0
    assert "state     failed (stage b: deadline_exceeded)" in capsys.readouterr().out


def test_redrive_refusals(tracker: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from radflow.functions.job_tracker import service

    assert tracker.post("/jobs/nope/redrive").status_code == 404
    post(tracker, stage_event("a", job="job-r"))
    r = tracker.post("/jobs/job-r/redrive")
    assert (r.status_code, r.json["reason"]) == (409, "job_not_failed")
    failed = events.make_event(
        EventType.STAGE_FAILED,
        "/radflow/p/b",
        events.StageFailed(job_id="job-r", pipeline="p", stage="b", reason="operator_exit_3"),
        extensions={"radflowjob": "job-r", "radflowpipeline": "p", "radflowstage": "b"},
    )
    post(tracker, failed)
    monkeypatch.delenv("K_SINK", raising=False)
    monkeypatch.delenv("RADFLOW_BROKER_URL", raising=False)
    r = tracker.post("/jobs/job-r/redrive")
    assert (r.status_code, r.json["reason"]) == (503, "no_broker_url")
    assert json.loads(tracker.get("/jobs/job-r").data)["state"] == "failed"  # left as it was
    service._deps.cache_clear()


def test_job_failed_by_a_dead_letter_is_published_once_when_the_broker_takes_it(
    tracker: Any, store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No broker at first: the job.failed stays owed; a tick sends it once the broker is there,
    and no later look sends it again."""
    import base64
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from pipeline_support import wait_until
    from radflow.functions.job_tracker import service

    received: list[events.CloudEvent] = []

    class Broker(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            received.append(events.from_http({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(202)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    broker = ThreadingHTTPServer(("127.0.0.1", 0), Broker)
    threading.Thread(target=broker.serve_forever, daemon=True).start()
    try:
        monkeypatch.delenv("K_SINK", raising=False)
        monkeypatch.delenv("RADFLOW_BROKER_URL", raising=False)
        service._deps.cache_clear()
        done = stage_event("a", job="job-dl")
        letter = events.with_attributes(
            stage_event("b", job="job-dl"),
            knativeerrorcode="503",
            knativeerrordest="http://127.0.0.1:1/",
            knativeerrordata=base64.b64encode(b'{"reason": "unavailable"}').decode(),
        )
        post(tracker, done)
        assert post(tracker, letter).status_code == 202
        doc = service.read_job(store, "job-dl")
        assert doc is not None and doc["state"] == "failed"
        assert doc["announcement"]["sent"] is False  # nowhere to send it yet
        monkeypatch.setenv("RADFLOW_BROKER_URL", f"http://127.0.0.1:{broker.server_port}/")
        monkeypatch.setattr(service, "RETRY_AFTER_S", 0.0)
        service._deps.cache_clear()
        tick = events.make_event("dev.radflow.tick.v1", "/test", {})
        wait_until(lambda: post(tracker, tick) is not None and bool(received), "job.failed sent")
        for _ in range(3):  # later looks and ticks: already sent
            post(tracker, tick)
            tracker.get("/jobs/job-dl")
    finally:
        broker.shutdown()
        service._deps.cache_clear()
    [event] = received
    assert event["type"] == EventType.JOB_FAILED.value
    assert event["id"] == events.deterministic_id("job-dl", "job", "failed")
    assert (event.data["failed_stage"], event.data["reason"]) == (
        "d",
        "dead_letter_503:unavailable",
    )
    assert service.read_job(store, "job-dl")["announcement"]["sent"] is True  # type: ignore[index]
