"""The one functions-framework entry point of every radflow operator.

Every image and every compiled Service runs this file (``FUNCTION_SOURCE``, target ``handle``);
``RADFLOW_OPERATOR`` names the registry entry (``radflow.functions.registry``) it serves. A
``logic`` entry is served by the stage runtime (``radflow.sdk.runtime.serve``: CloudEvent in,
staging, claims, upload, CloudEvent reply); a ``handler`` entry (the job tracker) answers the
request itself. The operator's module is imported when the file loads, so a cold start pays for
its imports once, before the first request, as with a hand-written ``main.py``; an unknown or
missing ``RADFLOW_OPERATOR`` stops the instance at start-up with the reason in its log.
"""

from __future__ import annotations

import os
from typing import Any

import functions_framework

from radflow.functions.registry import OPERATOR_ENV, OperatorEntry, get


def _operator() -> OperatorEntry:
    name = os.environ.get(OPERATOR_ENV, "")
    if not name:
        raise LookupError(f"{OPERATOR_ENV} is not set: it names the operator this instance serves")
    return get(name)


OPERATOR = _operator()
TARGET = OPERATOR.load()

if OPERATOR.logic:
    from radflow.sdk.runtime import serve

    @functions_framework.http
    def handle(request: Any) -> Any:
        return serve(request, TARGET)

else:

    @functions_framework.http
    def handle(request: Any) -> Any:
        return TARGET(request.method, request.path, dict(request.headers), request.get_data())
