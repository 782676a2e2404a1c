"""The engine's Prometheus metrics: one registry, one endpoint (``/metrics``), per function.

Label ``function`` is the Knative Service name; ``trigger`` the Trigger name.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
