"""The adapter's process settings (env prefix ``RADFLOW_ADAPTER_``), read once at start-up.

The Clara YAML says *what* the adapter serves (AE titles, sources, pipelines); these settings say
*where* this process keeps its state and listens, so one image runs unchanged under Kubernetes
(spool on a PVC, ``K_SINK`` from a SinkBinding) and under ``radflow up`` (spool under the
engine's state folder, loopback only).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from radflow.sdk.settings import ServiceSettings


class AdapterSettings(ServiceSettings):
    """Environment: ``RADFLOW_ADAPTER_CONFIG``, ``RADFLOW_ADAPTER_SPOOL_DIR``, ... and
    ``K_SINK``."""

    model_config = SettingsConfigDict(env_prefix="RADFLOW_ADAPTER_", frozen=True, extra="ignore")

    config: Path | None = Field(
        None, description="Clara DICOM Adapter YAML; --config overrides it."
    )
    spool_dir: Path = Field(
        Path("/var/lib/radflow/dicom-adapter"),
        description="Durable spool; the PVC mount path in knative/adapter.yaml.",
    )
    host: str = Field(
        default_factory=lambda: (
            "0.0.0.0" if os.environ.get("KUBERNETES_SERVICE_HOST") else "127.0.0.1"
        ),
        description="Address the listeners bind: all interfaces in a pod, loopback elsewhere.",
    )
    dicom_port: int | None = Field(None, description="Overrides dicom.scp.port of the YAML.")
    rest_port: int = Field(
        5000, description="REST API and health endpoints (Clara's default 5000)."
    )
    sink: str | None = Field(
        None,
        validation_alias=AliasChoices("K_SINK", "RADFLOW_ADAPTER_SINK", "sink"),
        description="Broker URL the job events are POSTed to; a SinkBinding injects K_SINK.",
    )
    pipelines: str | None = Field(
        None,
        description="Comma-separated ids of the pipelines the engine runs (radflow up sets it "
        "from the Triggers); a REST pipeline mapping to any other id is refused. Unset: not "
        "checked.",
    )
    upload_workers: int = Field(8, ge=1, le=64, description="Threads draining the spool to S3.")
    drop_prefix: str = Field("inbox/", description="Bucket prefix watched for dropped DICOM files.")
    drop_poll_seconds: float = Field(
        2.0, ge=0, description="Poll interval of the drop trigger; 0 = off."
    )
    config_poll_seconds: float = Field(
        2.0,
        ge=0,
        description="How often the configuration file is checked for edits, which then apply "
        "without a restart (adapter/config_watch.py); 0 = only at start.",
    )
    drop_settle_seconds: float = Field(
        5.0,
        ge=0,
        description="The drop trigger takes a folder inbox/<AE>/ once its listing (keys, sizes, "
        "ETags) has not changed for this long: an upload in progress is not taken half-way. "
        "0 = take what is there at each poll.",
    )
    tick_seconds: float = Field(0.1, gt=0, description="How often timed-out groups are checked.")
    outbox_max_backoff: float = Field(30.0, gt=0, description="Cap of the outbox retry delay (s).")
    max_pdu: int = Field(
        131072, ge=0, description="Maximum PDU size the SCP advertises (0 = none)."
    )
    connect_timeout: float = Field(
        10.0,
        gt=0,
        description="ARTIM: seconds a DICOM connection has to deliver its complete "
        "A-ASSOCIATE-RQ before it is closed (adapter/port_guard.py).",
    )
    pdu_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds a started PDU has to arrive completely; also the send timeout.",
    )
    max_connections_per_host: int = Field(
        16,
        ge=1,
        description="DICOM connections (associated or not) one peer address may hold open; "
        "more are closed at accept.",
    )
    receivers: int = Field(
        2,
        ge=0,
        le=64,
        description="Receiver processes serving DICOM associations (adapter/receiver_pool.py); "
        "0 = serve them in the adapter process itself. "
        "About one per core of the container's CPU request.",
    )

    @property
    def known_pipelines(self) -> frozenset[str] | None:
        """:attr:`pipelines` as a set; ``None`` when unset (nothing to check against)."""
        if self.pipelines is None:
            return None
        return frozenset(p.strip() for p in self.pipelines.split(",") if p.strip())
