"""A fan-out / fan-in DAG of small operators, end to end through the real engine.

Runs ``pipelines/examples/fan-in-example.yaml`` (ingest -> left, right -> join -> report),
compiled by ``radflow pipeline compile``, through the engine's durable broker (Knative Trigger
filters, retries, replies, dead letters) and function host (activator, scale from zero), each
Service a real functions-framework process (tests/pipeline_support.py: ``PipelineEngine``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline_support import (
    PipelineEngine,
    compile_to,
    fan_in_example,
    metric_total,
    run_log_counts,
    seed_study,
    store_env,
    study_event,
    wait_until,
)
from radflow.sdk.events import JOIN_READY, EventType, join_attribute
from radflow.sdk.settings import StoreSettings
from radflow.sdk.storage import Keys, ObjectStore

pytestmark = pytest.mark.slow
STAGES = ["ingest", "join", "left", "report", "right"]
JOIN = "fan-in-example-join"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def dead_letters() -> float:
    return metric_total("radflow_broker_dead_letters_total")


def test_duplicated_deliveries_run_every_stage_exactly_once(
    tmp_path: Path, store_settings: StoreSettings, store: ObjectStore
) -> None:
    kn = compile_to(fan_in_example(), tmp_path / "knative")
    runs = tmp_path / "runs.log"
    dead_before = dead_letters()
    with PipelineEngine(
        kn,
        tmp_path / "state",
        base_env=store_env(store_settings),
        service_env={"RUN_LOG": str(runs)},
        twin_triggers=True,  # every event reaches every subscriber twice
    ) as engine:
        req = seed_study(store, "fan-in-example", series=2, instances=2)
        ev = study_event(store, req, traceparent=TRACEPARENT)
        engine.publish(ev)
        engine.publish(ev)  # the adapter's own retry: same id
        engine.wait_idle()
        status = engine.job_status(req.job_id)
        seen = engine.seen

    counts = run_log_counts(runs)
    assert {s: c["end"] for s, c in counts.items()} == {s: 1 for s in STAGES}
    assert {s: c["start"] for s, c in counts.items()} == {s: 1 for s in STAGES}
    # the fan-in stage's output holds both branches' copies of the study (4 instances each)
    join_keys = [i.key for i in store.list(Keys.stage_output(req.job_id, "join", "default"))]
    assert len(join_keys) == 8
    report = [i.key for i in store.list(Keys.stage_output(req.job_id, "report", "report"))]
    assert len(report) == 8
    # the broker saw the request twice and each stage's completion at least twice (duplicated
    # deliveries are answered with the stored result), all with one deterministic id per stage
    assert [e["id"] for e in seen if e["type"] == EventType.STUDY_RECEIVED.value] == [ev["id"]] * 2
    completions = [e for e in seen if e["type"] == EventType.STAGE_COMPLETED.value]
    assert sorted({e["id"]: e["radflowstage"] for e in completions}.values()) == STAGES
    assert len(completions) > len(STAGES)
    for e in completions:
        assert e["traceparent"] == TRACEPARENT and e["subject"] == req.study_id
    job_events = {e["id"] for e in seen if e["type"] == EventType.JOB_COMPLETED.value}
    assert len(job_events) == 1
    assert status["state"] == "completed", status
    assert {k: v["state"] for k, v in status["stages"].items()} == {s: "completed" for s in STAGES}
    assert status["stages"]["join"]["log"].endswith("/join/log.jsonl")
    assert status["dead_letters"] == []
    assert dead_letters() == dead_before


def test_function_killed_mid_run_is_redone_once_by_the_retry(
    tmp_path: Path, store_settings: StoreSettings, store: ObjectStore
) -> None:
    # join waits at a gate the test opens only after it killed join's process: the kill always
    # lands mid-run, and the redone run passes the gate at once
    gate, runs = tmp_path / "gate", tmp_path / "runs.log"
    pipeline = fan_in_example()
    join = next(op for op in pipeline["operators"] if op["name"] == "join")
    command = join["container"]["command"]
    sleep = "time.sleep(float(os.environ.get('SLEEP_SECONDS') or 0))"
    assert sleep in command[2]
    command[2] = command[2].replace(
        sleep, "while not os.path.exists(os.environ['GATE']): time.sleep(0.05)"
    )
    join["variables"]["GATE"] = str(gate)
    kn = compile_to(pipeline, tmp_path / "knative")

    def join_calls(code: str) -> float:
        return metric_total(
            "radflow_function_invocations_total",
            function=lambda f: f == JOIN,
            code=lambda c: c == code,
        )

    def join_retries() -> float:
        return metric_total("radflow_broker_retries_total", function=lambda f: f == JOIN)

    cut_before, retries_before = join_calls("502"), join_retries()
    # a 2 s claim lease (30 s compiled) so the broker's retry may take the dead run's claim over
    with PipelineEngine(
        kn,
        tmp_path / "state",
        base_env=store_env(store_settings),
        service_env={"RUN_LOG": str(runs), "RADFLOW_CLAIM_LEASE_SECONDS": "2"},
    ) as engine:
        req = seed_study(store, "fan-in-example", series=1, instances=2)
        engine.publish(study_event(store, req))
        wait_until(lambda: run_log_counts(runs).get("join", {}).get("start") == 1, "join to run")
        assert engine.kill(JOIN)  # every join process (the fan-in may have scaled it to two)
        wait_until(lambda: engine.instances(JOIN) == [], "the killed process to be reaped")
        gate.touch()
        engine.wait_idle()
        status = engine.job_status(req.job_id)

    counts = run_log_counts(runs)
    assert counts["join"] == {"start": 2, "end": 1}, counts
    assert all(c["end"] == 1 for c in counts.values()), counts
    # the killed run's request was cut (502 from the activator) and the broker retried it
    assert join_calls("502") >= cut_before + 1
    assert join_retries() > retries_before
    assert len(list(store.list(Keys.stage_output(req.job_id, "report", "report")))) == 4
    assert status["state"] == "completed", status
    assert status["dead_letters"] == []


def test_a_fan_in_stage_is_woken_once_when_its_inputs_are_complete(
    tmp_path: Path, store_settings: StoreSettings, store: ObjectStore
) -> None:
    # right finishes a second after left: left's completion must not wake join (before the
    # join attribute it did, and join answered "waiting" with a 202), right's wakes it once
    pipeline = fan_in_example()
    right = next(op for op in pipeline["operators"] if op["name"] == "right")
    right["variables"]["SLEEP_SECONDS"] = "1"
    kn = compile_to(pipeline, tmp_path / "knative")
    runs = tmp_path / "runs.log"

    def join_calls() -> float:
        return metric_total("radflow_function_invocations_total", function=lambda f: f == JOIN)

    before = join_calls()
    with PipelineEngine(
        kn,
        tmp_path / "state",
        base_env=store_env(store_settings),
        service_env={"RUN_LOG": str(runs)},
    ) as engine:
        req = seed_study(store, "fan-in-example", series=1, instances=2)
        engine.publish(study_event(store, req))
        engine.wait_idle()
        status = engine.job_status(req.job_id)
        completions = engine.of_type(EventType.STAGE_COMPLETED)

    assert status["state"] == "completed", status
    assert join_calls() == before + 1  # one request to the fan-in stage's function
    assert run_log_counts(runs)["join"] == {"start": 1, "end": 1}
    flag = join_attribute("join")
    assert [e["radflowstage"] for e in completions if e.get(flag) == JOIN_READY] == ["right"]
