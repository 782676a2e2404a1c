"""Typed, frozen settings read once per process from the environment.

Every process builds its settings in its composition root, so a bad value stops it at start-up
rather than halfway through a study. Each deployable subclasses :class:`ServiceSettings` with
its own ``env_prefix``; the object store settings are shared by all of them.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Base for every process's settings (env prefix ``RADFLOW_``)."""

    model_config = SettingsConfigDict(env_prefix="RADFLOW_", frozen=True, extra="ignore")

    log_level: str = Field("INFO", description="Python logging level name.")
    log_format: str = Field("json", description="'json' (one object per line) or 'text'.")


class StoreSettings(BaseSettings):
    """Where the S3-compatible object store is (env prefix ``RADFLOW_S3_``)."""

    model_config = SettingsConfigDict(env_prefix="RADFLOW_S3_", frozen=True, extra="ignore")

    endpoint_url: str | None = Field(
        None, description="S3 endpoint, e.g. http://127.0.0.1:8333; unset means AWS."
    )
    bucket: str = Field("radflow", description="Bucket holding studies, manifests and outputs.")
    region: str = Field("us-east-1", description="Region name passed to the S3 client.")
    access_key_id: SecretStr = Field(SecretStr("radflow"), description="S3 access key id.")
    secret_access_key: SecretStr = Field(SecretStr("radflow"), description="S3 secret key.")
    max_pool_connections: int = Field(16, description="HTTP connections the client keeps.")
