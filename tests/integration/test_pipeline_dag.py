"""A fan-out / fan-in DAG of small operators, end to end through real function processes.

Runs ``pipelines/examples/fan-in-example.yaml`` (ingest -> left, right -> join -> report),
compiled by ``radflow pipeline compile``, with every Knative Service as a real
functions-framework process and ``MiniBroker`` delivering events as a Knative broker would
(see tests/pipeline_support.py: a stand-in until the engine's broker and function host are
merged; swap the fixture to run the same assertions through the engine).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline_support import MiniBroker, run_log_counts, seed_study, store_env, study_event
from radflow.engine.compiler import compile_pipelines, write_files
from radflow.sdk import events
from radflow.sdk.events import EventType
from radflow.sdk.settings import StoreSettings
from radflow.sdk.storage import Keys, ObjectStore

pytestmark = pytest.mark.slow
EXAMPLE = "pipelines/examples/fan-in-example.yaml"
STAGES = ["ingest", "join", "left", "report", "right"]


@pytest.fixture
def knative_dir(tmp_path: Path, repo_root: Path) -> Path:
    out = tmp_path / "knative"
    write_files(compile_pipelines([repo_root / EXAMPLE], out, root=repo_root))
    return out


def _broker(
    knative_dir: Path, tmp_path: Path, store_settings: StoreSettings, **kw: object
) -> MiniBroker:
    env = {
        **store_env(store_settings),
        "RUN_LOG": str(tmp_path / "runs.log"),
        "RADFLOW_CLAIM_LEASE_SECONDS": "2",
    }
    env.update(kw.pop("env", {}))  # type: ignore[arg-type]
    (tmp_path / "logs").mkdir(exist_ok=True)
    return MiniBroker(knative_dir, env, tmp_path / "logs", **kw)  # type: ignore[arg-type]


@pytest.fixture
def broker(
    knative_dir: Path, tmp_path: Path, store_settings: StoreSettings, store: ObjectStore
) -> Iterator[MiniBroker]:
    b = _broker(knative_dir, tmp_path, store_settings, duplicates=2)
    b.start()
    yield b
    b.stop()


def _completed_types(b: MiniBroker) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for ev in b.published:
        out.setdefault(ev["type"], []).append(ev.get("radflowstage") or "")
    return out


def test_duplicated_deliveries_run_every_stage_exactly_once(
    broker: MiniBroker, store: ObjectStore, tmp_path: Path
) -> None:
    req = seed_study(store, "fan-in-example", series=2, instances=2)
    ev = study_event(
        store, req, traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    )
    broker.publish(ev)
    broker.publish(ev)  # the adapter's own retry: same id
    broker.wait_idle()

    counts = run_log_counts(tmp_path / "runs.log")
    assert {s: c["end"] for s, c in counts.items()} == {s: 1 for s in STAGES}
    assert {s: c["start"] for s, c in counts.items()} == {s: 1 for s in STAGES}
    # the fan-in stage's output holds both branches' copies of the study (4 instances each)
    join_keys = [i.key for i in store.list(Keys.stage_output(req.job_id, "join", "default"))]
    assert len(join_keys) == 8
    report = [i.key for i in store.list(Keys.stage_output(req.job_id, "report", "report"))]
    assert len(report) == 8
    # one distinct completion per stage (duplicates carry the same deterministic id)
    completed = {
        e["id"]: e["radflowstage"]
        for e in broker.published
        if e["type"] == EventType.STAGE_COMPLETED.value
    }
    assert sorted(completed.values()) == STAGES
    for e in broker.published:
        if e["type"] == EventType.STAGE_COMPLETED.value:
            assert e["traceparent"] == ev["traceparent"] and e["subject"] == req.study_id
    job_events = {e["id"] for e in broker.published if e["type"] == EventType.JOB_COMPLETED.value}
    assert len(job_events) == 1
    status = broker.job_status(req.job_id)
    assert status["state"] == "completed"
    assert {k: v["state"] for k, v in status["stages"].items()} == {s: "completed" for s in STAGES}
    assert status["stages"]["join"]["log"].endswith("/join/log.jsonl")
    assert not broker.dead_letters


def test_function_killed_mid_run_is_redone_once_by_the_retry(
    knative_dir: Path, tmp_path: Path, store_settings: StoreSettings, store: ObjectStore
) -> None:
    b = _broker(
        knative_dir, tmp_path, store_settings, env={"SLEEP_SECONDS": "1.5"}, backoff_delay=0.5
    )
    killed = threading.Event()
    target = "fan-in-example-join"

    def kill_join(service: str, event: events.CloudEvent, attempt: int) -> None:
        # the first delivery that will run join: kill its process 0.5 s into the run, then
        # bring a fresh process up (the function host scaling from zero)
        if service == target and not killed.is_set() and attempt == 0:

            def later() -> None:
                import time

                time.sleep(0.7)
                if not killed.is_set():
                    killed.set()
                    b.restart(target)

            threading.Thread(target=later, daemon=True).start()

    b.before_delivery = kill_join
    b.start()
    try:
        req = seed_study(store, "fan-in-example", series=1, instances=2)
        b.publish(study_event(store, req))
        b.wait_idle(timeout=120)
        status = b.job_status(req.job_id)
    finally:
        b.stop()
    assert killed.is_set()
    counts = run_log_counts(tmp_path / "runs.log")
    assert counts["join"]["end"] == 1, counts
    assert all(c["end"] == 1 for c in counts.values()), counts
    # the killed run's delivery saw a transport error, then 503 while the lease was fresh
    statuses = [d.status for d in b.deliveries if d.trigger.startswith(target)]
    assert -1 in statuses or 503 in statuses, statuses
    assert len([i for i in store.list(Keys.stage_output(req.job_id, "report", "report"))]) == 4
    assert status["state"] == "completed"
