"""The adapter's configuration: Clara DICOM Adapter YAML in, validated models, Clara JSON out.

Three shapes of the same facts:

* the **Clara YAML** an operator writes (``dicom.scp.ae-titles``, ``dicom.scp.sources``,
  ``dicom.scu.destinations``, ``pipeline-mappings`` ...), read by :func:`load_yaml`;
* the **effective document** persisted in the object store at ``config/dicom-adapter.json``
  (flat, Clara's hyphenated field names; the scu-export function reads ``destinations`` from
  it), written by :meth:`AdapterConfig.effective_document`;
* the **Clara REST bodies** (camelCase: ``aeTitle``, ``hostIp``, ``processorSettings``) of
  ``/api/config/{claraaetitle,sourceaetitle,destinationaetitle}``.

Everything here is pure: no I/O except :func:`load_yaml` reading one file.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from radflow.sdk.errors import ConfigError, InvalidInput

#: key of the effective configuration in the object store
CONFIG_KEY = "config/dicom-adapter.json"

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_TAG = re.compile(r"^\(?\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)?$")
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9\-.]{0,252})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")


def check_ae_title(value: str) -> str:
    """DICOM PS3.5 AE VR: 1-16 characters of the default repertoire, no backslash/controls."""
    if not isinstance(value, str):
        raise ValueError("AE title must be a string")
    stripped = value.strip()
    if (
        not stripped
        or len(value) > 16
        or "\\" in value
        or any(ord(c) < 0x20 or ord(c) > 0x7E for c in value)
    ):
        raise ValueError("AE title must be 1-16 printable ASCII characters without backslash")
    return stripped


def parse_tag(value: str) -> int:
    """``"0020,000D"`` / ``"(0020,000d)"`` -> ``0x0020000D``."""
    match = _TAG.match(str(value))
    if not match:
        raise ValueError(f"tag {value!r} is not of the form 'gggg,eeee'")
    return int(match.group(1) + match.group(2), 16)


class _Model(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, hide_input_in_errors=True
    )


class ClaraAeTitle(_Model):
    """One SCP AE title of the adapter (Clara's ``ClaraApplicationEntity``)."""

    name: str
    ae_title: str = Field(alias="ae-title")
    overwrite_same_instance: bool = Field(False, alias="overwrite-same-instance")
    ignored_sop_classes: tuple[str, ...] = Field((), alias="ignored-sop-classes")
    timeout: float = Field(
        5.0, ge=0, le=86400, description="0: close on release; N: N quiet seconds"
    )
    group_by: str = Field("0020,000D", alias="group-by")

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: check_ae_title(v)))

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("name must be 1-63 characters [A-Za-z0-9_.-] starting alphanumeric")
        return v

    @field_validator("ignored_sop_classes")
    @classmethod
    def _uids(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for uid in v:
            if not _UID.match(uid) or len(uid) > 64:
                raise ValueError(f"ignored SOP class {uid!r} is not a UID")
        return v

    @field_validator("group_by")
    @classmethod
    def _tag(cls, v: str) -> str:
        return "{:04X},{:04X}".format(*divmod(parse_tag(v), 0x10000))

    @property
    def group_tag(self) -> int:
        return parse_tag(self.group_by)


class SourceAeTitle(_Model):
    """A DICOM peer allowed to send (Clara's ``SourceApplicationEntity``)."""

    name: str
    ae_title: str = Field(alias="ae-title")
    host_ip: str = Field(alias="host-ip")

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: check_ae_title(v)))
    _host = field_validator("host_ip")(classmethod(lambda cls, v: _check_host(v)))


class DestinationAeTitle(_Model):
    """A DICOM peer results are exported to (Clara's ``DestinationApplicationEntity``)."""

    name: str
    ae_title: str = Field(alias="ae-title")
    host_ip: str = Field(alias="host-ip")
    port: int = Field(ge=1, le=65535)

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: check_ae_title(v)))
    _host = field_validator("host_ip")(classmethod(lambda cls, v: _check_host(v)))


class PipelineMapping(_Model):
    """``pipeline-mappings[]``: jobs of ``pipeline_id`` start for studies sent to
    ``clara_ae_title``."""

    name: str
    clara_ae_title: str = Field(alias="clara-ae-title")
    pipeline_id: str = Field(alias="pipeline-id", min_length=1, max_length=128)

    _ae = field_validator("clara_ae_title")(classmethod(lambda cls, v: check_ae_title(v)))


class TlsConfig(_Model):
    """radflow extension ``dicom.scp.tls``: DICOM TLS (PS3.15 B.1) on the SCP port."""

    certificate: Path
    private_key: Path = Field(alias="private-key")
    ca_certificate: Path | None = Field(None, alias="ca-certificate")
    #: SHA-256 fingerprints (hex, colons allowed) or subject CNs of client certificates allowed to
    #: connect; non-empty means a client certificate is required
    allowed_client_certificates: tuple[str, ...] = Field((), alias="allowed-client-certificates")


def _check_host(value: str) -> str:
    value = value.strip()
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        if _HOST.match(value):
            return value
    raise ValueError("host-ip must be an IP address or a host name")


class AdapterConfig(_Model):
    """Everything the adapter serves. Immutable: a change builds a new one (see ConfigStore)."""

    port: int = Field(104, ge=1, le=65535)
    ae_titles: tuple[ClaraAeTitle, ...] = Field((), alias="ae-titles")
    sources: tuple[SourceAeTitle, ...] = ()
    destinations: tuple[DestinationAeTitle, ...] = ()
    pipeline_mappings: tuple[PipelineMapping, ...] = Field((), alias="pipeline-mappings")
    reject_unknown_sources: bool = Field(True, alias="reject-unknown-sources")
    max_associations: int = Field(25, ge=1, le=1000, alias="max-associations")
    verification_enabled: bool = Field(True, alias="verification-enabled")
    scu_ae_title: str = Field("ClaraSCU", alias="scu-ae-title")
    tls: TlsConfig | None = None

    @model_validator(mode="after")
    def _unique(self) -> AdapterConfig:
        for label, items, key in (
            ("ae-titles name", self.ae_titles, lambda a: a.name),
            ("ae-titles ae-title", self.ae_titles, lambda a: a.ae_title),
            ("sources name", self.sources, lambda s: s.name),
            ("sources (ae-title, host-ip)", self.sources, lambda s: (s.ae_title, s.host_ip)),
            ("destinations name", self.destinations, lambda d: d.name),
            ("pipeline-mappings name", self.pipeline_mappings, lambda m: m.name),
        ):
            seen: set[Any] = set()
            for item in items:
                k = key(item)
                if k in seen:
                    raise ValueError(f"duplicate {label}: {k!r}")
                seen.add(k)
        return self

    # -- queries -------------------------------------------------------------------------------

    def ae(self, ae_title: str) -> ClaraAeTitle | None:
        for ae in self.ae_titles:
            if ae.ae_title == ae_title.strip():
                return ae
        return None

    def pipelines_for(self, ae_title: str) -> list[str]:
        """Pipeline ids mapped to ``ae_title``, in configuration order, without repeats."""
        out: list[str] = []
        for m in self.pipeline_mappings:
            if m.clara_ae_title == ae_title.strip() and m.pipeline_id not in out:
                out.append(m.pipeline_id)
        return out

    def source_allowed(self, calling_ae: str, host: str) -> bool:
        """True if (calling AE, peer address) is a configured source."""
        calling_ae = calling_ae.strip()
        for s in self.sources:
            if s.ae_title == calling_ae and _host_matches(s.host_ip, host):
                return True
        return False

    def calling_ae_known(self, calling_ae: str) -> bool:
        return any(s.ae_title == calling_ae.strip() for s in self.sources)

    # -- the persisted document ---------------------------------------------------------------

    def effective_document(self) -> dict[str, Any]:
        """The JSON persisted at :data:`CONFIG_KEY` (Clara names; REST-mutable parts and
        context)."""
        return {
            "schema": "radflow.dicom-adapter-config/v1",
            "ae-titles": [a.model_dump(mode="json", by_alias=True) for a in self.ae_titles],
            "sources": [s.model_dump(mode="json", by_alias=True) for s in self.sources],
            "destinations": [d.model_dump(mode="json", by_alias=True) for d in self.destinations],
            "pipeline-mappings": [
                m.model_dump(mode="json", by_alias=True) for m in self.pipeline_mappings
            ],
            "scu-ae-title": self.scu_ae_title,
        }

    def with_document(self, doc: dict[str, Any]) -> AdapterConfig:
        """This config with its AE titles, sources, destinations and mappings taken from ``doc``."""
        try:
            return self.model_copy(update={}).model_validate(
                {
                    **self.model_dump(by_alias=True),
                    "ae-titles": doc.get("ae-titles", []),
                    "sources": doc.get("sources", []),
                    "destinations": doc.get("destinations", []),
                    "pipeline-mappings": doc.get("pipeline-mappings", []),
                }
            )
        except ValidationError as exc:
            raise ConfigError(f"{CONFIG_KEY}: {_problems(exc)}") from None


def _host_matches(allowed: str, peer: str) -> bool:
    if allowed == peer:
        return True
    try:
        a, p = ipaddress.ip_address(allowed), ipaddress.ip_address(peer)
    except ValueError:
        return allowed.lower() in ("localhost",) and peer in ("127.0.0.1", "::1")
    if isinstance(p, ipaddress.IPv6Address) and p.ipv4_mapped:
        p = p.ipv4_mapped
    return a == p


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
    )


# ---------------------------------------------------------------------------------------------
# Clara YAML
# ---------------------------------------------------------------------------------------------


def parse_yaml_text(text: str, *, origin: str = "<config>") -> AdapterConfig:
    """Parse the Clara DICOM Adapter YAML; a :class:`ConfigError` names the file and field."""
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: top level must be a mapping")
    _check_keys(raw, _TOP_KEYS, "", origin)
    dicom = _section(raw, "dicom", "", origin)
    scp = _section(dicom, "scp", "dicom.", origin)
    scu = _section(dicom, "scu", "dicom.", origin)
    _check_keys(scp, _SCP_KEYS, "dicom.scp.", origin)
    _check_keys(scu, _SCU_KEYS, "dicom.scu.", origin)
    mappings = list(raw.get("pipeline-mappings") or [])
    ae_titles = []
    for i, entry in enumerate(scp.get("ae-titles") or []):
        if not isinstance(entry, dict):
            raise ConfigError(f"{origin}: dicom.scp.ae-titles[{i}] must be a mapping")
        entry = dict(entry)
        where = f"dicom.scp.ae-titles[{i}]"
        settings_key = "processorSettings" if "processorSettings" in entry else "processor-settings"
        settings = entry.pop(settings_key, None) or {}
        entry.pop("processor-settings", None)
        if not isinstance(settings, dict):
            raise ConfigError(f"{origin}: {where}.{settings_key}: must be a mapping")
        settings = dict(settings)
        _check_keys(
            {k: v for k, v in settings.items() if not str(k).startswith("pipeline-")},
            _PROCESSOR_SETTINGS_KEYS,
            f"{where}.{settings_key}.",
            origin,
            also="pipeline-<name>",
        )
        settings.pop("priority", None)
        entry.pop("processor", None)
        if "timeout" in settings:
            entry.setdefault("timeout", settings.pop("timeout"))
        if "groupBy" in settings:
            entry.setdefault("group-by", settings.pop("groupBy"))
        entry.setdefault("name", entry.get("ae-title", f"ae-{i}"))
        for key, value in settings.items():  # Clara processor-settings "pipeline-<name>: <id>"
            if key.startswith("pipeline-"):
                mappings.append(
                    {
                        "name": f"{entry['name']}-{key[9:]}",
                        "clara-ae-title": entry.get("ae-title"),
                        "pipeline-id": value,
                    }
                )
        ae_titles.append(entry)
    sources = []
    for i, entry in enumerate(scp.get("sources") or []):
        if not isinstance(entry, dict):
            raise ConfigError(f"{origin}: dicom.scp.sources[{i}] must be a mapping")
        entry = dict(entry)
        entry.setdefault("name", str(entry.get("ae-title")))
        sources.append(entry)
    # Clara allows one AE title from several hosts: make names unique
    names: dict[str, int] = {}
    for entry in sources:
        n = str(entry["name"])
        names[n] = names.get(n, 0) + 1
        if names[n] > 1:
            entry["name"] = f"{n}-{names[n]}"
    for i, entry in enumerate(mappings):
        if isinstance(entry, dict):
            entry.setdefault("name", f"mapping-{i}")
    verification = _section(scp, "verification", "dicom.scp.", origin)
    _check_keys(verification, _VERIFICATION_KEYS, "dicom.scp.verification.", origin)
    data: dict[str, Any] = {
        "port": scp.get("port", 104),
        "ae-titles": ae_titles,
        "sources": sources,
        "destinations": scu.get("destinations") or [],
        "pipeline-mappings": mappings,
        "reject-unknown-sources": scp.get("reject-unknown-sources", True),
        "max-associations": scp.get("max-associations", 25),
        "verification-enabled": verification.get("enabled", True),
        "scu-ae-title": scu.get("ae-title", "ClaraSCU"),
    }
    if scp.get("tls"):
        data["tls"] = scp["tls"]
    try:
        return AdapterConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{origin}: {_yaml_problems(exc)}") from None


#: the keys each level of the Clara YAML may carry. Clara's own keys that radflow does not use
#: (``services``, ``storage``, ``log-dimse-datasets``, ``transfer-syntaxes``, ``priority``,
#: the scu's ``max-associations``) are accepted so that a Clara file loads; anything else is a
#: typo.
_TOP_KEYS = frozenset({"dicom", "pipeline-mappings", "radflow", "services", "storage"})
_DICOM_KEYS = frozenset({"scp", "scu"})
_SCP_KEYS = frozenset(
    {
        "port",
        "ae-titles",
        "sources",
        "max-associations",
        "verification",
        "log-dimse-datasets",
        "reject-unknown-sources",
        "tls",
    }
)
_SCU_KEYS = frozenset({"ae-title", "destinations", "max-associations", "log-dimse-datasets"})
_VERIFICATION_KEYS = frozenset({"enabled", "transfer-syntaxes"})
_PROCESSOR_SETTINGS_KEYS = frozenset({"timeout", "groupBy", "priority"})

#: where each :class:`AdapterConfig` field comes from in the Clara YAML
_YAML_PATH = {
    "port": "dicom.scp.port",
    "ae-titles": "dicom.scp.ae-titles",
    "sources": "dicom.scp.sources",
    "destinations": "dicom.scu.destinations",
    "pipeline-mappings": "pipeline-mappings",
    "reject-unknown-sources": "dicom.scp.reject-unknown-sources",
    "max-associations": "dicom.scp.max-associations",
    "verification-enabled": "dicom.scp.verification.enabled",
    "scu-ae-title": "dicom.scu.ae-title",
    "tls": "dicom.scp.tls",
}


def _check_keys(
    mapping: dict[str, Any], known: frozenset[str], prefix: str, origin: str, also: str = ""
) -> None:
    unknown = sorted(str(k) for k in mapping if k not in known)
    if unknown:
        allowed = ", ".join(sorted(known) + ([also] if also else []))
        raise ConfigError(f"{origin}: {prefix}{unknown[0]}: unknown key (known here: {allowed})")


def _section(parent: dict[str, Any], key: str, prefix: str, origin: str) -> dict[str, Any]:
    value = parent.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{origin}: {prefix}{key}: must be a mapping")
    if key == "dicom":
        _check_keys(value, _DICOM_KEYS, "dicom.", origin)
    return value


def _yaml_problems(exc: ValidationError) -> str:
    """Pydantic's errors with the key path of the YAML (``dicom.scp.ae-titles[0].ae-title``)."""
    problems = []
    for e in exc.errors():
        loc = list(e["loc"])
        path = _YAML_PATH.get(str(loc[0]), str(loc[0])) if loc else "<root>"
        for part in loc[1:]:
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        problems.append(f"{path}: {msg}")
    return "; ".join(problems)


def load_yaml(path: Path) -> AdapterConfig:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: {exc.strerror}") from None
    return parse_yaml_text(text, origin=str(path))


# ---------------------------------------------------------------------------------------------
# Clara REST bodies (camelCase)
# ---------------------------------------------------------------------------------------------


def _require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object")
    return body


def _validate(model: type[_Model], data: dict[str, Any], what: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(f"invalid {what}: {_problems(exc)}") from None


def clara_ae_from_rest(body: Any) -> tuple[ClaraAeTitle, list[PipelineMapping]]:
    """``POST /api/config/claraaetitle`` body -> AE title and its pipeline mappings."""
    body = _require_object(body)
    unknown = set(body) - {
        "name",
        "aeTitle",
        "overwriteSameInstance",
        "ignoredSopClasses",
        "processor",
        "processorSettings",
    }
    if unknown:
        raise InvalidInput(f"invalid Clara AE title: unknown field(s) {sorted(unknown)}")
    settings = body.get("processorSettings") or {}
    if not isinstance(settings, dict):
        raise InvalidInput("invalid Clara AE title: processorSettings must be an object")
    data: dict[str, Any] = {
        "name": body.get("name") or body.get("aeTitle"),
        "ae-title": body.get("aeTitle"),
        "overwrite-same-instance": body.get("overwriteSameInstance", False),
        "ignored-sop-classes": body.get("ignoredSopClasses") or [],
    }
    if "timeout" in settings:
        data["timeout"] = settings["timeout"]
    if "groupBy" in settings:
        data["group-by"] = settings["groupBy"]
    ae = _validate(ClaraAeTitle, data, "Clara AE title")
    mappings = []
    for key, value in settings.items():
        if key.startswith("pipeline-"):
            mappings.append(
                _validate(
                    PipelineMapping,
                    {
                        "name": f"{ae.name}-{key[9:]}",
                        "clara-ae-title": ae.ae_title,
                        "pipeline-id": value,
                    },
                    f"processorSettings.{key}",
                )
            )
    return ae, mappings


def clara_ae_to_rest(ae: ClaraAeTitle, config: AdapterConfig) -> dict[str, Any]:
    settings: dict[str, Any] = {"timeout": ae.timeout, "groupBy": ae.group_by}
    for m in config.pipeline_mappings:
        if m.clara_ae_title == ae.ae_title:
            short = m.name[len(ae.name) + 1 :] if m.name.startswith(ae.name + "-") else m.name
            settings[f"pipeline-{short}"] = m.pipeline_id
    return {
        "name": ae.name,
        "aeTitle": ae.ae_title,
        "overwriteSameInstance": ae.overwrite_same_instance,
        "ignoredSopClasses": list(ae.ignored_sop_classes),
        "processorSettings": settings,
    }


def source_from_rest(body: Any) -> SourceAeTitle:
    body = _require_object(body)
    unknown = set(body) - {"name", "aeTitle", "hostIp"}
    if unknown:
        raise InvalidInput(f"invalid source AE title: unknown field(s) {sorted(unknown)}")
    return _validate(
        SourceAeTitle,
        {
            "name": body.get("name") or body.get("aeTitle"),
            "ae-title": body.get("aeTitle"),
            "host-ip": body.get("hostIp"),
        },
        "source AE title",
    )


def source_to_rest(s: SourceAeTitle) -> dict[str, Any]:
    return {"name": s.name, "aeTitle": s.ae_title, "hostIp": s.host_ip}


def destination_from_rest(body: Any) -> DestinationAeTitle:
    body = _require_object(body)
    unknown = set(body) - {"name", "aeTitle", "hostIp", "port"}
    if unknown:
        raise InvalidInput(f"invalid destination AE title: unknown field(s) {sorted(unknown)}")
    port = body.get("port")
    if isinstance(port, bool) or not isinstance(port, int):
        raise InvalidInput("invalid destination AE title: port must be an integer 1-65535")
    return _validate(
        DestinationAeTitle,
        {
            "name": body.get("name"),
            "ae-title": body.get("aeTitle"),
            "host-ip": body.get("hostIp"),
            "port": port,
        },
        "destination AE title",
    )


def destination_to_rest(d: DestinationAeTitle) -> dict[str, Any]:
    return {"name": d.name, "aeTitle": d.ae_title, "hostIp": d.host_ip, "port": d.port}
