"""The engine's Prometheus metrics: one registry, one endpoint (``/metrics``), per function.

Label ``function`` is the Knative Service name; ``trigger`` the Trigger name. Job and export
metrics are read from the events crossing the broker (:class:`JobClock`): a job starts when its
``study.received``/``study.revised`` event is accepted and ends with the tracker's
``job.completed``/``job.failed``; files a destination refused are in scu-export's
``stage.completed`` summary (``failed_by_destination``). The DICOM adapter's own metrics
(:mod:`radflow.adapter.metrics`) are scraped from each adapter and served here too, labelled
``deployment`` (``Engine._metrics_handler``).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Mapping
from typing import Any

from radflow.sdk.events import EventType, Ext
from radflow.sdk.metrics import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

INVOCATIONS = Counter(
    "radflow_function_invocations",
    "Requests answered by a function",
    ["function", "code"],
    registry=REGISTRY,
)
DURATION = Histogram(
    "radflow_function_duration_seconds",
    "Request duration through the function host, hold time included",
    ["function"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
    registry=REGISTRY,
)
COLD_STARTS = Counter(
    "radflow_function_cold_starts", "Processes started from zero", ["function"], registry=REGISTRY
)
COLD_START_SECONDS = Histogram(
    "radflow_function_cold_start_seconds",
    "Process spawn to ready",
    ["function"],
    buckets=(0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30),
    registry=REGISTRY,
)
INSTANCES = Gauge(
    "radflow_function_instances", "Running processes", ["function"], registry=REGISTRY
)
RETRIES = Counter(
    "radflow_broker_retries", "Delivery retries", ["trigger", "function"], registry=REGISTRY
)
DEAD_LETTERS = Counter(
    "radflow_broker_dead_letters",
    "Events sent to a dead-letter sink",
    ["trigger", "function"],
    registry=REGISTRY,
)
DELIVERIES = Counter(
    "radflow_broker_deliveries",
    "Delivery attempts by outcome",
    ["trigger", "function", "outcome"],
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "radflow_broker_queue_depth",
    "Deliveries waiting or in flight",
    ["trigger", "function"],
    registry=REGISTRY,
)
INGRESS = Counter(
    "radflow_broker_ingress",
    "Events accepted at the broker ingress",
    ["broker", "code"],
    registry=REGISTRY,
)
SCRAPE_FAILURES = Counter(
    "radflow_metrics_scrape_failures",
    "Scrapes of a DICOM adapter's /metrics that got no answer",
    ["deployment"],
    registry=REGISTRY,
)
JOBS = Counter(
    "radflow_jobs",
    "Jobs finished, by pipeline and outcome (completed / failed)",
    ["pipeline", "outcome"],
    registry=REGISTRY,
)
JOB_DURATION = Histogram(
    "radflow_job_duration_seconds",
    "Job request accepted by the broker to job.completed/job.failed accepted, per pipeline",
    ["pipeline", "outcome"],
    buckets=(1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600),
    registry=REGISTRY,
)
EXPORT_FAILURES = Counter(
    "radflow_export_failures",
    "Result files a DICOM destination refused (scu-export), per destination",
    ["destination"],
    registry=REGISTRY,
)

_OUTCOME = {EventType.JOB_COMPLETED: "completed", EventType.JOB_FAILED: "failed"}
_STARTS = (EventType.STUDY_RECEIVED, EventType.STUDY_REVISED)


class JobClock:
    """Job outcomes and durations from the events the broker accepts.

    Start times are kept in memory for at most ``max_jobs`` jobs (the oldest are forgotten): a
    job that started before the engine did is counted, without a duration.
    """

    def __init__(self, max_jobs: int = 10000, clock: Callable[[], float] = time.time) -> None:
        self.max_jobs = max_jobs
        self.clock = clock
        self._started: collections.OrderedDict[str, float] = collections.OrderedDict()

    def observe(self, attrs: Mapping[str, Any], data: Any) -> None:
        kind, job = attrs.get("type"), str(attrs.get(Ext.JOB) or "")
        if kind in _STARTS and job:
            if job not in self._started:
                self._started[job] = self.clock()
                while len(self._started) > self.max_jobs:
                    self._started.popitem(last=False)
        elif kind in _OUTCOME:
            pipeline, outcome = str(attrs.get(Ext.PIPELINE) or "-"), _OUTCOME[kind]
            JOBS.labels(pipeline, outcome).inc()
            started = self._started.pop(job, None)
            if started is not None:
                JOB_DURATION.labels(pipeline, outcome).observe(max(0.0, self.clock() - started))
        elif kind == EventType.STAGE_COMPLETED and isinstance(data, dict):
            failed = (data.get("summary") or {}).get("failed_by_destination") or {}
            for destination, count in failed.items() if isinstance(failed, dict) else ():
                if isinstance(count, int) and count > 0:
                    EXPORT_FAILURES.labels(str(destination)).inc(count)


JOB_CLOCK = JobClock()
