"""The adapter's Prometheus metrics, served on its REST port at ``GET /metrics``.

Read at scrape time from what the adapter keeps anyway (:meth:`Adapter.scp_counters`, summed
over receiver processes; the spool's index and outbox): nothing is counted twice, and a
receiver's counts arrive when its association ends. Names (docs/adapter.md, "Metrics"):

===========================================  =========  ==========================================
``radflow_adapter_instances_received``       counter    instances acknowledged (0x0000, durable)
``radflow_adapter_bytes_received``           counter    bytes of those instances
``radflow_adapter_refusals{status}``         counter    C-STOREs answered with a failure, by
                                                        DIMSE status (``0xA900``, ``0xC000`` ...)
``radflow_adapter_associations{result}``     counter    ``accepted`` / ``rejected``
``radflow_adapter_associations_active``      gauge      associations being served now
``radflow_adapter_spool_instances{state}``   gauge      ``waiting_upload`` / ``indexed`` (not yet
                                                        emitted)
``radflow_adapter_outbox_events{state}``     gauge      job events ``pending`` / ``sent``
``radflow_adapter_upload_parked``            gauge      instances the store refused (parked)
``radflow_adapter_drop{outcome}``            counter    drop trigger: ``ingested``/``quarantined``
===========================================  =========  ==========================================

Counters are exposed with the ``_total`` suffix (``radflow_adapter_instances_received_total``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from radflow.sdk.metrics import CollectorRegistry, Family, SnapshotCollector

if TYPE_CHECKING:
    from radflow.adapter.app import Adapter

REFUSED = "refused_0x"


def families(adapter: Adapter) -> Iterator[Family]:
    counters = adapter.scp_counters()
    yield Family(
        "radflow_adapter_instances_received",
        "Instances acknowledged with Success (durable in the spool)",
        "counter",
        samples={(): counters.get("stored", 0)},
    )
    yield Family(
        "radflow_adapter_bytes_received",
        "Bytes of the instances acknowledged with Success",
        "counter",
        samples={(): counters.get("bytes_received", 0)},
    )
    yield Family(
        "radflow_adapter_refusals",
        "C-STORE requests answered with a failure status, by DIMSE status",
        "counter",
        ("status",),
        {(f"0x{k[len(REFUSED) :]}",): v for k, v in counters.items() if k.startswith(REFUSED)},
    )
    yield Family(
        "radflow_adapter_associations",
        "Associations by A-ASSOCIATE result",
        "counter",
        ("result",),
        {
            ("accepted",): counters.get("accepted_associations", 0),
            ("rejected",): counters.get("rejected_associations", 0),
        },
    )
    active = (
        adapter.receivers.describe()["associations"]
        if adapter.receivers is not None
        else adapter.handlers.live_associations()
    )
    yield Family(
        "radflow_adapter_associations_active",
        "Associations being served",
        "gauge",
        samples={(): active},
    )
    spool = adapter.spool.stats()
    yield Family(
        "radflow_adapter_spool_instances",
        "Instances in the spool: waiting for their upload, indexed and not yet emitted",
        "gauge",
        ("state",),
        {("waiting_upload",): spool["spooled"], ("indexed",): spool["indexed"]},
    )
    outbox = adapter.spool.outbox.counts()
    yield Family(
        "radflow_adapter_outbox_events",
        "Job events in the outbox by state",
        "gauge",
        ("state",),
        {("pending",): outbox.get("pending", 0), ("sent",): outbox.get("sent", 0)},
    )
    yield Family(
        "radflow_adapter_upload_parked",
        "Instances whose upload the object store refused (parked until a restart)",
        "gauge",
        samples={(): sum(adapter.uploader.parked().values())},
    )
    yield Family(
        "radflow_adapter_drop",
        "Objects taken from the drop inbox, by outcome",
        "counter",
        ("outcome",),
        {("ingested",): adapter.drop.ingested, ("quarantined",): adapter.drop.quarantined},
    )


def registry(adapter: Adapter) -> CollectorRegistry:
    """The adapter's registry: its families, read at each scrape."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SnapshotCollector(lambda: list(families(adapter))))
    return reg
