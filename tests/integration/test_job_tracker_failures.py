"""No job stays ``running`` for ever: dead letters, forged events and stalled jobs, end to end.

Runs ``pipelines/examples/fan-in-example.yaml`` (ingest -> left, right -> join -> report)
through the real engine (tests/pipeline_support.py: ``PipelineEngine``): the broker's own
retries and dead letters, delivered to the job tracker (the Broker's dead-letter sink) with
the engine's loopback ``knativeerrordest``. A stage is made slow with its ``SLEEP_SECONDS``
variable and, where it must be dead-lettered, its Trigger gets a 2 s per-attempt timeout and
one retry (what a cluster operator could set), so the broker gives up within seconds.
"""

from __future__ import annotations

import urllib.error
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline_support import (
    PipelineEngine,
    compile_to,
    fan_in_example,
    run_log_counts,
    seed_study,
    store_env,
    study_event,
    wait_until,
)
from radflow.cli import jobs as jobs_cli
from radflow.sdk import events
from radflow.sdk.events import EventType
from radflow.sdk.settings import StoreSettings
from radflow.sdk.storage import ObjectStore

pytestmark = pytest.mark.slow
PIPELINE = "fan-in-example"
STAGES = ["ingest", "join", "left", "report", "right"]
#: the broker gives up on a slow subscriber after two 2 s attempts
GIVE_UP_FAST = {"retry": 1, "backoffPolicy": "linear", "backoffDelay": "PT0.2S", "timeout": "PT2S"}
#: the reason names the last attempt's status: 503 when the stage answered "busy with this same
#: event" (the first attempt's run still holds its claim), 500 when that attempt timed out too
LAST_ATTEMPT = {"dead_letter_503", "dead_letter_500"}


def slow(stage: str, seconds: int = 60) -> dict[str, Any]:
    pipeline = fan_in_example()
    op = next(op for op in pipeline["operators"] if op["name"] == stage)
    op["variables"]["SLEEP_SECONDS"] = str(seconds)
    return pipeline


def status_once(
    engine: PipelineEngine, job_id: str, state: Callable[[str], bool], what: str
) -> dict[str, Any]:
    """The job's status once its state passes ``state`` (polled: no sleep-then-assert)."""
    seen: dict[str, Any] = {}

    def done() -> bool:
        try:
            seen.update(engine.job_status(job_id))
        except urllib.error.HTTPError as exc:  # 404 until the tracker got the job's first event
            if exc.code != 404:
                raise
            return False
        return state(seen["state"])

    wait_until(done, f"job {job_id} {what}", timeout=90)
    return seen


def finished(engine: PipelineEngine, job_id: str) -> dict[str, Any]:
    return status_once(engine, job_id, lambda s: s != "running", "to leave running")


def job_failed(engine: PipelineEngine, job_id: str) -> list[events.CloudEvent]:
    """Every ``job.failed`` of ``job_id`` that entered the broker, once the first one did and
    the broker is idle (a second one would have been delivered by then)."""

    def of_job() -> list[events.CloudEvent]:
        return [e for e in engine.of_type(EventType.JOB_FAILED) if e["radflowjob"] == job_id]

    wait_until(lambda: bool(of_job()), f"job.failed of job {job_id}")
    engine.wait_idle()
    return of_job()


def dead_lettered_run(
    tmp_path: Path, store_settings: StoreSettings, store: ObjectStore, stage: str
) -> tuple[dict[str, Any], list[events.CloudEvent]]:
    """One study through the pipeline whose ``stage`` is slow and whose Trigger gives up fast:
    the job's status once it has left ``running``, and the job.failed events published."""
    kn = compile_to(slow(stage), tmp_path / "knative")
    with PipelineEngine(
        kn,
        tmp_path / "state",
        base_env=store_env(store_settings),
        trigger_delivery={f"{PIPELINE}-{stage}": GIVE_UP_FAST},
    ) as engine:
        req = seed_study(store, PIPELINE, series=1, instances=1)
        engine.publish(study_event(store, req))
        status = finished(engine, req.job_id)
        return status, job_failed(engine, req.job_id)


def assert_one_job_failed(announced: list[events.CloudEvent], status: dict[str, Any]) -> None:
    """The job.failed event is published once (ids are per failure, redeliveries repeat it)."""
    assert len(announced) == 1, [e["id"] for e in announced]
    assert announced[0]["id"] == events.deterministic_id(status["job_id"], "job", "failed")
    data = announced[0].data
    assert (data["failed_stage"], data["reason"]) == (status["failed_stage"], status["reason"])


def test_dead_letter_of_the_first_stage_fails_the_job_naming_it(
    tmp_path: Path, store_settings: StoreSettings, store: ObjectStore
) -> None:
    status, announced = dead_lettered_run(tmp_path, store_settings, store, "ingest")
    assert_one_job_failed(announced, status)

    assert (status["state"], status["failed_stage"]) == ("failed", "ingest"), status
    assert status["reason"] in LAST_ATTEMPT
    assert status["stages"]["ingest"]["state"] == "dead_lettered"
    assert {status["stages"][s]["state"] for s in STAGES if s != "ingest"} == {"pending"}
    [letter] = status["dead_letters"]
    assert letter["type"] == EventType.STUDY_RECEIVED.value and letter["stages"] == ["ingest"]
    assert letter["destination"].startswith("http://127.0.0.1:")  # no Service name in it


def test_dead_letter_of_a_fan_in_stage_fails_the_job_naming_it(
    tmp_path: Path, store_settings: StoreSettings, store: ObjectStore
) -> None:
    status, announced = dead_lettered_run(tmp_path, store_settings, store, "join")
    assert_one_job_failed(announced, status)

    assert (status["state"], status["failed_stage"]) == ("failed", "join"), status
    assert status["reason"] in LAST_ATTEMPT
    states = {name: s["state"] for name, s in status["stages"].items()}
    assert states == {
        "ingest": "completed",
        "left": "completed",
        "right": "completed",
        "join": "dead_lettered",
        "report": "pending",
    }
    assert status["dead_letters"], status
    for letter in status["dead_letters"]:  # the completion of left or right, meant for join
        assert letter["type"] == EventType.STAGE_COMPLETED.value and letter["stages"] == ["join"]


def test_forged_event_with_garbage_data_fails_its_job(
    tmp_path: Path, store_settings: StoreSettings, store: ObjectStore
) -> None:
    kn = compile_to(slow("ingest"), tmp_path / "knative")
    with PipelineEngine(kn, tmp_path / "state", base_env=store_env(store_settings)) as engine:
        req = seed_study(store, PIPELINE, series=1, instances=1)
        engine.publish(study_event(store, req))
        status_once(engine, req.job_id, lambda s: s == "running", "to be recorded running")
        # a valid CloudEvent naming the job, its data not a stage completion at all
        engine.publish(
            events.make_event(
                EventType.STAGE_COMPLETED,
                f"/radflow/{PIPELINE}/report",
                {"job_id": req.job_id, "duration_ms": "Doe^Jane", "outputs": 7},
                id=str(uuid.uuid4()),
                extensions={
                    "radflowjob": req.job_id,
                    "radflowpipeline": PIPELINE,
                    "radflowstage": "report",
                },
            )
        )
        status = finished(engine, req.job_id)

    assert (status["state"], status["failed_stage"], status["reason"]) == (
        "failed",
        "report",
        "invalid_event",
    ), status
    assert status["failure"]["message"] == "invalid fields: duration_ms, outputs, pipeline, stage"
    assert "Doe" not in repr(status)


def test_job_without_progress_fails_at_its_deadline_naming_pending_stages(
    tmp_path: Path, store_settings: StoreSettings, store: ObjectStore
) -> None:
    # ingest outlives the deadline, then completes: the rest of the DAG runs after the job
    # failed, and none of its events announces the job again
    kn = compile_to(slow("ingest", seconds=8), tmp_path / "knative")
    with PipelineEngine(
        kn,
        tmp_path / "state",
        base_env=store_env(store_settings),
        service_env={"RADFLOW_JOB_DEADLINE_SECONDS": "3"},
    ) as engine:
        req = seed_study(store, PIPELINE, series=1, instances=1)
        engine.publish(study_event(store, req))
        status = finished(engine, req.job_id)
        announced = job_failed(engine, req.job_id)
        after = engine.job_status(req.job_id)

    assert_one_job_failed(announced, status)
    assert after["stages"]["report"]["state"] == "completed", after  # the DAG did run on
    assert (after["state"], after["reason"]) == ("failed", "deadline_exceeded")

    assert (status["state"], status["failed_stage"], status["reason"]) == (
        "failed",
        "ingest",
        "deadline_exceeded",
    ), status
    assert status["failure"]["stages"] == STAGES
    assert status["failure"]["message"] == "no progress for 3 s"
    assert status["finished_at"] is not None


def test_failed_job_fixed_and_redriven_completes(
    tmp_path: Path,
    store_settings: StoreSettings,
    store: ObjectStore,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # left exits 3 (stage.failed, operator_exit_3) until the test "fixes" it by creating FIXED
    fixed, runs = tmp_path / "fixed", tmp_path / "runs.log"
    pipeline = fan_in_example()
    left = next(op for op in pipeline["operators"] if op["name"] == "left")
    command = left["container"]["command"]
    sleep = "time.sleep(float(os.environ.get('SLEEP_SECONDS') or 0))"
    assert sleep in command[2]
    command[2] = command[2].replace(sleep, "(os.path.exists(os.environ['FIXED']) or sys.exit(3))")
    left["variables"]["FIXED"] = str(fixed)
    kn = compile_to(pipeline, tmp_path / "knative")
    with PipelineEngine(
        kn,
        tmp_path / "state",
        base_env=store_env(store_settings),
        service_env={"RUN_LOG": str(runs)},
    ) as engine:
        tracker = engine.host.url("job-tracker")
        req = seed_study(store, PIPELINE, series=1, instances=1)
        engine.publish(study_event(store, req))
        failed = finished(engine, req.job_id)
        assert (failed["state"], failed["failed_stage"], failed["reason"]) == (
            "failed",
            "left",
            "operator_exit_3",
        ), failed
        engine.wait_idle()  # right's completion recorded too: only left is to be re-driven
        # an unknown job is refused
        assert jobs_cli.main(["jobs", "redrive", "no-such-job", "--url", tracker]) == 1
        fixed.touch()
        assert jobs_cli.main(["jobs", "redrive", req.job_id, "--url", tracker]) == 0
        assert "re-driven (#1) from left: 1 event(s) published" in capsys.readouterr().out
        done = status_once(engine, req.job_id, lambda s: s != "running", "to finish again")
        assert jobs_cli.main(["jobs", "redrive", req.job_id, "--url", tracker]) == 1
        assert "not re-driven: job_not_failed" in capsys.readouterr().err
        engine.wait_idle()
        seen = engine.seen

    assert done["state"] == "completed", done
    assert done["redriven"] == 1 and done["failed_stage"] is None and done["reason"] is None
    assert {k: v["state"] for k, v in done["stages"].items()} == {s: "completed" for s in STAGES}
    counts = run_log_counts(runs)
    assert counts["left"] == {"start": 2, "end": 1}, counts
    assert all(c == {"start": 1, "end": 1} for s, c in counts.items() if s != "left"), counts
    # the re-emitted event is ingest's completion under a new id
    ingest_done = [
        e
        for e in seen
        if e["type"] == EventType.STAGE_COMPLETED.value and e["radflowstage"] == "ingest"
    ]
    assert len({e["id"] for e in ingest_done}) == 2
    assert len([e for e in seen if e["type"] == EventType.JOB_COMPLETED.value]) >= 1


def test_a_failed_fan_in_stage_is_redriven_by_one_event_carrying_its_join(
    tmp_path: Path,
    store_settings: StoreSettings,
    store: ObjectStore,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # join exits 3 until FIXED exists; its Triggers wait for its join attribute, so the re-drive
    # must re-emit an upstream completion carrying it (one event: one wake-up)
    fixed, runs = tmp_path / "fixed", tmp_path / "runs.log"
    pipeline = fan_in_example()
    join = next(op for op in pipeline["operators"] if op["name"] == "join")
    command = join["container"]["command"]
    sleep = "time.sleep(float(os.environ.get('SLEEP_SECONDS') or 0))"
    command[2] = command[2].replace(sleep, "(os.path.exists(os.environ['FIXED']) or sys.exit(3))")
    join["variables"]["FIXED"] = str(fixed)
    kn = compile_to(pipeline, tmp_path / "knative")
    with PipelineEngine(
        kn,
        tmp_path / "state",
        base_env=store_env(store_settings),
        service_env={"RUN_LOG": str(runs)},
    ) as engine:
        tracker = engine.host.url("job-tracker")
        req = seed_study(store, PIPELINE, series=1, instances=1)
        engine.publish(study_event(store, req))
        failed = finished(engine, req.job_id)
        assert (failed["state"], failed["failed_stage"]) == ("failed", "join"), failed
        engine.wait_idle()
        fixed.touch()
        assert jobs_cli.main(["jobs", "redrive", req.job_id, "--url", tracker]) == 0
        assert "re-driven (#1) from join: 1 event(s) published" in capsys.readouterr().out
        done = status_once(engine, req.job_id, lambda s: s != "running", "to finish again")
        engine.wait_idle()

    assert done["state"] == "completed", done
    counts = run_log_counts(runs)
    assert counts["join"] == {"start": 2, "end": 1}, counts
    assert counts["report"] == {"start": 1, "end": 1}, counts
