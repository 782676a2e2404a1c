"""Job tracker settings: which pipelines exist and what their DAGs are (written by the compiler)."""

from __future__ import annotations

from pydantic import Field
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
