"""Prometheus metrics: the only module that imports ``prometheus_client``.

Each process keeps its own :class:`CollectorRegistry` and serves it as text
(:func:`exposition`): the engine on its control server's ``/metrics``, the DICOM adapter on its
REST port's ``/metrics``. Values a process already keeps (counters, queue depths) are exposed
at scrape time by a :class:`SnapshotCollector` rather than mirrored in a second set of
counters. :func:`relabelled` lets the engine fold the adapter's metrics into its own endpoint
(docs/engine.md, "Metrics").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

__all__ = [
    "CONTENT_TYPE",
    "CollectorRegistry",
    "Counter",
    "Family",
    "Gauge",
    "Histogram",
    "SnapshotCollector",
    "exposition",
    "relabelled",
]

CONTENT_TYPE = CONTENT_TYPE_LATEST


def exposition(*collectors: CollectorRegistry | Collector) -> bytes:
    """The Prometheus text format of ``collectors`` (registries or single collectors), in order."""
    out = b""
    for c in collectors:
        if isinstance(c, CollectorRegistry):
            out += generate_latest(c)
        else:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(c)
            out += generate_latest(registry)
    return out


@dataclass
class Family:
    """One metric family read at scrape time: ``samples`` maps label values to a value."""

    name: str
    help: str
    kind: str  # "counter" or "gauge"
    labels: tuple[str, ...] = ()
    samples: dict[tuple[str, ...], float] = field(default_factory=dict)


class SnapshotCollector(Collector):
    """Families computed by ``read()`` at each scrape (values the process keeps anyway)."""

    def __init__(self, read: Callable[[], Iterable[Family]]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        for fam in self.read():
            metric: CounterMetricFamily | GaugeMetricFamily
            if fam.kind == "counter":
                metric = CounterMetricFamily(fam.name, fam.help, labels=list(fam.labels))
            else:
                metric = GaugeMetricFamily(fam.name, fam.help, labels=list(fam.labels))
            for values, value in sorted(fam.samples.items()):
                metric.add_metric(list(values), value)
            yield metric


class _Static(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def relabelled(texts: Mapping[str, str], label: str) -> Collector:
    """The families of several scraped endpoints as one collector, each sample labelled
    ``label=<key of texts>`` (e.g. ``deployment="radflow-dicom-adapter"``), families of the
    same name merged."""
    merged: dict[str, Metric] = {}
    for origin, text in texts.items():
        for fam in text_string_to_metric_families(text):
            into = merged.setdefault(fam.name, Metric(fam.name, fam.documentation, fam.type))
            for s in fam.samples:
                into.add_sample(s.name, {label: origin, **s.labels}, s.value, s.timestamp)
    return _Static(list(merged.values()))
