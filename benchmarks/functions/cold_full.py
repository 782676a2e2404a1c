"""Cold-start benchmark function importing the full operator stack at module level, as operators
do."""

import json

import botocore.auth  # noqa: F401  (radflow.sdk.storage signs with it)
import functions_framework
import highdicom  # noqa: F401
import numpy  # noqa: F401
import pydicom  # noqa: F401
import pynetdicom  # noqa: F401
import SimpleITK  # noqa: F401


@functions_framework.http
def handle(request):
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "bench",
        "ce-source": "/bench",
        "ce-type": "dev.radflow.bench.v1",
        "Content-Type": "application/json",
    }
    return json.dumps({"ok": True}), 200, headers
