"""DICOM destinations from the adapter's effective configuration (``config/dicom-adapter.json``).

Clara's DICOM adapter configuration names its export peers ("destinations") with an AE title,
host and port. Both places Clara versions used are accepted, merged, top level first::

    {"dicom": {"scu": {"ae-title": "RADFLOW", "destinations": [...]}},
     "destinations": [
         {"name": "MYPACS", "ae-title": "ORTHANC", "host-ip": "127.0.0.1", "port": 4242}
     ]}

Names match exactly, then case-insensitively (DICOM people write AE names in capitals).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from radflow.sdk.errors import InvalidInput

CONFIG_KEY = "config/dicom-adapter.json"


@dataclass(frozen=True)
class Destination:
    name: str
    ae_title: str
    host: str
    port: int


def _entries(config: Mapping[str, Any]) -> list[Any]:
    entries: list[Any] = []
    top = config.get("destinations")
    if isinstance(top, list):
        entries += top
    scu = (config.get("dicom") or {}).get("scu") or {}
    if isinstance(scu, Mapping) and isinstance(scu.get("destinations"), list):
        entries += scu["destinations"]
    return entries


def parse_destinations(config: Mapping[str, Any]) -> dict[str, Destination]:
    """All well-formed destinations of ``config`` by name; a malformed entry is an error."""
    found: dict[str, Destination] = {}
    for i, entry in enumerate(_entries(config)):
        where = f"{CONFIG_KEY} destinations[{i}]"
        if not isinstance(entry, Mapping):
            raise InvalidInput(f"{where} is not an object")
        try:
            dest = Destination(
                name=str(entry["name"]),
                ae_title=str(entry["ae-title"]),
                host=str(entry["host-ip"]),
                port=int(entry["port"]),
            )
        except KeyError as exc:
            raise InvalidInput(
                f"{where} lacks field {exc.args[0]!r} (needs name, ae-title, host-ip, port)"
            ) from exc
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"{where} field 'port' is not an integer") from exc
        if not 0 < dest.port < 65536 or not 0 < len(dest.ae_title) <= 16:
            raise InvalidInput(
                f"{where} ({dest.name}): port must be 1-65535 and ae-title 1-16 characters"
            )
        found.setdefault(dest.name, dest)
    return found


def scu_ae_title(config: Mapping[str, Any]) -> str:
    """The adapter's configured calling AE title (``dicom.scu.ae-title``), or empty."""
    scu = (config.get("dicom") or {}).get("scu") or {}
    return str(scu.get("ae-title", "")) if isinstance(scu, Mapping) else ""


def resolve(names: Sequence[str], known: Mapping[str, Destination]) -> list[Destination]:
    """The destinations called ``names``; an unknown name is a permanent error listing the
    known ones."""
    folded = {k.casefold(): v for k, v in known.items()}
    chosen: list[Destination] = []
    for name in names:
        dest = known.get(name) or folded.get(name.casefold())
        if dest is None:
            have = ", ".join(sorted(known)) or "none"
            raise InvalidInput(
                f"DESTINATIONS names {name!r}, which {CONFIG_KEY} does not define "
                f"(defined: {have}); "
                "add it to the adapter configuration or fix the pipeline variable"
            )
        if dest not in chosen:
            chosen.append(dest)
    return chosen
