"""Cold-start benchmark function: stdlib only, answers a binary CloudEvent (like an operator
reply)."""

import json

import functions_framework


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
