"""A job is its study content (group, pipeline, revision), never its event id, end to end.

Runs ``pipelines/examples/fan-in-example.yaml`` (ingest -> left, right -> join -> report)
through the real engine (tests/pipeline_support.py: ``PipelineEngine``); every operator appends
``start``/``end`` to ``RUN_LOG``, so a stage that runs again is counted. Events are POSTed to
the broker's ingress, as a sender on the network would.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from pipeline_support import (
    FAN_IN_EXAMPLE,
    PipelineEngine,
    compile_to,
    run_log_counts,
    seed_study,
    store_env,
    study_event,
    wait_until,
)
from radflow.sdk import events
from radflow.sdk.events import EventType
from radflow.sdk.settings import StoreSettings
from radflow.sdk.storage import ObjectStore

pytestmark = pytest.mark.slow
PIPELINE = "fan-in-example"
STAGES = ["ingest", "join", "left", "report", "right"]


def _engine(tmp_path: Path, store_settings: StoreSettings, runs: Path) -> PipelineEngine:
    kn = compile_to(FAN_IN_EXAMPLE, tmp_path / "knative")
    return PipelineEngine(
        kn,
        tmp_path / "state",
        base_env=store_env(store_settings),
        service_env={"RUN_LOG": str(runs)},
    )


def _final(engine: PipelineEngine, job_id: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def done() -> bool:
        try:
            seen.update(engine.job_status(job_id))
        except OSError:  # 404 until the tracker got the job's first event
            return False
        return bool(seen["state"] != "running")

    wait_until(done, f"job {job_id} to leave running", timeout=90)
    return seen


def test_replayed_job_event_with_a_new_id_runs_nothing_again(
    tmp_path: Path, store_settings: StoreSettings, store: ObjectStore
) -> None:
    runs = tmp_path / "runs.log"
    with _engine(tmp_path, store_settings, runs) as engine:
        req = seed_study(store, PIPELINE, series=1, instances=1)
        original = study_event(store, req)
        engine.publish(original)
        assert _final(engine, req.job_id)["state"] == "completed"
        engine.wait_idle()
        before = len(engine.seen)
        # the same job request under a new ce-id (a replay, or a sender retrying)
        engine.publish(events.with_attributes(original, id=str(uuid.uuid4())))
        engine.wait_idle()
        status = engine.job_status(req.job_id)
        replayed = engine.seen[before:]

    assert all(c == {"start": 1, "end": 1} for c in run_log_counts(runs).values())
    assert set(run_log_counts(runs)) == set(STAGES)
    assert status["state"] == "completed", status
    # the stages answered with their stored results (the same ids): no new stage event
    assert {e["id"] for e in replayed if e["type"] == EventType.STAGE_COMPLETED.value} <= {
        events.deterministic_id(req.job_id, s, "completed") for s in STAGES
    }
    # the job event is at most the same job.completed again (the reply to report's stored
    # completion, a redelivery to every consumer): no failure, no second outcome
    job_events = (EventType.JOB_COMPLETED.value, EventType.JOB_FAILED.value)
    assert {e["id"] for e in replayed if e["type"] in job_events} <= {
        events.deterministic_id(req.job_id, "job", "completed")
    }


def _forged(store: ObjectStore, req: events.JobRequested, **changes: Any) -> events.CloudEvent:
    """``req``'s event with its data changed (as given) under a new ce-id."""
    forged = req.model_copy(update=changes)
    event = study_event(store, forged)
    return events.with_attributes(event, id=str(uuid.uuid4()))


def test_forged_job_requests_are_refused_and_their_jobs_fail(
    tmp_path: Path, store_settings: StoreSettings, store: ObjectStore
) -> None:
    runs = tmp_path / "runs.log"
    with _engine(tmp_path, store_settings, runs) as engine:
        req = seed_study(store, PIPELINE, series=1, instances=1)
        # a made-up job id for a real study's manifest (what re-ran a whole pipeline before)
        made_up = _forged(store, req, job_id=str(uuid.uuid4()))
        # a job id derived as the adapter would, for a revision the manifest is not
        revision = _forged(
            store, req, revision=3, job_id=events.job_id_for(req.group_id, PIPELINE, 3)
        )
        # a made-up group whose job id is derived as the adapter would, and no manifest at all
        group = str(uuid.uuid4())
        no_manifest = _forged(
            store,
            req,
            group_id=group,
            manifest_key="studies/x/manifests/none.json",
            job_id=events.job_id_for(group, PIPELINE, 0),
        )
        for forged in (made_up, revision, no_manifest):
            engine.publish(forged)
        for forged in (made_up, revision, no_manifest):
            _final(engine, forged["radflowjob"])
        engine.wait_idle()
        first = engine.job_status(made_up["radflowjob"])
        second = engine.job_status(revision["radflowjob"])
        third = engine.job_status(no_manifest["radflowjob"])
        jobs = engine.jobs()

    assert not runs.exists(), run_log_counts(runs)  # no stage ran
    # the tracker refuses it itself, and the first stage (400, dead-lettered) too
    assert first["state"] == "failed", first
    assert first["reason"] in ("job_identity_mismatch", "dead_letter_400:job_identity_mismatch")
    assert first["failure"] == {
        "stage": None,
        "reason": "job_identity_mismatch",
        "message": "job_id is not the id of its (group_id, pipeline, revision)",
        "at": first["failure"]["at"],
    }
    # refused by the first stage (400 job_identity_mismatch), dead-lettered, failed by the tracker
    assert (second["state"], second["failed_stage"]) == ("failed", "ingest"), second
    assert second["reason"] == "dead_letter_400:job_identity_mismatch", second
    assert (third["state"], third["reason"]) == ("failed", "dead_letter_400:manifest_missing")
    assert [j["state"] for j in jobs] == ["failed", "failed", "failed"], jobs
