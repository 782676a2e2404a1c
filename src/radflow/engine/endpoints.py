"""Where a user connects to the DICOM adapter the engine runs: DICOM host:port, AE titles, REST.

``radflow status`` shows every endpoint; the adapter's own two (DICOM and its REST API) are not
in any manifest field the engine owns but in the adapter's environment
(``RADFLOW_ADAPTER_HOST``, ``_DICOM_PORT``, ``_REST_PORT``) and in its Clara YAML
(``dicom.scp.port``, ``dicom.scp.ae-titles``), so they are read from there, the same way the
adapter reads them (:class:`radflow.adapter.settings.AdapterSettings`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from radflow.adapter.config import load_yaml
from radflow.adapter.settings import AdapterSettings
from radflow.sdk.errors import ConfigError

#: the module a Deployment runs when it is the DICOM adapter (``python -m radflow.adapter``)
ADAPTER_MODULE = "radflow.adapter"


def is_adapter(container: dict[str, Any]) -> bool:
    argv = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
    return ADAPTER_MODULE in argv


def adapter_endpoints(name: str, env: dict[str, str], config: Path | None) -> dict[str, Any]:
    """The DICOM and REST endpoints of the adapter Deployment ``name`` started with ``env``.

    ``ae_titles`` are those of the configuration file; REST changes are not in it (the CLI asks
    the REST API for the live list).
    """
    fields = AdapterSettings.model_fields
    host = env.get("RADFLOW_ADAPTER_HOST") or "127.0.0.1"
    rest_port = int(env.get("RADFLOW_ADAPTER_REST_PORT") or fields["rest_port"].default)
    port: int | None = None
    ae_titles: list[str] = []
    problem = None
    if config is not None:
        try:
            adapter_config = load_yaml(config)
        except ConfigError as exc:
            problem = str(exc)
        else:
            port = adapter_config.port
            ae_titles = [ae.ae_title for ae in adapter_config.ae_titles]
    if env.get("RADFLOW_ADAPTER_DICOM_PORT"):
        port = int(env["RADFLOW_ADAPTER_DICOM_PORT"])
    if port is None:
        port = 104  # AdapterConfig's default: no file, the persisted configuration only
    shown = "127.0.0.1" if host == "0.0.0.0" else host
    return {
        "name": name,
        "dicom": f"{shown}:{port}",
        "ae_titles": ae_titles,
        "rest_api": f"http://{shown}:{rest_port}",
        "config": str(config) if config else None,
        "config_problem": problem,
    }
