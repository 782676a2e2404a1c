"""Knative Services the host runs through a registered launcher, gated by their declared probe."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import aiohttp

from radflow.engine.host import FunctionHost, ServiceLaunch, register_service_launcher

#: answers /ready 503 and / 500 for its first second (a server still loading its models), then 200
SERVER = """
import os, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer
up = time.monotonic() + 1.0
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        ready = time.monotonic() >= up
        code = 200 if ready else (503 if self.path == "/ready" else 500)
        body = (sys.argv[1] if ready else "not loaded yet").encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
HTTPServer((os.environ["HOST"], int(os.environ["PORT"])), H).serve_forever()
"""


def manifest(name: str, probe: dict[str, Any] | None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "server", "image": "vendor/model-server:1"}
    if probe:
        container["readinessProbe"] = probe
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name, "annotations": {"radflow.dev/embedded": "test-server"}},
        "spec": {"template": {"spec": {"containers": [container]}}},
    }


def test_launcher_runs_the_instance_and_the_declared_probe_must_answer_2xx(
    tmp_path: Path,
) -> None:
    launches: list[ServiceLaunch] = []

    def launch(ctx: ServiceLaunch) -> tuple[list[str], dict[str, str]]:
        launches.append(ctx)
        return [ctx.python, "-c", SERVER, ctx.spec.name], {**ctx.env, "HOST": ctx.host}

    register_service_launcher("test-server", launch)
    services = [
        manifest("gated", {"httpGet": {"path": "/ready"}}),
        manifest("ungated", None),  # no probe declared: any HTTP answer means ready
    ]

    async def main() -> dict[str, tuple[int, str]]:
        host = FunctionHost(services=services, workdir=tmp_path, state_dir=tmp_path / "state")
        await host.start()
        try:
            answers = {}
            async with aiohttp.ClientSession() as session:
                for name in ("gated", "ungated"):
                    async with session.get(host.url(name) + "/") as resp:
                        answers[name] = (resp.status, await resp.text())
            return answers
        finally:
            await host.stop()

    answers = asyncio.run(main())
    # held by the activator until /ready said 200: the request reached a loaded server
    assert answers["gated"] == (200, "gated")
    # without a probe the first HTTP answer (a 500 from /robots.txt) counts, as for functions
    assert answers["ungated"] == (500, "not loaded yet")
    assert [c.spec.name for c in launches] == ["gated", "ungated"]
    assert all(c.env["PORT"] == str(c.port) for c in launches)
    assert launches[0].python == sys.executable
