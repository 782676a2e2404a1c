"""The fan-out / fan-in example through the real engine: BrokerRuntime + FunctionHost.

The same assertions as test_pipeline_dag.py's duplicated-delivery test, with the engine's
durable broker (Knative MT semantics) and function host (activator, scale from zero) instead of
``MiniBroker``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline_support import EngineDriver, run_log_counts, seed_study, store_env, study_event
from radflow.engine.compiler import compile_pipelines, write_files
from radflow.sdk.events import EventType
from radflow.sdk.settings import StoreSettings
from radflow.sdk.storage import Keys, ObjectStore

pytestmark = pytest.mark.slow
STAGES = ["ingest", "join", "left", "report", "right"]


def test_fan_in_example_through_the_engine_runs_each_stage_once(
    tmp_path: Path, repo_root: Path, store_settings: StoreSettings, store: ObjectStore
) -> None:
    # a Service's own env wins over the engine's base env (as on Knative): put RUN_LOG in the pipeline
    src = tmp_path / "fan-in-example.yaml"
    src.write_text(
        (repo_root / "pipelines/examples/fan-in-example.yaml")
        .read_text()
        .replace('RUN_LOG: ""', f"RUN_LOG: {tmp_path / 'runs.log'}")
    )
    kn = tmp_path / "knative"
    write_files(compile_pipelines([src], kn, root=tmp_path))
    engine = EngineDriver(kn, store_env(store_settings), tmp_path / "state")
    engine.start()
    try:
        req = seed_study(store, "fan-in-example", series=2, instances=2)
        ev = study_event(store, req)
        engine.publish(ev)
        engine.publish(ev)  # the adapter's own retry: same id, delivered twice by the broker
        engine.wait_idle(timeout=120)
        status = engine.job_status(req.job_id)
    finally:
        engine.stop()
    counts = run_log_counts(tmp_path / "runs.log")
    assert {s: c["end"] for s, c in counts.items()} == {s: 1 for s in STAGES}
    assert status["state"] == "completed", status
    assert len(list(store.list(Keys.stage_output(req.job_id, "report", "report")))) == 8
    assert status["stages"]["join"]["state"] == "completed"
    assert EventType.STUDY_RECEIVED.value in {e["type"] for e in engine.published}
