"""REST changes as an overlay on the configuration file (pure; docs/adapter.md, "Precedence").

The rule: **the file is the base, REST changes are an overlay of entries by name.** The
overlay records, per list (``ae-titles``, ``sources``, ``destinations``, ``pipeline-mappings``)
and entry name, what REST made of the entry (``entry``: the new one, ``null`` when deleted) and
what the file said about it at that moment (``file``: its entry, ``null`` when the file had
none). The effective configuration is the file's entries with the overlay applied on top:

* an entry the file does not change since the REST change: the REST version (or deletion)
  applies;
* an entry the file *changed* since (its entry now differs from ``file``): the file's edit is
  newer and wins; the REST change is dropped and the start or reload says so (:func:`apply`
  returns the notes).

Every other setting (port, TLS, ``reject-unknown-sources``, ``max-associations``,
``verification``) is the file's alone: REST cannot change it.

.. code-block:: json

    {"schema": "radflow.dicom-adapter-rest/v1",
     "changes": {"ae-titles": {"LUNG": {"entry": {...}, "file": null},
                               "BRAINSEG": {"entry": null, "file": {...}}}}}
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from radflow.adapter.config import AdapterConfig
from radflow.sdk.errors import ConfigError

SCHEMA = "radflow.dicom-adapter-rest/v1"
#: key of the overlay in the object store
OVERLAY_KEY = "config/dicom-adapter.rest.json"
LISTS = ("ae-titles", "sources", "destinations", "pipeline-mappings")


def _entries(config: AdapterConfig, name: str) -> dict[str, dict[str, Any]]:
    doc = config.effective_document()
    return {str(e["name"]): e for e in doc[name]}


def empty() -> dict[str, Any]:
    return {"schema": SCHEMA, "changes": {name: {} for name in LISTS}}


def overlay_of(base: AdapterConfig, effective: AdapterConfig) -> dict[str, Any]:
    """The overlay that turns ``base`` (the file) into ``effective`` (after a REST change)."""
    out = empty()
    for name in LISTS:
        file, now = _entries(base, name), _entries(effective, name)
        changes = out["changes"][name]
        for key in [*file, *(k for k in now if k not in file)]:
            if file.get(key) != now.get(key):
                changes[key] = {"entry": now.get(key), "file": file.get(key)}
    return out


def changed_names(overlay: dict[str, Any]) -> list[str]:
    """``list/name`` of every entry the overlay changes (for log lines and status)."""
    return [f"{name}/{key}" for name in LISTS for key in overlay["changes"].get(name, {})]


def apply(
    base: AdapterConfig, overlay: dict[str, Any]
) -> tuple[AdapterConfig, dict[str, Any], list[str]]:
    """The effective configuration, the overlay still in force and notes on REST changes the
    file overrode since (one line each, naming the list and the entry)."""
    if overlay.get("schema") != SCHEMA or not isinstance(overlay.get("changes"), dict):
        raise ConfigError(f"{OVERLAY_KEY}: not a {SCHEMA} document; fix or delete it")
    kept = empty()
    notes: list[str] = []
    lists: dict[str, list[dict[str, Any]]] = {}
    for name in LISTS:
        file = _entries(base, name)
        result = dict(file)
        for key, change in (overlay["changes"].get(name) or {}).items():
            if file.get(key) != change.get("file"):
                notes.append(
                    f"{name} {key!r}: changed in the configuration file after a REST change; "
                    "the file's version applies and the REST change is dropped"
                )
                continue
            kept["changes"][name][key] = change
            if change.get("entry") is None:
                result.pop(key, None)
            else:
                result[key] = change["entry"]
        lists[name] = list(result.values())
    try:
        effective = AdapterConfig.model_validate({**base.model_dump(by_alias=True), **lists})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(
            f"the configuration file plus the REST changes in {OVERLAY_KEY} is invalid: "
            f"{problems}; undo the REST change (radflow dicom delete ...) or delete {OVERLAY_KEY}"
        ) from None
    return effective, kept, notes
