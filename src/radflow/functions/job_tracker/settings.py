"""Job tracker settings: which pipelines exist and what their DAGs are (written by the compiler),
and how long a job may go without progress before it is failed."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class TrackerSettings(BaseSettings):
    """Env prefix ``RADFLOW_``."""

    model_config = SettingsConfigDict(env_prefix="RADFLOW_", frozen=True, extra="ignore")

    dags: dict[str, dict[str, list[str]]] = Field(
        default_factory=dict,
        description=(
            "RADFLOW_DAGS: JSON {pipeline: {stage: [upstream stages]}}, "
            "from `radflow pipeline compile`."
        ),
    )
    job_deadline_seconds: float = Field(
        1200.0,
        gt=0,
        description=(
            "RADFLOW_JOB_DEADLINE_SECONDS: a running job whose stages made no progress for this "
            "long is failed with reason deadline_exceeded. Default 1200: twice the longest "
            "timeoutSeconds a stage may have (600, Knative's maximum)."
        ),
    )
    broker_url: str | None = Field(
        None,
        validation_alias=AliasChoices("K_SINK", "RADFLOW_BROKER_URL"),
        description=(
            "K_SINK (a SinkBinding) or RADFLOW_BROKER_URL: the Broker ingress a re-drive "
            "(POST /jobs/<id>/redrive) publishes the re-emitted events to."
        ),
    )
