"""What scu-export needs from outside its logic: the adapter's effective configuration.

:func:`run` is the operator's registry entry: it reads the configuration here and hands it to
``logic.run``, so the logic stays pure of S3.

The DICOM adapter stores the configuration it runs with at ``config/dicom-adapter.json`` in the
object store, so the destinations a pipeline names are the ones the adapter knows (Clara kept
them in the adapter's config too). Read per stage, so an edited configuration applies to the
next export without restarting anything.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from radflow.functions.scu_export import logic
from radflow.functions.scu_export.destinations import CONFIG_KEY
from radflow.sdk.errors import InvalidInput
from radflow.sdk.settings import StoreSettings
from radflow.sdk.stage import StageContext
from radflow.sdk.storage import NotFound, ObjectStore


def load_adapter_config(store: ObjectStore | None = None) -> dict[str, Any]:
    """The adapter configuration document; missing or not JSON is a permanent error."""
    store = store or ObjectStore(StoreSettings())
    try:
        raw = store.get_bytes(CONFIG_KEY)
    except NotFound as exc:
        raise InvalidInput(
            f"object {CONFIG_KEY} not found: the DICOM adapter publishes its destinations there; "
            "start it or upload the file"
        ) from exc
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise InvalidInput(f"object {CONFIG_KEY} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidInput(f"object {CONFIG_KEY} must be a JSON object")
    return doc


def run(ctx: StageContext) -> Mapping[str, Any]:
    """The stage: the adapter's destinations, read per stage, then the pure logic."""
    return logic.run(ctx, destinations=load_adapter_config())
