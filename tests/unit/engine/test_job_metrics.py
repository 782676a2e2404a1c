"""JobClock: job outcomes, durations and export failures from the events the broker accepts."""

from __future__ import annotations

from radflow.engine.metrics import EXPORT_FAILURES, JOB_DURATION, JOBS, JobClock
from radflow.sdk.events import EventType
from radflow.sdk.metrics import exposition, relabelled


def _value(metric: object, *labels: str, suffix: str = "_total") -> float:
    name = metric._name + suffix  # type: ignore[attr-defined]
    for fam in metric.collect():  # type: ignore[attr-defined]
        for s in fam.samples:
            if s.name == name and tuple(s.labels.values()) == labels:
                return float(s.value)
    return 0.0


def test_a_job_is_timed_from_its_request_to_its_outcome() -> None:
    now = [100.0]
    clock = JobClock(max_jobs=2, clock=lambda: now[0])
    job = {"radflowjob": "j1", "radflowpipeline": "unit-p"}
    clock.observe({"type": EventType.STUDY_RECEIVED, **job}, {})
    now[0] = 112.5
    clock.observe({"type": EventType.STUDY_REVISED, **job}, {})  # the first request counts
    clock.observe({"type": EventType.JOB_FAILED, **job}, {})
    assert _value(JOBS, "unit-p", "failed") == 1
    assert _value(JOB_DURATION, "unit-p", "failed", suffix="_sum") == 12.5


def test_a_job_started_before_the_engine_is_counted_without_a_duration() -> None:
    clock = JobClock(max_jobs=1)
    for j in ("a", "b"):  # "a" is forgotten: at most one start time kept
        clock.observe({"type": EventType.STUDY_RECEIVED, "radflowjob": j}, None)
    clock.observe(
        {"type": EventType.JOB_COMPLETED, "radflowjob": "a", "radflowpipeline": "q"}, None
    )
    assert _value(JOBS, "q", "completed") == 1
    assert _value(JOB_DURATION, "q", "completed", suffix="_count") == 0


def test_refused_files_count_per_destination() -> None:
    clock = JobClock()
    summary = {"summary": {"failed_by_destination": {"UNIT-A": 3, "UNIT-B": 0}}}
    clock.observe({"type": EventType.STAGE_COMPLETED}, summary)
    clock.observe({"type": EventType.STAGE_COMPLETED}, {"summary": {"files": 3}})
    assert _value(EXPORT_FAILURES, "UNIT-A") == 3
    assert _value(EXPORT_FAILURES, "UNIT-B") == 0


def test_scraped_texts_merge_into_one_family_per_name_labelled_by_origin() -> None:
    text = '# TYPE x_total counter\nx_total{status="0xC000"} 2.0\n'
    out = exposition(relabelled({"a1": text, "a2": text}, "deployment")).decode()
    assert out.count("# TYPE x_total counter") == 1
    assert 'x_total{deployment="a1",status="0xC000"} 2.0' in out
    assert 'x_total{deployment="a2",status="0xC000"} 2.0' in out
